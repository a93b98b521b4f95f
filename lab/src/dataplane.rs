//! Runs `palisade-dataplane` in a lab's node namespace (or a host lab's host namespace), watching a
//! state directory that the caller changes, and waits until a given state revision is enforced.

use crate::{HostLab, Lab, EXT_MAC, SIDE_A, SIDE_B};
use serde_json::Value;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running dataplane; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Dataplane {
    child: Child,
    stats: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Dataplane {
    /// Starts `binary` in the lab's node namespace on every pod interface and the uplink, with
    /// `queues` workers, reading the cluster state from `state`; returns once the first state
    /// is enforced on every pod of the lab.
    pub fn start(binary: &Path, lab: &Lab, state: &Path, queues: u32) -> Result<Dataplane, String> {
        Dataplane::start_with(binary, lab, state, queues, &[])
    }

    /// [`Dataplane::start`] with `extra` arguments.
    pub fn start_with(binary: &Path, lab: &Lab, state: &Path, queues: u32, extra: &[&str]) -> Result<Dataplane, String> {
        let mut args = node_args(lab, queues);
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(["--state".to_string(), state.display().to_string()]);
        Dataplane::spawn(binary, lab.node_netns(), &args)
    }

    /// Starts `binary` in the lab's node namespace like [`Dataplane::start`], following the
    /// control plane at `url` (as node `node1`) instead of a state directory.
    pub fn start_control(binary: &Path, lab: &Lab, url: &str, queues: u32) -> Result<Dataplane, String> {
        let mut args = node_args(lab, queues);
        args.extend(["--control", url, "--node", "node1"].map(String::from));
        Dataplane::spawn(binary, lab.node_netns(), &args)
    }

    /// Starts `binary` in the host lab's host namespace protecting both its interfaces, reading
    /// HostEndpoints and policies from `state`, with `extra` arguments (failsafes); returns once
    /// the first state is enforced.
    pub fn start_host(binary: &Path, lab: &HostLab, state: &Path, extra: &[&str]) -> Result<Dataplane, String> {
        let mut args: Vec<String> = ["--interface", SIDE_A.interface, "--interface", SIDE_B.interface].map(String::from).to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(["--state".to_string(), state.display().to_string()]);
        Dataplane::spawn(binary, lab.host_netns(), &args)
    }

    /// Starts `binary` in the lab's node namespace as Calico Felix's dataplane driver (node
    /// `node1`): returns at once with the write end of its file descriptor 3 (where Felix sends
    /// its messages) and the read end of its file descriptor 4 (its reports). The caller sends a
    /// snapshot and `InSync`, then waits for revision 1 with [`Dataplane::wait_for`].
    pub fn start_felix_driver(binary: &Path, lab: &Lab, queues: u32) -> Result<(Dataplane, std::io::PipeWriter, std::io::PipeReader), String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let e = |e: std::io::Error| format!("pipes for the Felix driver: {e}");
        let (to_driver, from_felix) = {
            let (r, w) = std::io::pipe().map_err(e)?;
            (w, r)
        };
        let (reports, report_writer) = std::io::pipe().map_err(e)?;
        let (r, w) = (from_felix.as_raw_fd(), report_writer.as_raw_fd());
        let mut args = node_args(lab, queues);
        args.extend(["--felix-driver", "--node", "node1"].map(String::from));
        let mut cmd = Command::new("ip");
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe
        // ends are first copied above 10 so that placing them on 3 and 4 cannot clobber each other.
        unsafe {
            cmd.pre_exec(move || {
                let (r2, w2) = (libc::fcntl(r, libc::F_DUPFD, 10), libc::fcntl(w, libc::F_DUPFD, 10));
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let dp = Dataplane::spawn_only(cmd, binary, lab.node_netns(), &args)?;
        drop((from_felix, report_writer));
        Ok((dp, to_driver, reports))
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn spawn(binary: &Path, ns: &str, args: &[String]) -> Result<Dataplane, String> {
        let mut dp = Dataplane::spawn_only(Command::new("ip"), binary, ns, args)?;
        dp.wait_for(1, Duration::from_secs(20))?;
        Ok(dp)
    }

    /// Runs `binary` with `args` in namespace `ns` through `cmd` (an `ip` command), logging its
    /// standard error.
    fn spawn_only(mut cmd: Command, binary: &Path, ns: &str, args: &[String]) -> Result<Dataplane, String> {
        let stats = PathBuf::from(format!("/run/palisade/{ns}.sock"));
        let mut child = cmd
            .args(["netns", "exec", ns])
            .arg(binary)
            .args(args)
            .arg("--stats-socket")
            .arg(&stats)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    log.lock().expect("log lock").push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(Dataplane { child, stats, log })
    }

    /// The counters and status the dataplane serves (see `palisadectl stats`).
    pub fn stats(&self) -> Result<Value, String> {
        read_stats(&self.stats)
    }

    /// Waits until revision `revision` (or a later one) is enforced with no missing interface.
    pub fn wait_for(&mut self, revision: u64, timeout: Duration) -> Result<(), String> {
        self.wait_until(&format!("enforce revision {revision}"), timeout, |st| st["revision"].as_u64().unwrap_or(0) >= revision)
    }

    /// Waits until the agent is in sync with its control plane at datastore revision `revision`
    /// or later (and has every interface it needs).
    pub fn wait_for_applied(&mut self, revision: i64, timeout: Duration) -> Result<(), String> {
        self.wait_until(&format!("apply datastore revision {revision}"), timeout, |st| {
            st["applied_revision"].as_i64().unwrap_or(0) >= revision && st["in_sync"].as_bool() == Some(true)
        })
    }

    /// Waits until the served status satisfies `done` and no interface is missing.
    fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("palisade-dataplane exited ({status}):\n{}", self.log()));
            }
            if let Ok(v) = self.stats() {
                let st = &v["status"];
                if done(st) && st["missing_interfaces"].as_array().is_some_and(|m| m.is_empty()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("palisade-dataplane did not {what} within {timeout:?}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The revision it enforces now (the agent's own count of states applied).
    pub fn revision(&self) -> u64 {
        self.stats().ok().and_then(|v| v["status"]["revision"].as_u64()).unwrap_or(0)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node agent's arguments for a lab: workers, uplink and its gateway.
fn node_args(lab: &Lab, queues: u32) -> Vec<String> {
    let gateway = EXT_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ["--queues", &queues.to_string(), "--uplink", lab.uplink(), "--gateway-mac", &gateway].map(String::from).to_vec()
}

/// Reads the JSON a dataplane serves on its stats socket.
pub fn read_stats(socket: &Path) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| format!("reading {}: {e}", socket.display()))?;
    serde_json::from_str(&buf).map_err(|e| format!("stats from {}: {e}", socket.display()))
}
