//! What the packet benchmarks share: pinned worker threads in a namespace ([`Looper`]), the AF_XDP
//! UDP generator, the frame it sends, and CPU accounting.

use palisade_dataplane::afxdp::QueueSocket;
use palisade_lab::run_in;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The generator's CPU (and that of the XDP receive of its veth).
pub(crate) const GENERATOR_CPU: usize = 0;
/// The CPU of the path under test (forwarding, or local delivery).
pub(crate) const FORWARDER_CPU: usize = 1;
/// A 60-byte frame (64 on the wire with the FCS): Ethernet, IPv4, UDP, 18 bytes of payload.
pub(crate) const FRAME_LEN: usize = 60;

/// A UDP frame template from `src` to `dst` (ports zero, no UDP checksum).
pub(crate) fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((FRAME_LEN - 14) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = palisade_policy::model::proto::UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(((sum & 0xffff) + (sum >> 16)) as u16)).to_be_bytes());
    // UDP: ports filled per frame, length, checksum 0 (none, allowed over IPv4).
    f[38..40].copy_from_slice(&((FRAME_LEN - 34) as u16).to_be_bytes());
    f
}

/// One measured window: what the generator offered, what the receiving side counted, and the busy
/// time of [`FORWARDER_CPU`].
pub(crate) struct Measured {
    /// Frames the generator handed to its socket, per second.
    pub offered_pps: f64,
    /// Frames the receiving side counted, per second.
    pub counted_pps: f64,
    /// Busy time of the forwarding CPU per counted frame, in nanoseconds.
    pub cpu_ns_per_packet: f64,
    /// Share of the forwarding CPU that was busy.
    pub cpu_busy: f64,
}

/// Runs the generator from `eth0` of `ns` with `frame` and `ports`: `warmup`, then a window of
/// `window` between two readings of `count` (a cumulative counter of received frames).
pub(crate) fn measure_window(
    ns: &str,
    ports: impl Fn(u64) -> (u16, u16) + Send + 'static,
    frame: [u8; FRAME_LEN],
    warmup: Duration,
    window: Duration,
    count: impl Fn() -> Result<u64, String>,
) -> Result<Measured, String> {
    let sent = Arc::new(AtomicU64::new(0));
    let generator = generator(ns, ports, frame, sent.clone())?;
    std::thread::sleep(warmup);
    // Reading the counter can take milliseconds (a subprocess on a busy CPU), so each reading is
    // bracketed: the sent count and the clock are taken at the middle of the read.
    let start = Instant::now();
    let reading = || -> Result<(f64, u64, f64), String> {
        let (sent_before, at_before) = (sent.load(Relaxed), start.elapsed().as_secs_f64());
        let got = count()?;
        let (sent_after, at_after) = (sent.load(Relaxed), start.elapsed().as_secs_f64());
        Ok(((sent_before + sent_after) as f64 / 2.0, got, (at_before + at_after) / 2.0))
    };
    let ((sent0, got0, at0), cpu0) = (reading()?, cpu_times(FORWARDER_CPU)?);
    std::thread::sleep(window);
    let ((sent1, got1, at1), cpu1) = (reading()?, cpu_times(FORWARDER_CPU)?);
    generator.stop()?;
    let secs = at1 - at0;
    let counted = got1.saturating_sub(got0) as f64;
    let busy = (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64;
    Ok(Measured {
        offered_pps: (sent1 - sent0) / secs,
        counted_pps: counted / secs,
        cpu_ns_per_packet: if counted > 0.0 { busy * secs * 1e9 / counted } else { f64::NAN },
        cpu_busy: busy,
    })
}

/// A thread in a network namespace, pinned to a CPU, that sets itself up and then runs `step` until stopped.
/// Stopping (or dropping) joins it; a failed setup is returned by [`Looper::start`].
pub(crate) struct Looper {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Looper {
    pub(crate) fn start<S>(
        name: &'static str,
        ns: &str,
        cpu: usize,
        setup: impl FnOnce() -> Result<S, String> + Send + 'static,
        mut step: impl FnMut(&mut S) + Send + 'static,
    ) -> Result<Looper, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, started) = mpsc::channel();
        let (ns, stopping) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            run_in(&ns, move || {
                let state = pin(cpu).and_then(|()| setup());
                let _ = ready.send(state.as_ref().map(drop).map_err(String::clone));
                let mut state = state?;
                while !stopping.load(Relaxed) {
                    step(&mut state);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?
        });
        match started.recv() {
            Ok(Ok(())) => Ok(Looper { name, stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(format!("{name}: {e}")),
            Err(_) => Err(format!("{name}: {:?}", thread.join())),
        }
    }

    pub(crate) fn stop(mut self) -> Result<(), String> {
        self.join()
    }

    fn join(&mut self) -> Result<(), String> {
        self.stop.store(true, Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(format!("{}: {e}", self.name)),
            Some(Err(_)) => Err(format!("{} panicked", self.name)),
            _ => Ok(()),
        }
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("palisade-bench: {e}");
        }
    }
}

/// Sends frames as fast as its socket takes them, from `eth0` of namespace `ns` (AF_XDP TX, copy mode), on
/// [`GENERATOR_CPU`]; counts what it queued in `sent`.
fn generator(
    ns: &str,
    ports: impl Fn(u64) -> (u16, u16) + Send + 'static,
    template: [u8; FRAME_LEN],
    sent: Arc<AtomicU64>,
) -> Result<Looper, String> {
    let mut frame = template;
    let mut i = 0u64;
    let setup = || QueueSocket::open("eth0", 0).map_err(|e| e.to_string());
    Looper::start("generator", ns, GENERATOR_CPU, setup, move |socket| {
        let mut queued = 0;
        while queued < 64 {
            let (sport, dport) = ports(i);
            frame[34..36].copy_from_slice(&sport.to_be_bytes());
            frame[36..38].copy_from_slice(&dport.to_be_bytes());
            if !socket.send(&frame) {
                break;
            }
            i += 1;
            queued += 1;
        }
        socket.flush();
        sent.fetch_add(queued, Relaxed);
    })
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// (busy, total) jiffies of `cpu` from /proc/stat.
fn cpu_times(cpu: usize) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let label = format!("cpu{cpu}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(label.as_str())).ok_or_else(|| format!("/proc/stat has no {label}"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}
