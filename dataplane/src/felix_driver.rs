//! The agent as Calico Felix's external dataplane driver: Felix writes `ToDataplane` messages to
//! file descriptor 3 and reads `FromDataplane` reports (see [`crate::report`]) from file
//! descriptor 4, each framed as a little-endian u64 length and the protobuf bytes. The messages
//! feed the same view as a control plane's stream.

use palisade_control::client::Event;
use palisade_control::felix::{read_frame, write_frame};
use palisade_control::proto::felix::{FromDataplane, ToDataplane};
use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Felix writes its messages here.
const FROM_FELIX_FD: i32 = 3;
/// Felix reads reports from here.
const TO_FELIX_FD: i32 = 4;

/// Reads Felix's messages from fd 3 in a thread of its own. The stream begins with
/// [`Event::Restarted`]; when Felix closes the pipe, `stop` is set (Felix has gone, and the
/// dataplane goes with it, as Felix expects of its driver).
pub fn read_messages(stop: Arc<AtomicBool>) -> io::Result<mpsc::Receiver<Event>> {
    let file = open_fd(FROM_FELIX_FD)?;
    let (tx, rx) = mpsc::channel();
    tx.send(Event::Restarted).expect("the receiver is here");
    std::thread::Builder::new().name("palisade-felix-in".into()).spawn(move || {
        let mut input = BufReader::with_capacity(1 << 20, file);
        loop {
            match read_frame::<ToDataplane>(&mut input) {
                Ok(Some(msg)) => {
                    if tx.send(Event::Message(Box::new(msg))).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    eprintln!("palisade-dataplane: Felix closed fd {FROM_FELIX_FD}; stopping");
                    break;
                }
                Err(e) => {
                    eprintln!("palisade-dataplane: reading fd {FROM_FELIX_FD}: {e}; stopping");
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    })?;
    Ok(rx)
}

fn open_fd(fd: i32) -> io::Result<File> {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::other(format!("file descriptor {fd} is not open (run by Felix as its dataplane driver)")));
    }
    // SAFETY: the descriptor is open, and only this File owns it from here on.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The sink of reports to Felix: framed messages on fd 4.
pub fn reports_to_felix() -> io::Result<Box<dyn FnMut(FromDataplane) -> io::Result<()> + Send>> {
    let mut out = open_fd(TO_FELIX_FD)?;
    Ok(Box::new(move |m: FromDataplane| write_frame(&mut out, &m)))
}
