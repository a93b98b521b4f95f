//! Network namespaces: running code inside one, running `ip` and other commands, sysctls, and a guard.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::panic;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;

use crate::LabError;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// Runs `f` on a new thread that has joined the named network namespace, and returns its result.
///
/// Sockets `f` opens belong to that namespace for their whole life, after the thread ends too: this is how
/// probes and listeners work there without subprocesses. A panic in `f` is resumed on the caller.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let path = format!("{NETNS_DIR}/{ns}");
    let thread = thread::Builder::new().spawn(move || {
        let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        // SAFETY: `file` is an open descriptor; joining a network namespace affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("setns {path}: {e}")));
        }
        Ok(f())
    })?;
    thread.join().unwrap_or_else(|panic| panic::resume_unwind(panic))
}

/// Runs `program` with `args` and returns its standard output; failures carry the command line and stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = [program].iter().chain(args).copied().collect::<Vec<_>>().join(" ");
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Io { context: format!("starting `{command}`"), source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let message = format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        Err(LabError::Command { command, message })
    }
}

/// Runs `ip` (iproute2) with `args`.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    run("ip", args).map(drop)
}

/// Runs `ip -n <ns>` with `args`, inside the named namespace.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), LabError> {
    run("ip", &[&["-n", ns], args].concat()).map(drop)
}

/// Runs a command inside the named namespace (`ip netns exec`) and returns its standard output.
pub fn exec_in(ns: &str, command: &[&str]) -> Result<String, LabError> {
    run("ip", &[&["netns", "exec", ns], command].concat())
}

/// Sets a sysctl (`net.ipv4.conf.all.forwarding`; dots separate path components) inside the named namespace.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    sysctls_in(ns, &[(key, value)])
}

/// Sets several sysctls inside the named namespace, in order, from one thread (/proc/sys/net shows the
/// namespace of the thread that opens it).
pub(crate) fn sysctls_in(ns: &str, settings: &[(&str, &str)]) -> Result<(), LabError> {
    let settings: Vec<(String, String)> = settings.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
    let context = format!("sysctl in {ns}");
    run_in(ns, move || {
        settings.iter().try_for_each(|(key, value)| {
            fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value).map_err(|e| io::Error::new(e.kind(), format!("{key}={value}: {e}")))
        })
    })
    .and_then(|written| written)
    .map_err(|source| LabError::Io { context, source })
}

/// A named network namespace (`ip netns add`), deleted when dropped with everything inside it.
#[derive(Debug)]
pub struct Netns {
    /// Empty once deleted.
    name: String,
}

impl Netns {
    /// Creates the named namespace; fails if it exists (a namespace this guard did not create is never deleted).
    pub fn create(name: &str) -> Result<Netns, LabError> {
        // `ip netns add` turns /var/run/netns into a shared mount on first use: keep parallel callers from racing.
        static ADD: Mutex<()> = Mutex::new(());
        let _one_at_a_time = ADD.lock().unwrap_or_else(PoisonError::into_inner);
        ip(&["netns", "add", name])?;
        Ok(Netns { name: name.to_owned() })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace now, reporting failure (dropping deletes too, but can only print errors).
    ///
    /// Interfaces inside go with it. Sockets opened inside keep the namespace alive, unnamed, until closed.
    pub fn delete(mut self) -> Result<(), LabError> {
        ip(&["netns", "del", &std::mem::take(&mut self.name)])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            if let Err(e) = ip(&["netns", "del", &self.name]) {
                eprintln!("palisade-lab: {e}");
            }
        }
    }
}

/// The names of the existing named namespaces.
pub(crate) fn list() -> Result<Vec<String>, LabError> {
    match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()
            .map_err(|source| LabError::Io { context: format!("reading {NETNS_DIR}"), source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LabError::Io { context: format!("reading {NETNS_DIR}"), source }),
    }
}
