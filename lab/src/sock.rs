//! The socket calls std does not offer: raw sockets, options before bind, and packet info on receive and send
//! (so that a server bound to the unspecified address answers from the address it was asked on).

use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::{Duration, Instant};

use libc::{c_int, c_void, socklen_t};

/// Turns a negative return value into the OS error.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A non-blocking socket of `kind` (`SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_RAW`) and `protocol`, IPv4 or IPv6;
/// IPv6 sockets are IPv6-only (raw ones always are: the kernel refuses the option on them), and all report
/// the destination address of what they receive.
pub(crate) fn socket(ipv6: bool, kind: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain system call; the descriptor it returns is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(check(libc::socket(domain, kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, protocol))?) };
    if ipv6 {
        if kind != libc::SOCK_RAW {
            set(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        set(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    } else {
        set(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    }
    Ok(fd)
}

/// An eventfd, to wake a thread blocked in [`readable`].
pub(crate) fn eventfd() -> io::Result<File> {
    // SAFETY: plain system call; the descriptor it returns is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(check(libc::eventfd(0, libc::EFD_CLOEXEC))?) }))
}

/// Sets an integer socket option.
pub(crate) fn set(fd: &OwnedFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    let len = size_of::<c_int>() as socklen_t;
    // SAFETY: `value` outlives the call and `len` is its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, ptr::from_ref(&value).cast(), len) }).map(drop)
}

/// Binds to `addr`.
pub(crate) fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a socket address of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), ptr::from_ref(&storage).cast(), len) }).map(drop)
}

/// A listening TCP socket on `addr`, IPv6-only for an IPv6 address, with address reuse.
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = socket(addr.is_ipv6(), libc::SOCK_STREAM, 0)?;
    set(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, addr)?;
    // SAFETY: plain system call on an open descriptor.
    check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(TcpListener::from(fd))
}

/// Which of `fds` are readable (or in error) within `timeout`, forever if `None`; none when interrupted.
pub(crate) fn readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // Round up: a timeout rounded down to 0 ms would spin until the deadline.
    let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int);
    // SAFETY: `polls` is a valid array of its length.
    match check(unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(vec![false; fds.len()]),
        Err(e) => Err(e),
        Ok(_) => Ok(polls.iter().map(|p| p.revents != 0).collect()),
    }
}

/// Waits until `fd` is readable, or `deadline` passes (false).
pub(crate) fn wait(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    Ok(!left.is_zero() && readable(&[fd.as_raw_fd()], Some(left))?[0])
}

/// A datagram or raw packet received: its length, source, and where it was addressed.
pub(crate) struct Received {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The sender (port 0 on raw sockets).
    pub src: SocketAddr,
    /// The destination address and the receiving interface's index, when the kernel said.
    pub dst: Option<(IpAddr, u32)>,
}

/// Receives one datagram without blocking.
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid value of these C structs.
    let (mut name, mut msg): (libc::sockaddr_storage, libc::msghdr) = unsafe { (zeroed(), zeroed()) };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    msg.msg_name = ptr::from_mut(&mut name).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: every buffer `msg` points to lives until the call returns and has the length given.
    let len = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let src = socket_addr(&name).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no source address"))?;
    let mut dst = None;
    // SAFETY: the kernel filled `msg.msg_control` with well-formed control messages, walked with the CMSG macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    dst = Some((Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into(), info.ipi_ifindex as u32));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = Some((Ipv6Addr::from(info.ipi6_addr.s6_addr).into(), info.ipi6_ifindex));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received { len: len as usize, src, dst })
}

/// Sends `buf` to `dst` (port 0 on raw sockets), from the address `src` when given (with its interface index,
/// used for IPv6 link-local sources only).
pub(crate) fn send(fd: &OwnedFd, buf: &[u8], dst: SocketAddr, src: Option<(IpAddr, u32)>) -> io::Result<()> {
    let (mut name, namelen) = sockaddr(dst);
    let mut iov = libc::iovec { iov_base: buf.as_ptr().cast_mut().cast(), iov_len: buf.len() };
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid `msghdr`; the control message written fits `control` (CMSG_SPACE of its data),
    // and every buffer `msg` points to lives until `sendmsg` returns, which only reads them.
    let sent = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = ptr::from_mut(&mut name).cast();
        msg.msg_namelen = namelen;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some((ip, ifindex)) = src {
            let (level, kind, size) = match ip {
                IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
                IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
            };
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size as u32) as usize;
            let data = libc::CMSG_DATA(cmsg);
            match ip {
                IpAddr::V4(a) => {
                    let spec_dst = libc::in_addr { s_addr: u32::from(a).to_be() };
                    let info = libc::in_pktinfo { ipi_ifindex: 0, ipi_spec_dst: spec_dst, ipi_addr: libc::in_addr { s_addr: 0 } };
                    ptr::write_unaligned(data.cast(), info);
                }
                IpAddr::V6(a) => {
                    let ifindex = if a.is_unicast_link_local() { ifindex } else { 0 };
                    let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: a.octets() }, ipi6_ifindex: ifindex };
                    ptr::write_unaligned(data.cast(), info);
                }
            }
        }
        libc::sendmsg(fd.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The C form of a socket address, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: all-zero is a valid `sockaddr_storage`, which is large and aligned enough for either address.
    unsafe {
        let mut storage: libc::sockaddr_storage = zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                ptr::write(ptr::from_mut(&mut storage).cast(), sin);
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                ptr::write(ptr::from_mut(&mut storage).cast(), sin6);
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as socklen_t)
    }
}

/// The socket address in a C `sockaddr_storage`, if IPv4 or IPv6.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family says which address the storage holds; both fit and are plain data.
    unsafe {
        match c_int::from(storage.ss_family) {
            libc::AF_INET => {
                let sin: libc::sockaddr_in = ptr::read(ptr::from_ref(storage).cast());
                Some(SocketAddr::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(), u16::from_be(sin.sin_port)))
            }
            libc::AF_INET6 => {
                let sin6: libc::sockaddr_in6 = ptr::read(ptr::from_ref(storage).cast());
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
            }
            _ => None,
        }
    }
}

/// Random bytes from the kernel.
pub(crate) fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    // SAFETY: `bytes` is writable for N bytes.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast::<c_void>(), N, 0) };
    match got {
        n if n == N as isize => Ok(bytes),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::other("getrandom returned too few bytes")),
    }
}
