//! The agent as Calico Felix's external dataplane driver: Felix writes `ToDataplane` messages to
//! file descriptor 3 and reads `FromDataplane` reports from file descriptor 4, each framed as a
//! little-endian u64 length and the protobuf bytes. The messages feed the same view as a
//! control plane's stream; the reports say when the dataplane is in sync, which endpoints are up,
//! and that the process is alive.

use palisade_control::client::Event;
use palisade_control::felix::{read_frame, workload_id, write_frame};
use palisade_control::proto::felix::{
    from_dataplane::Payload, DataplaneInSync, EndpointStatus, FromDataplane, HostEndpointId, HostEndpointStatusRemove, HostEndpointStatusUpdate,
    ProcessStatusUpdate, ToDataplane, WorkloadEndpointStatusRemove, WorkloadEndpointStatusUpdate,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Felix writes its messages here.
const FROM_FELIX_FD: i32 = 3;
/// Felix reads reports from here.
const TO_FELIX_FD: i32 = 4;
/// How often the process reports that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);

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
                    if tx.send(Event::Message(msg)).is_err() {
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

/// Writes reports to Felix on fd 4.
pub struct Reporter {
    out: File,
    sequence: u64,
    started: Instant,
    last_heartbeat: Option<Instant>,
    sent_in_sync: bool,
    /// Reported status by endpoint name, and whether it is a host endpoint.
    reported: BTreeMap<String, (&'static str, bool)>,
}

impl Reporter {
    /// Opens fd 4.
    pub fn open() -> io::Result<Reporter> {
        Ok(Reporter {
            out: open_fd(TO_FELIX_FD)?,
            sequence: 0,
            started: Instant::now(),
            last_heartbeat: None,
            sent_in_sync: false,
            reported: BTreeMap::new(),
        })
    }

    fn send(&mut self, payload: Payload) -> io::Result<()> {
        self.sequence += 1;
        write_frame(&mut self.out, &FromDataplane { sequence_number: self.sequence, payload: Some(payload) })
    }

    /// After a view is enforced: `DataplaneInSync` the first time, then the status of every
    /// endpoint that changed (`up` when enforced, `down` when its interface is missing), and
    /// removals for endpoints gone from the view.
    pub fn enforced(&mut self, up: &[String], down: &[String], hosts: &[String]) -> io::Result<()> {
        if !self.sent_in_sync {
            self.send(Payload::DataplaneInSync(DataplaneInSync {}))?;
            self.sent_in_sync = true;
        }
        let mut now: BTreeMap<String, (&'static str, bool)> = BTreeMap::new();
        now.extend(up.iter().map(|n| (n.clone(), ("up", false))));
        now.extend(down.iter().map(|n| (n.clone(), ("down", false))));
        now.extend(hosts.iter().map(|n| (n.clone(), ("up", true))));
        for (name, &(status, host)) in &now {
            if self.reported.get(name) == Some(&(status, host)) {
                continue;
            }
            let status = Some(EndpointStatus { status: status.into() });
            self.send(if host {
                Payload::HostEndpointStatusUpdate(HostEndpointStatusUpdate { id: Some(HostEndpointId { endpoint_id: name.clone() }), status })
            } else {
                Payload::WorkloadEndpointStatusUpdate(WorkloadEndpointStatusUpdate { id: Some(workload_id(name)), status })
            })?;
        }
        for (name, &(_, host)) in self.reported.iter().filter(|(n, _)| !now.contains_key(*n)) {
            let payload = if host {
                Payload::HostEndpointStatusRemove(HostEndpointStatusRemove { id: Some(HostEndpointId { endpoint_id: name.clone() }) })
            } else {
                Payload::WorkloadEndpointStatusRemove(WorkloadEndpointStatusRemove { id: Some(workload_id(name)) })
            };
            self.sequence += 1;
            write_frame(&mut self.out, &FromDataplane { sequence_number: self.sequence, payload: Some(payload) })?;
        }
        self.reported = now;
        Ok(())
    }

    /// Reports that the process is alive, at most every ten seconds.
    pub fn heartbeat(&mut self) -> io::Result<()> {
        if self.last_heartbeat.is_some_and(|t| t.elapsed() < HEARTBEAT) {
            return Ok(());
        }
        self.last_heartbeat = Some(Instant::now());
        let update = ProcessStatusUpdate { iso_timestamp: chrono::Utc::now().to_rfc3339(), uptime: self.started.elapsed().as_secs_f64() };
        self.send(Payload::ProcessStatusUpdate(update))
    }
}
