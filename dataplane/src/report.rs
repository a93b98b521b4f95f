//! What the agent reports about itself, in Felix's `FromDataplane` messages: when its dataplane
//! is in sync, each endpoint's status (`up` when enforced, `down` while its interface is missing)
//! and a heartbeat. They go to a driving Felix (fd 4) or to the control plane.

use palisade_control::felix::workload_id;
use palisade_control::proto::felix::{
    from_dataplane::Payload, DataplaneInSync, EndpointStatus, FromDataplane, HostEndpointId, HostEndpointStatusRemove, HostEndpointStatusUpdate,
    ProcessStatusUpdate, WorkloadEndpointStatusRemove, WorkloadEndpointStatusUpdate,
};
use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

/// How often the process reports that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Sends reports to a sink (Felix's fd 4, or the control plane).
pub struct Reporter {
    sink: Box<dyn FnMut(FromDataplane) -> io::Result<()> + Send>,
    sequence: u64,
    started: Instant,
    last_heartbeat: Option<Instant>,
    sent_in_sync: bool,
    /// Reported status by endpoint name, and whether it is a host endpoint.
    reported: BTreeMap<String, (&'static str, bool)>,
}

impl Reporter {
    /// A reporter sending to `sink`.
    pub fn new(sink: Box<dyn FnMut(FromDataplane) -> io::Result<()> + Send>) -> Reporter {
        Reporter { sink, sequence: 0, started: Instant::now(), last_heartbeat: None, sent_in_sync: false, reported: BTreeMap::new() }
    }

    fn send(&mut self, payload: Payload) -> io::Result<()> {
        self.sequence += 1;
        (self.sink)(FromDataplane { sequence_number: self.sequence, payload: Some(payload) })
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
        let gone: Vec<(String, bool)> =
            self.reported.iter().filter(|(n, _)| !now.contains_key(*n)).map(|(n, &(_, host))| (n.clone(), host)).collect();
        for (name, host) in gone {
            let payload = if host {
                Payload::HostEndpointStatusRemove(HostEndpointStatusRemove { id: Some(HostEndpointId { endpoint_id: name.clone() }) })
            } else {
                Payload::WorkloadEndpointStatusRemove(WorkloadEndpointStatusRemove { id: Some(workload_id(&name)) })
            };
            self.send(payload)?;
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
