//! Listeners and probes for TCP, UDP, SCTP and ICMP, over IPv4 and IPv6, run inside a namespace.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::run_in;
use crate::sock::{self, random};
use crate::wire::{self, Sctp, INIT, INIT_ACK};
use crate::LabError;

/// A transport protocol a listener serves and a probe tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP: the listener accepts, writes one byte and closes.
    Tcp,
    /// UDP: the listener echoes each datagram.
    Udp,
    /// SCTP: the listener answers INIT with INIT-ACK (the kernel has no SCTP; raw sockets do the handshake's
    /// first half).
    Sctp,
    /// ICMP echo: the kernel answers; ports do not apply.
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        })
    }
}

impl FromStr for Protocol {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Protocol, LabError> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp]
            .into_iter()
            .find(|p| p.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| LabError::Spec(format!("unknown protocol `{s}`")))
    }
}

/// Servers on the unspecified IPv4 and IPv6 addresses of a namespace, served by a thread until dropped.
///
/// Their sockets keep the namespace alive: drop listeners before deleting it.
pub struct Listeners {
    /// An eventfd: written to stop the thread.
    stop: File,
    thread: Option<JoinHandle<()>>,
}

impl Listeners {
    /// Listens in the named namespace on each `(protocol, port)`, IPv4 and IPv6 (ICMP needs no listener).
    pub fn start(ns: &str, ports: &[(Protocol, u16)]) -> io::Result<Listeners> {
        let ports = ports.to_vec();
        let servers = run_in(ns, move || open(&ports))??;
        let stop = sock::eventfd()?;
        let stop_fd = stop.as_raw_fd();
        let thread = thread::Builder::new().spawn(move || serve(&servers, stop_fd))?;
        Ok(Listeners { stop, thread: Some(thread) })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        // The thread polls the eventfd and exits once it is readable; it is joined before the eventfd closes.
        if (&self.stop).write_all(&1u64.to_ne_bytes()).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// One listening socket.
enum Server {
    Tcp(TcpListener),
    Udp(OwnedFd),
    /// A raw socket answering INITs to these ports.
    Sctp(OwnedFd, Vec<u16>),
}

/// Opens the servers for `ports`, IPv4 then IPv6, in the calling thread's namespace.
fn open(ports: &[(Protocol, u16)]) -> io::Result<Vec<Server>> {
    let mut servers = Vec::new();
    for any in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)] {
        for &(protocol, port) in ports {
            match protocol {
                Protocol::Tcp => servers.push(Server::Tcp(sock::tcp_listener(SocketAddr::new(any, port))?)),
                Protocol::Udp => {
                    let fd = sock::socket(any.is_ipv6(), libc::SOCK_DGRAM, 0)?;
                    sock::bind(&fd, SocketAddr::new(any, port))?;
                    servers.push(Server::Udp(fd));
                }
                Protocol::Sctp | Protocol::Icmp => {}
            }
        }
        let sctp: Vec<u16> = ports.iter().filter(|(p, _)| *p == Protocol::Sctp).map(|&(_, port)| port).collect();
        if !sctp.is_empty() {
            servers.push(Server::Sctp(sock::socket(any.is_ipv6(), libc::SOCK_RAW, libc::IPPROTO_SCTP)?, sctp));
        }
    }
    Ok(servers)
}

/// Answers on `servers` until `stop` becomes readable.
fn serve(servers: &[Server], stop: RawFd) {
    let fds: Vec<RawFd> = [stop].into_iter().chain(servers.iter().map(Server::fd)).collect();
    let mut buf = [0; 2048];
    while let Ok(ready) = sock::readable(&fds, None) {
        if ready[0] {
            return;
        }
        for (server, _) in servers.iter().zip(&ready[1..]).filter(|(_, ready)| **ready) {
            server.answer(&mut buf);
        }
    }
}

impl Server {
    fn fd(&self) -> RawFd {
        match self {
            Server::Tcp(listener) => listener.as_raw_fd(),
            Server::Udp(fd) | Server::Sctp(fd, _) => fd.as_raw_fd(),
        }
    }

    /// Answers everything pending (errors concern one client and are left to its probe).
    fn answer(&self, buf: &mut [u8]) {
        match self {
            Server::Tcp(listener) => {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.write_all(b"!");
                }
            }
            Server::Udp(fd) => {
                while let Ok(got) = sock::recv(fd, buf) {
                    let _ = sock::send(fd, &buf[..got.len], got.src, got.dst);
                }
            }
            Server::Sctp(fd, ports) => {
                while let Ok(got) = sock::recv(fd, buf) {
                    let init = parse_sctp(got.src.ip(), &buf[..got.len])
                        .filter(|s| s.chunk == INIT && s.verification_tag == 0 && ports.contains(&s.dst_port));
                    let (Some(init), Ok(tag), Ok(tsn), Ok(cookie)) = (init, random(), random(), random::<16>()) else { continue };
                    let ack = wire::sctp_init_ack(&init, nonzero(tag), u32::from_ne_bytes(tsn), &cookie);
                    let _ = sock::send(fd, &ack, SocketAddr::new(got.src.ip(), 0), got.dst);
                }
            }
        }
    }
}

/// Parses an SCTP packet received on a raw socket: IPv4 raw sockets deliver the IP header, IPv6 ones do not.
fn parse_sctp(src: IpAddr, packet: &[u8]) -> Option<Sctp> {
    wire::parse_sctp(if src.is_ipv4() { ipv4_payload(packet) } else { packet })
}

/// What follows the IPv4 header.
fn ipv4_payload(packet: &[u8]) -> &[u8] {
    packet.get(usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4..).unwrap_or_default()
}

/// A random `u32` from four random bytes, never 0 (SCTP tags may not be).
fn nonzero(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes).max(1)
}

/// Whether `dst` answers `protocol` on `port` (ignored for ICMP) within `timeout`, tried from inside the named
/// namespace.
///
/// TCP: connected and read the listener's byte. UDP: a random nonce came back. SCTP: an INIT-ACK from `dst:port`
/// carried our INIT's tag. ICMP: the matching echo reply came back. No answer, a timeout, a refusal or an
/// unreachable network are `Ok(false)`; errors are local failures (no such namespace, sockets).
pub fn probe(ns: &str, dst: IpAddr, protocol: Protocol, port: u16, timeout: Duration) -> io::Result<bool> {
    run_in(ns, move || {
        let deadline = Instant::now() + timeout;
        let answered = match protocol {
            Protocol::Tcp => tcp(SocketAddr::new(dst, port), deadline),
            Protocol::Udp => udp(SocketAddr::new(dst, port), deadline),
            Protocol::Sctp => sctp(dst, port, deadline),
            Protocol::Icmp => icmp(dst, deadline),
        };
        match answered {
            Err(e) if unanswered(&e) => Ok(false),
            answered => answered,
        }
    })?
}

/// Whether an error means the network did not answer, rather than a local failure.
fn unanswered(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
        || e.raw_os_error().is_some_and(|errno| {
            [libc::ECONNREFUSED, libc::ECONNRESET, libc::ECONNABORTED, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EPERM].contains(&errno)
        })
}

/// The time left until `deadline`, at least a millisecond (std refuses zero timeouts).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

fn tcp(dst: SocketAddr, deadline: Instant) -> io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&dst, left(deadline))?;
    stream.set_read_timeout(Some(left(deadline)))?;
    Ok(stream.read(&mut [0])? == 1)
}

fn udp(dst: SocketAddr, deadline: Instant) -> io::Result<bool> {
    let any = if dst.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
    let nonce: [u8; 16] = random()?;
    socket.connect(dst)?;
    socket.send(&nonce)?;
    let mut buf = [0; 64];
    while Instant::now() < deadline {
        socket.set_read_timeout(Some(left(deadline)))?;
        if socket.recv(&mut buf)? == nonce.len() && buf[..nonce.len()] == nonce {
            return Ok(true);
        }
    }
    Ok(false)
}

fn sctp(dst: IpAddr, port: u16, deadline: Instant) -> io::Result<bool> {
    let (tag, tsn, src_port) = (nonzero(random()?), u32::from_ne_bytes(random()?), 49_152 + u16::from_ne_bytes(random()?) % 16_384);
    let init = wire::sctp_init(src_port, port, tag, tsn);
    exchange(dst, libc::IPPROTO_SCTP, &init, deadline, |packet| {
        parse_sctp(dst, packet).is_some_and(|s| s.chunk == INIT_ACK && s.verification_tag == tag && s.src_port == port && s.dst_port == src_port)
    })
}

fn icmp(dst: IpAddr, deadline: Instant) -> io::Result<bool> {
    let (id, seq, payload): ([u8; 2], [u8; 2], [u8; 16]) = (random()?, random()?, random()?);
    let ipv6 = dst.is_ipv6();
    let request = wire::echo_request(ipv6, u16::from_ne_bytes(id), u16::from_ne_bytes(seq), &payload);
    let protocol = if ipv6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP };
    exchange(dst, protocol, &request, deadline, |packet| wire::is_echo_reply(ipv6, if ipv6 { packet } else { ipv4_payload(packet) }, &request))
}

/// Sends `packet` to `dst` on a raw socket of `protocol`, then waits until `deadline` for a packet from `dst`
/// that `answers` (raw sockets see every packet of their protocol in the namespace, other probes' too).
fn exchange(dst: IpAddr, protocol: libc::c_int, packet: &[u8], deadline: Instant, answers: impl Fn(&[u8]) -> bool) -> io::Result<bool> {
    let fd = sock::socket(dst.is_ipv6(), libc::SOCK_RAW, protocol)?;
    sock::send(&fd, packet, SocketAddr::new(dst, 0), None)?;
    let mut buf = [0; 2048];
    while sock::wait(&fd, deadline)? {
        match sock::recv(&fd, &mut buf) {
            Ok(got) if got.src.ip() == dst && answers(&buf[..got.len]) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        for (name, protocol) in [("TCP", Protocol::Tcp), ("udp", Protocol::Udp), ("Sctp", Protocol::Sctp), ("icmp", Protocol::Icmp)] {
            assert_eq!(name.parse::<Protocol>().unwrap(), protocol);
            assert_eq!(protocol.to_string(), name.to_uppercase());
        }
        assert!("GRE".parse::<Protocol>().is_err());
    }
}
