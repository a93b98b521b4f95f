//! Palisade's XDP redirector (`redirect.bpf.c`, compiled by `build.rs`): loads it, attaches it to
//! interfaces with a BPF link (so the kernel detaches it when the process exits, even after a
//! crash), registers AF_XDP sockets per RX queue, maintains the set of owned addresses, and reads
//! its per-CPU counters.

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder, ProgramMut};
use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, RawFd};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// XSKMAP slots per interface: room for this many RX queues each.
const SLOTS_PER_INTERFACE: u32 = 64;
const SOCKET_SLOTS: u32 = 16384;

/// What the redirector sends to userspace from an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every IPv4/IPv6 packet but neighbour discovery (workload interfaces).
    All = 1,
    /// Only packets to an owned address (uplinks, host interfaces); the rest goes to the kernel.
    Owned = 2,
}

/// How the kernel runs the program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP): veth and most physical NICs.
    Native,
    /// In the generic network stack (after an skb is built): slower, works everywhere.
    Generic,
    /// Offloaded to the NIC.
    Offloaded,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offloaded => "offloaded",
        })
    }
}

/// The program's counters, in the order of the C enum.
pub const COUNTERS: [&str; 8] =
    ["rx", "redirected", "pass_not_ip", "pass_neighbour", "pass_not_owned", "pass_unconfigured", "drop_no_socket", "drop_truncated"];

/// An error of the redirector, naming the interface where there is one.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(context: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error(format!("{context}: {e}"))
}

/// An interface the program is attached to.
struct Attached {
    _link: Link,
    slot_base: u32,
    queues: u32,
}

/// The loaded program and its attachments. Dropping it detaches everything.
pub struct Redirector {
    object: Object,
    attached: HashMap<u32, Attached>,
    free_bases: Vec<u32>,
}

/// The interface index of `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|e| err(format!("interface {name:?}"), e))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(err(format!("interface {name}"), std::io::Error::last_os_error())),
        i => Ok(i),
    }
}

impl Redirector {
    /// Loads the program and creates its maps.
    pub fn load() -> Result<Redirector, Error> {
        let open = ObjectBuilder::default().open_memory(OBJECT).map_err(|e| err("opening the XDP object", e))?;
        let object = open.load().map_err(|e| err("loading the XDP program (needs root and a BPF-enabled kernel)", e))?;
        Ok(Redirector {
            object,
            attached: HashMap::new(),
            free_bases: (0..SOCKET_SLOTS / SLOTS_PER_INTERFACE).rev().map(|i| i * SLOTS_PER_INTERFACE).collect(),
        })
    }

    fn map(&self, name: &str) -> libbpf_rs::Map<'_> {
        self.object.maps().find(|m| m.name() == name).unwrap_or_else(|| panic!("map {name} is in the embedded object"))
    }

    fn program(&self) -> ProgramMut<'_> {
        self.object.progs_mut().next().expect("the embedded object has one program")
    }

    /// Attaches the program to `interface` for `queues` RX queues, replacing any XDP program a
    /// previous run left attached, and reports how the kernel runs it. Until a socket is
    /// registered for a queue, that queue's redirected packets are dropped (fail closed).
    pub fn attach(&mut self, interface: &str, queues: u32, mode: Mode) -> Result<AttachMode, Error> {
        let ctx = format!("attaching XDP to {interface}");
        if queues == 0 || queues > SLOTS_PER_INTERFACE {
            return Err(err(ctx, format!("queues must be 1..={SLOTS_PER_INTERFACE}")));
        }
        let index = ifindex(interface)?;
        if self.attached.contains_key(&index) {
            return Err(err(ctx, "already attached"));
        }
        let slot_base = self.free_bases.pop().ok_or_else(|| err(&ctx, "too many interfaces"))?;
        let mut config = Vec::with_capacity(12);
        for v in [slot_base, queues, mode as u32] {
            config.extend_from_slice(&v.to_ne_bytes());
        }
        let link = self
            .map("interfaces")
            .update(&index.to_ne_bytes(), &config, MapFlags::ANY)
            .map_err(|e| err(&ctx, e))
            .and_then(|()| self.replace_stale(index, &ctx))
            .and_then(|()| self.program().attach_xdp(index as i32).map_err(|e| err(&ctx, e)));
        let link = match link {
            Ok(l) => l,
            Err(e) => {
                let _ = self.map("interfaces").delete(&index.to_ne_bytes());
                self.free_bases.push(slot_base);
                return Err(e);
            }
        };
        self.attached.insert(index, Attached { _link: link, slot_base, queues });
        self.attach_mode(index).map_err(|e| err(ctx, e))
    }

    /// Detaches an XDP program attached through netlink by an earlier run (a BPF link would
    /// have gone with its process). Programs held by another live link are left alone: the
    /// attach then fails with a clear error.
    fn replace_stale(&self, index: u32, ctx: &str) -> Result<(), Error> {
        let program = self.program();
        let xdp = libbpf_rs::Xdp::new(program.as_fd());
        if xdp.query_id(index as i32, libbpf_rs::XdpFlags::NONE).unwrap_or(0) != 0 {
            xdp.detach(index as i32, libbpf_rs::XdpFlags::NONE)
                .map_err(|e| err(ctx, format!("another XDP program is attached and could not be replaced: {e}")))?;
        }
        Ok(())
    }

    fn attach_mode(&self, index: u32) -> Result<AttachMode, libbpf_rs::Error> {
        let program = self.program();
        let q = libbpf_rs::Xdp::new(program.as_fd()).query(index as i32, libbpf_rs::XdpFlags::NONE)?;
        Ok(match u32::from(q.attach_mode) {
            libbpf_rs::libbpf_sys::XDP_ATTACHED_SKB => AttachMode::Generic,
            libbpf_rs::libbpf_sys::XDP_ATTACHED_HW => AttachMode::Offloaded,
            _ => AttachMode::Native,
        })
    }

    /// Detaches the program from `interface` and forgets its sockets.
    pub fn detach(&mut self, interface: &str) -> Result<(), Error> {
        let index = ifindex(interface)?;
        let a = self.attached.remove(&index).ok_or_else(|| err(format!("detaching XDP from {interface}"), "not attached"))?;
        let _ = self.map("interfaces").delete(&index.to_ne_bytes());
        for q in 0..a.queues {
            let _ = self.map("sockets").delete(&(a.slot_base + q).to_ne_bytes());
        }
        self.free_bases.push(a.slot_base);
        Ok(())
    }

    /// Registers the AF_XDP socket `fd` for RX queue `queue` of an attached interface.
    pub fn register_socket(&self, interface: &str, queue: u32, fd: RawFd) -> Result<(), Error> {
        let ctx = format!("registering the AF_XDP socket of {interface} queue {queue}");
        let index = ifindex(interface)?;
        let a = self.attached.get(&index).ok_or_else(|| err(&ctx, "XDP is not attached"))?;
        if queue >= a.queues {
            return Err(err(ctx, format!("the interface was attached with {} queues", a.queues)));
        }
        self.map("sockets").update(&(a.slot_base + queue).to_ne_bytes(), &(fd as u32).to_ne_bytes(), MapFlags::ANY).map_err(|e| err(ctx, e))
    }

    /// Marks `addr` as owned (redirected from `Mode::Owned` interfaces) or not.
    pub fn set_owned(&self, addr: IpAddr, owned: bool) -> Result<(), Error> {
        let (map, key) = match addr {
            IpAddr::V4(a) => ("owned_v4", [32u32.to_ne_bytes().as_slice(), &a.octets()].concat()),
            IpAddr::V6(a) => ("owned_v6", [128u32.to_ne_bytes().as_slice(), &a.octets()].concat()),
        };
        let r = if owned { self.map(map).update(&key, &[1], MapFlags::ANY) } else { self.map(map).delete(&key) };
        match r {
            Err(e) if !owned && e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| err(format!("{} owned address {addr}", if owned { "adding" } else { "removing" }), e)),
        }
    }

    /// The program's counters summed over CPUs, named as in [`COUNTERS`].
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let map = self.map("counters");
        COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let per_cpu = map.lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY).map_err(|e| err("reading XDP counters", e))?;
                let sum = per_cpu.unwrap_or_default().iter().map(|v| u64::from_ne_bytes(v[..8].try_into().expect("u64 values"))).sum();
                Ok((*name, sum))
            })
            .collect()
    }
}
