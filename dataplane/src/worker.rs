//! A packet worker: owns the AF_XDP sockets of one RX queue on every managed interface,
//! receives in batches, decides with the [`Datapath`], transmits on the output interface's
//! socket of the same queue, and keeps fill and completion rings moving. The agent adds and
//! removes sockets through a channel; the policy arrives through an atomic pointer swap.

use crate::afxdp::QueueSocket;
use crate::datapath::{Datapath, Snapshot, Verdict};
use crate::stats::{Drop, WorkerStats};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 64;
const POLL_MS: i32 = 20;

/// A message from the agent to a worker.
pub enum Command {
    /// Start serving this socket (the queue's socket of interface `ifindex`).
    Add(u32, Box<QueueSocket>),
    /// Stop serving interface `ifindex` and close its socket.
    Remove(u32),
}

/// How a worker waits for packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `poll()` the sockets when idle (the right choice when the worker shares a core with
    /// the kernel's NAPI processing, as on veth).
    Wakeup,
    /// Spin on the rings: lowest latency, burns the core.
    BusyPoll,
}

/// One worker's state.
pub struct Worker {
    sockets: Vec<(u32, QueueSocket)>,
    commands: Receiver<Command>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    datapath: Arc<Datapath>,
    stats: Arc<WorkerStats>,
    wait: Wait,
    scratch: Vec<u8>,
    pollfds: Vec<libc::pollfd>,
    epoch: Instant,
}

impl Worker {
    /// A worker with no sockets yet.
    pub fn new(
        commands: Receiver<Command>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        datapath: Arc<Datapath>,
        stats: Arc<WorkerStats>,
        wait: Wait,
        epoch: Instant,
    ) -> Worker {
        Worker { sockets: Vec::new(), commands, snapshot, datapath, stats, wait, scratch: vec![0; 4096], pollfds: Vec::new(), epoch }
    }

    /// Runs until the command channel is closed.
    pub fn run(mut self) {
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Add(ifindex, s)) => {
                        self.sockets.retain(|(i, _)| *i != ifindex);
                        self.sockets.push((ifindex, *s));
                    }
                    Ok(Command::Remove(ifindex)) => self.sockets.retain(|(i, _)| *i != ifindex),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if !self.step() {
                match self.wait {
                    Wait::Wakeup => self.poll(),
                    Wait::BusyPoll => std::hint::spin_loop(),
                }
            }
        }
    }

    /// One pass over every socket; whether any frame was received.
    fn step(&mut self) -> bool {
        let snap = self.snapshot.load();
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut busy = false;
        for i in 0..self.sockets.len() {
            let ifindex = self.sockets[i].0;
            let n = self.sockets[i].1.receive(BATCH);
            if n == 0 {
                continue;
            }
            busy = true;
            self.stats.count_rx(n);
            for j in 0..n {
                let len = {
                    let p = self.sockets[i].1.packet(j);
                    let len = p.len().min(self.scratch.len());
                    self.scratch[..len].copy_from_slice(&p[..len]);
                    len
                };
                match self.datapath.decide(&snap, ifindex, &mut self.scratch[..len], now, &self.stats) {
                    Verdict::Forward(out) => {
                        let sent = self.sockets.iter_mut().find(|(i, _)| *i == out).is_some_and(|(_, s)| s.send(&self.scratch[..len]));
                        if sent {
                            self.stats.count_tx();
                        } else {
                            self.stats.count_drop(Drop::TxFull);
                        }
                    }
                    Verdict::ToHost(h) => {
                        if snap.host.interfaces[h].tap.deliver(&self.scratch[..len]).is_ok() {
                            self.stats.count_tx();
                        } else {
                            self.stats.count_drop(Drop::HostDelivery);
                        }
                    }
                    Verdict::PodToHost => {
                        if snap.host.workload_tap.as_ref().is_some_and(|t| t.deliver(&self.scratch[..len]).is_ok()) {
                            self.stats.count_tx();
                        } else {
                            self.stats.count_drop(Drop::HostDelivery);
                        }
                    }
                    Verdict::Drop(why) => self.stats.count_drop(why),
                }
            }
            self.sockets[i].1.recycle();
        }
        for (_, s) in &mut self.sockets {
            if s.tx_pending() {
                s.flush();
            }
        }
        busy
    }

    fn poll(&mut self) {
        let fds = &mut self.pollfds;
        fds.clear();
        fds.extend(self.sockets.iter().map(|(_, s)| libc::pollfd { fd: s.fd(), events: libc::POLLIN, revents: 0 }));
        if fds.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
            return;
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
    }
}
