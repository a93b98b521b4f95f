//! Long-lived TCP connections: an echo server in a namespace and a client that checks its echoes, for
//! tests of what happens to established connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::run_in;

/// A TCP echo server on a port of a namespace (all addresses, IPv4 and IPv6), a thread per connection;
/// stopped when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts serving `port` in `ns`.
    pub fn start(ns: &str, port: u16) -> std::io::Result<EchoServer> {
        let listener = run_in(ns, move || TcpListener::bind(("::", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: one valid pollfd; waking at once on a connection keeps accept latency out of timings.
                unsafe { libc::poll(&mut fd, 1, 50) };
                while let Ok((s, _)) = listener.accept() {
                    let flag = flag.clone();
                    std::thread::spawn(move || serve(s, &flag));
                }
            }
        });
        Ok(EchoServer { stop, thread: Some(thread) })
    }
}

fn serve(mut s: TcpStream, stop: &AtomicBool) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `dst` from namespace `ns`.
pub fn connect(ns: &str, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    run_in(ns, move || TcpStream::connect_timeout(&dst, timeout))?
}

/// Sends `msg` and whether the same bytes come back within 2 s.
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}
