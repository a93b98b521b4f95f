//! A real etcd (Debian's `etcd-server`) on loopback for tests, in the caller's network namespace
//! or a lab's: free ports, a temporary data directory, started and stopped (or restarted on the
//! same data) on demand; killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) single-member etcd.
pub struct Etcd {
    /// The network namespace it runs in (`None`: the caller's).
    netns: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd on two free loopback ports and waits until it is healthy.
    pub fn start() -> Result<Etcd, String> {
        Etcd::start_in(None)
    }

    /// [`Etcd::start`] inside the network namespace `netns` (on its loopback).
    pub fn start_in(netns: Option<&str>) -> Result<Etcd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = || free_port().map_err(|e| e.to_string());
        let mut etcd = Etcd { netns: netns.map(str::to_string), child: None, dir, client_port: port()?, peer_port: port()? };
        etcd.restart()?;
        Ok(etcd)
    }

    /// The client URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Stops it (SIGKILL: as abrupt as a crash); the data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts it on the same ports and data, and waits until it is healthy.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = cmd
            .args(["--name", "palisade-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("palisade-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting etcd (Debian's etcd-server; run scripts/setup.sh): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("etcd did not become healthy within 20 s".into())
    }

    fn healthy(&self) -> bool {
        let port = self.client_port;
        let check = move || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut body = String::new();
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok() && s.read_to_string(&mut body).is_ok() && body.contains("\"health\":\"true\"")
        };
        match &self.netns {
            Some(ns) => crate::run_in(ns, check).unwrap_or(false),
            None => check(),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
