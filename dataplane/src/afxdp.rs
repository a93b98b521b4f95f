//! One AF_XDP socket bound to one RX queue of one interface, with its own UMEM (a shared UMEM
//! on veth queues above 0 failed with ENOMEM on this kernel; see NOTES.md), built on xsk-rs.
//!
//! Frame ownership is explicit: a frame is either in the fill ring (kernel), the RX ring
//! (received, being processed), the TX ring (kernel) or in `free` (ours, ready to transmit).
//! Received frames go straight back to the fill ring; transmitted frames come back through the
//! completion ring.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Frames per socket: half for the fill ring, half for transmitting.
const FRAMES: u32 = 4096;
const RING: u32 = 2048;
const FRAME_SIZE: u32 = 2048;
/// Copy-mode TX sends at most this many descriptors per `sendto()`.
const TX_KICK_BUDGET: usize = 8;

/// An AF_XDP socket on `(interface, queue)` and its UMEM.
pub struct QueueSocket {
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    free: Vec<FrameDesc>,
    received: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    in_flight: usize,
}

impl QueueSocket {
    /// Creates the UMEM and the socket, binds it in copy mode with need-wakeup, and fills the
    /// fill ring. The XDP program is ours (libxdp's own loading is inhibited); the caller
    /// registers `fd()` in its XSKMAP. Retries EBUSY for a while: a socket just closed on the
    /// same queue releases it asynchronously.
    pub fn open(interface: &str, queue: u32) -> io::Result<QueueSocket> {
        let ring = QueueSize::new(RING).map_err(io::Error::other)?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(io::Error::other)?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(io::Error::other)?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name = Interface::new(std::ffi::CString::new(interface).map_err(io::Error::other)?);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (umem, frames) = Umem::new(umem_config, NonZeroU32::new(FRAMES).expect("nonzero"), false)
                .map_err(|e| io::Error::other(format!("UMEM for {interface} queue {queue}: {e}")))?;
            // SAFETY: a new UMEM, not shared: libxdp hands us its fill and completion rings.
            match unsafe { Socket::new(socket_config, &umem, &name, queue) } {
                Ok((tx, rx, Some((fill, comp)))) => {
                    let mut s = QueueSocket {
                        umem,
                        fill,
                        comp,
                        rx,
                        tx,
                        free: frames,
                        received: Vec::with_capacity(64),
                        completed: Vec::with_capacity(64),
                        in_flight: 0,
                    };
                    let to_fill = s.free.split_off(s.free.len() - RING as usize);
                    // SAFETY: these frames are ours and not used elsewhere.
                    let n = unsafe { s.fill.produce(&to_fill) };
                    assert_eq!(n, to_fill.len(), "an empty fill ring takes RING frames");
                    return Ok(s);
                }
                Ok(_) => return Err(io::Error::other("libxdp did not hand over the fill and completion rings")),
                Err(e) => {
                    let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
                    let busy = cause.is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY));
                    if !busy || Instant::now() > deadline {
                        let cause = cause.map(|c| format!(" ({c})")).unwrap_or_default();
                        return Err(io::Error::other(format!("AF_XDP socket on {interface} queue {queue}: {e}{cause}")));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The socket's file descriptor (for the XSKMAP and `poll`).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Takes up to `max` received frames; read them with [`packet`](Self::packet), then give
    /// them back with [`recycle`](Self::recycle).
    pub fn receive(&mut self, max: usize) -> usize {
        self.received.clear();
        self.received.resize(max, FrameDesc::default());
        // SAFETY: the descriptors are written by the ring; they describe frames of our UMEM.
        let n = unsafe { self.rx.consume(&mut self.received) };
        self.received.truncate(n);
        n
    }

    /// The bytes of received frame `i` (valid until `recycle`).
    pub fn packet(&self, i: usize) -> &[u8] {
        // SAFETY: frame `i` came from our RX ring and is not in any kernel ring until recycled.
        unsafe { self.umem.data(&self.received[i]) }.contents()
    }

    /// Returns the received frames to the fill ring.
    pub fn recycle(&mut self) {
        if self.received.is_empty() {
            return;
        }
        // SAFETY: these frames came from our RX ring and are no longer read.
        let n = unsafe { self.fill.produce(&self.received) };
        if n == 0 {
            // The fill ring cannot be full while we hold these frames (it holds at most RING of
            // FRAMES); keep them for transmitting rather than lose them.
            self.free.append(&mut self.received);
        }
        self.received.clear();
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Queues `bytes` for transmission. Returns false (packet dropped) when no frame is free.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(mut desc) = self.free.pop() else { return false };
        {
            // SAFETY: a free frame of our UMEM, owned by us.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            if io::Write::write_all(&mut cursor, &bytes[..bytes.len().min(FRAME_SIZE as usize)]).is_err() {
                self.free.push(desc);
                return false;
            }
        }
        // SAFETY: the frame is written and handed to the kernel; we do not touch it until it
        // comes back through the completion ring.
        if unsafe { self.tx.produce_one(&desc) } == 0 {
            self.free.push(desc);
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// Kicks the kernel to transmit what is queued and reclaims completed frames. In copy mode
    /// the kernel transmits inside `sendto()`, a bounded number per call, so kick a few times.
    pub fn flush(&mut self) {
        for _ in 0..TX_KICK_BUDGET {
            if self.in_flight == 0 {
                break;
            }
            if self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            if self.reclaim() == 0 && !self.tx.needs_wakeup() {
                break;
            }
        }
    }

    /// Whether frames are still waiting to be transmitted.
    pub fn tx_pending(&self) -> bool {
        self.in_flight > 0
    }

    fn reclaim(&mut self) -> usize {
        self.completed.clear();
        self.completed.resize(self.in_flight.clamp(1, 256), FrameDesc::default());
        // SAFETY: completion descriptors describe our frames, which the kernel has finished.
        let n = unsafe { self.comp.consume(&mut self.completed) };
        self.in_flight -= n;
        self.free.extend_from_slice(&self.completed[..n]);
        n
    }
}
