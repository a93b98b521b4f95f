//! Connection tracking, shared by all workers.
//!
//! The two directions of a flow can arrive on different RX queues, hence different workers, so
//! there is one table for all, a [`DashMap`]. Each flow has one entry, under a key that both
//! directions map to; the entry remembers which side opened the flow, so every packet is known
//! to go the original or the reply way. ICMP echo flows are keyed from the requester to the
//! responder (an echo request from the other side is another flow); ICMP errors belong to the
//! flow they quote; other ICMP messages are not tracked (each is judged by policy).
//!
//! Time is the caller's: every call takes `now`, monotonic nanoseconds, so that tests decide it.
//! The dataplane calls [`ConnTrack::track`] for every packet; for [`Track::New`] it evaluates
//! policy and, if the flow is allowed, [`ConnTrack::commit`]s it; it calls
//! [`ConnTrack::expire`] periodically. A guard from the map is never held across another
//! operation on it, so workers cannot deadlock; the established path allocates nothing.

// Keys come from packets, so the hash is keyed per process (aHash: SipHash's flood resistance
// at a fraction of its cost).
use crate::packet::{tcp_flags, FlowTuple, Fragment, IcmpKind, Packet};
use ahash::RandomState;
use dashmap::DashMap;
use palisade_policy::model::proto::{ICMP as PROTO_ICMP, ICMPV6 as PROTO_ICMPV6, TCP as PROTO_TCP, UDP as PROTO_UDP};
use serde::Serialize;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Slots that a [`ConnTrack::commit`] into a full table looks at, at most, for expired entries.
const EVICT_SCAN: usize = 256;
/// Entries that one such look examines, at most (Linux's eviction range: each costs a memory
/// access, and the agent's periodic sweep removes expired entries in bulk anyway).
const EVICT_LOOK: usize = 8;
/// The golden-ratio increment of the eviction cursor.
const WEYL: u64 = 0x9E37_79B9_7F4A_7C15;
// When that look finds no expired entry, it drops one flow that never saw a reply, as Linux's
// conntrack `early_drop` does: a flood of one-way flows cannot lock out new connections, and
// flows that got an answer are kept.

/// How long an idle flow lives, per protocol and TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP handshake in progress (SYN sent, SYN-ACK seen).
    pub tcp_syn: Duration,
    /// TCP established, also when only one side has sent its FIN (a half-closed connection
    /// can go on for long).
    pub tcp_established: Duration,
    /// TCP after both sides' FINs.
    pub tcp_fin: Duration,
    /// TCP after a RST.
    pub tcp_close: Duration,
    /// UDP.
    pub udp: Duration,
    /// ICMP and ICMPv6 echo.
    pub icmp: Duration,
    /// Other protocols, SCTP included.
    pub other: Duration,
    /// How long the later fragments of a datagram are let through after its first fragment.
    pub fragment: Duration,
}

impl Default for Timeouts {
    /// Calico-like values: SYN 20 s, established 1 h, FIN and RST 10 s, UDP 60 s,
    /// ICMP 5 s, other 60 s, fragments 30 s.
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(20),
            tcp_established: Duration::from_secs(3600),
            tcp_fin: Duration::from_secs(10),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(5),
            other: Duration::from_secs(60),
            fragment: Duration::from_secs(30),
        }
    }
}

/// Connection tracking configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most flows tracked at once; also the most fragmented datagrams remembered.
    pub capacity: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

/// What connection tracking knows of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// The packet belongs to a tracked flow; `reply` when it goes from the responder to the
    /// originator; `tag` is what [`ConnTrack::commit`] was given for the flow.
    Established {
        /// The packet goes the reply way.
        reply: bool,
        /// The flow's tag.
        tag: u32,
    },
    /// An ICMP error about a tracked flow.
    Related {
        /// The tag of the flow that the error is about.
        tag: u32,
    },
    /// The packet opens a new flow: policy decides, and [`ConnTrack::commit`] records it if allowed.
    New {
        /// A TCP packet without SYN for which there is no entry: a connection that started before
        /// the tracker did (a dataplane restart), picked up mid-stream as Linux does with
        /// `nf_conntrack_tcp_loose`. Policy judges it as if the sender had opened the connection.
        loose: bool,
    },
    /// The packet fits no flow or its flow's state: drop it. The reason is a snake_case name.
    Invalid(&'static str),
}

/// The table is full: the new flow cannot be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Connection tracking counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtStats {
    /// Flows tracked.
    pub entries: usize,
    /// Fragmented datagrams whose first fragment was let through.
    pub fragments: usize,
    /// Expired entries removed to make room for new ones.
    pub evicted: u64,
    /// Live flows that never saw a reply, dropped to make room for new ones (the table was full
    /// and nothing had expired).
    pub early_drops: u64,
    /// New flows (or fragmented datagrams) not recorded because the table was full.
    pub full_drops: u64,
    /// Expired entries removed by [`ConnTrack::expire`] or found expired by a lookup.
    pub expired: u64,
}

/// The connection tracking table.
pub struct ConnTrack {
    conns: Table<Key, Entry>,
    frags: Table<FragKey, Frag>,
    timeouts: Timeouts,
}

impl ConnTrack {
    /// An empty table.
    pub fn new(config: Config) -> Self {
        ConnTrack {
            conns: Table::new(config.capacity, DashMap::with_capacity_and_hasher(config.capacity, RandomState::new())),
            frags: Table::new(config.capacity, DashMap::with_hasher(RandomState::new())),
            timeouts: config.timeouts,
        }
    }

    /// Looks a packet up, and advances its flow's state and expiry.
    ///
    /// Later fragments (no transport header) follow the verdict of their datagram's first
    /// fragment: when that was let through (established, related, or committed as new), they
    /// get the same verdict, for [`Timeouts::fragment`]; otherwise they are invalid.
    pub fn track(&self, pkt: &Packet, now: u64) -> Track {
        if let Fragment::Later { id } = pkt.fragment {
            return self.frags.update(&FragKey::of(pkt, id), now, |frag| frag.verdict).unwrap_or(Track::Invalid("fragment_without_first"));
        }
        let verdict = self.lookup(pkt, now);
        if let (Fragment::First { id }, Track::Established { .. } | Track::Related { .. }) = (pkt.fragment, verdict) {
            // When full, the later fragments will be dropped; the table counts it.
            let _ = self.remember_fragment(pkt, id, verdict, now);
        }
        verdict
    }

    /// Records the flow of a packet that [`ConnTrack::track`] found new and policy allowed; `tag`
    /// is returned with every later packet of the flow (the deciding rule's id, for counters).
    /// Replaces an entry of the same key (a connection reopened). Untracked packets (ICMP other
    /// than echo) record nothing but their fragments. When the table is full, it first removes
    /// expired entries (looking at a bounded number of them); if none, the flow is not recorded.
    pub fn commit(&self, pkt: &Packet, now: u64, tag: u32) -> Result<(), Full> {
        let fragment = match pkt.fragment {
            Fragment::First { id } => self.remember_fragment(pkt, id, Track::Established { reply: false, tag }, now),
            Fragment::None | Fragment::Later { .. } => Ok(()),
        };
        let flow = match flow_key(pkt) {
            Some((key, src_is_a)) => {
                let state = if pkt.protocol == PROTO_TCP { initial_tcp_state(pkt.tcp_flags) } else { State::Established };
                let entry = Entry { state, orig_is_a: src_is_a, replied: false, tag, expires: self.expiry(now, self.timeout(pkt.protocol, state)) };
                self.conns.insert(key, entry, now)
            }
            None => Ok(()),
        };
        flow.and(fragment)
    }

    /// Keeps the TCP or UDP flow of `tuple` alive as if a packet going `tuple`'s way had been let
    /// through at `seen` (by the kernel's fast path, which userspace does not see), without
    /// changing its state; whether the flow is tracked at `now`.
    pub fn touch(&self, tuple: &FlowTuple, seen: Option<u64>, now: u64) -> bool {
        let (key, src_is_a) = Key::canonical(tuple);
        self.conns
            .update(&key, now, |entry| {
                if let Some(seen) = seen {
                    entry.expires = entry.expires.max(self.expiry(seen, self.timeout(tuple.protocol, entry.state)));
                    entry.replied |= src_is_a != entry.orig_is_a;
                }
            })
            .is_some()
    }

    /// Removes every expired entry; returns how many.
    pub fn expire(&self, now: u64) -> usize {
        self.conns.sweep(now) + self.frags.sweep(now)
    }

    /// Forgets every flow and fragment.
    pub fn clear(&self) {
        self.conns.clear();
        self.frags.clear();
    }

    /// Current counters.
    pub fn stats(&self) -> CtStats {
        CtStats {
            entries: self.conns.len.load(Relaxed),
            fragments: self.frags.len.load(Relaxed),
            evicted: self.conns.evicted.load(Relaxed) + self.frags.evicted.load(Relaxed),
            early_drops: self.conns.early_drops.load(Relaxed) + self.frags.early_drops.load(Relaxed),
            full_drops: self.conns.full.load(Relaxed) + self.frags.full.load(Relaxed),
            expired: self.conns.expired.load(Relaxed) + self.frags.expired.load(Relaxed),
        }
    }

    /// [`ConnTrack::track`] for packets with a transport header.
    fn lookup(&self, pkt: &Packet, now: u64) -> Track {
        let (key, src_is_a) = match (flow_key(pkt), pkt.icmp_kind()) {
            (None, Some(IcmpKind::Error)) => return self.related(pkt, now),
            (None, _) => return Track::New { loose: false },
            (Some((key, src_is_a)), _) if pkt.protocol == PROTO_TCP => return self.track_tcp(pkt, key, src_is_a, now),
            (Some(key), _) => key,
        };
        let timeout = self.timeout(pkt.protocol, State::Established);
        let found = self.conns.update(&key, now, |entry| {
            let reply = src_is_a != entry.orig_is_a;
            entry.expires = self.expiry(now, timeout);
            entry.replied |= reply;
            Track::Established { reply, tag: entry.tag }
        });
        match (found, pkt.icmp_kind()) {
            (Some(track), _) => track,
            (None, Some(IcmpKind::EchoReply)) => Track::Invalid("echo_reply_without_flow"),
            (None, _) => Track::New { loose: false },
        }
    }

    /// TCP: checks the flags, then follows the state machine of the flow's entry.
    fn track_tcp(&self, pkt: &Packet, key: Key, src_is_a: bool, now: u64) -> Track {
        let flags = pkt.tcp_flags & STATE_FLAGS;
        if !valid_tcp_flags(flags) {
            return Track::Invalid("tcp_bad_flags");
        }
        let found = self.conns.update(&key, now, |entry| {
            let reply = src_is_a != entry.orig_is_a;
            match tcp_step(entry.state, reply, flags) {
                Step::To(state) => {
                    entry.state = state;
                    entry.replied |= reply;
                    entry.expires = self.expiry(now, self.timeout(PROTO_TCP, state));
                    Track::Established { reply, tag: entry.tag }
                }
                Step::Reopen => Track::New { loose: false },
                Step::Invalid(reason) => Track::Invalid(reason),
            }
        });
        found.unwrap_or(match flags {
            tcp_flags::SYN => Track::New { loose: false },
            SYN_ACK => Track::Invalid("tcp_synack_without_flow"),
            tcp_flags::RST | RST_ACK => Track::Invalid("tcp_rst_without_flow"),
            _ => Track::New { loose: true },
        })
    }

    /// An ICMP error: related to the flow it quotes, if tracked, and if it goes back to the
    /// quoted packet's sender (as Linux checks).
    fn related(&self, pkt: &Packet, now: u64) -> Track {
        let Some(inner) = pkt.inner else { return Track::Invalid("icmp_error_without_flow") };
        if pkt.dst != inner.src {
            return Track::Invalid("icmp_error_misdirected");
        }
        // A quoted echo message may be a request or a reply: try both orientations.
        let keys = [Key::canonical(&inner).0, Key::oriented(&inner, true), Key::oriented(&inner, false)];
        let keys = if matches!(inner.protocol, PROTO_ICMP | PROTO_ICMPV6) { &keys[1..] } else { &keys[..1] };
        keys.iter()
            .find_map(|key| self.conns.update(key, now, |entry| entry.tag))
            .map_or(Track::Invalid("icmp_error_without_flow"), |tag| Track::Related { tag })
    }

    /// Lets the later fragments of `pkt`'s datagram through with `verdict`.
    fn remember_fragment(&self, pkt: &Packet, id: u32, verdict: Track, now: u64) -> Result<(), Full> {
        self.frags.insert(FragKey::of(pkt, id), Frag { verdict, expires: self.expiry(now, self.timeouts.fragment) }, now)
    }

    /// The idle timeout of a flow of `protocol` in `state`.
    fn timeout(&self, protocol: u8, state: State) -> Duration {
        let t = &self.timeouts;
        match (protocol, state) {
            (PROTO_TCP, State::SynSent | State::SynRecv) => t.tcp_syn,
            (PROTO_TCP, State::Closing { fin_orig: true, fin_reply: true }) => t.tcp_fin,
            (PROTO_TCP, State::Established | State::Closing { .. }) => t.tcp_established,
            (PROTO_TCP, State::Closed) => t.tcp_close,
            (PROTO_UDP, _) => t.udp,
            (PROTO_ICMP | PROTO_ICMPV6, _) => t.icmp,
            _ => t.other,
        }
    }

    fn expiry(&self, now: u64, timeout: Duration) -> u64 {
        now.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The key of a packet's flow and whether the packet's source is the key's `a` side; `None` for
/// what is not tracked: ICMP other than echo, later fragments.
fn flow_key(pkt: &Packet) -> Option<(Key, bool)> {
    if matches!(pkt.fragment, Fragment::Later { .. }) {
        return None;
    }
    let tuple = pkt.tuple();
    match pkt.icmp_kind() {
        None => Some(Key::canonical(&tuple)),
        Some(IcmpKind::EchoRequest) => Some((Key::oriented(&tuple, true), true)),
        Some(IcmpKind::EchoReply) => Some((Key::oriented(&tuple, false), false)),
        Some(IcmpKind::Error | IcmpKind::Other) => None,
    }
}

/// A flow's key: its two endpoints `a` and `b` in a fixed order, whatever the packet's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    a: IpAddr,
    b: IpAddr,
    a_port: u16,
    b_port: u16,
    protocol: u8,
}

impl Key {
    /// The key with the lower (address, port) endpoint as `a`, and whether that is the source.
    fn canonical(t: &FlowTuple) -> (Key, bool) {
        let src_is_a = (t.src, t.src_port) <= (t.dst, t.dst_port);
        (Key::oriented(t, src_is_a), src_is_a)
    }

    /// The key with the source as `a` if `src_is_a`, else the destination.
    fn oriented(t: &FlowTuple, src_is_a: bool) -> Key {
        let (a, b) = if src_is_a { ((t.src, t.src_port), (t.dst, t.dst_port)) } else { ((t.dst, t.dst_port), (t.src, t.src_port)) };
        Key { a: a.0, b: b.0, a_port: a.1, b_port: b.1, protocol: t.protocol }
    }
}

/// One tracked flow.
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    /// The originator (the sender of the committed packet) is the key's `a` side.
    orig_is_a: bool,
    /// A packet went the reply way (the flow is not one-way).
    replied: bool,
    tag: u32,
    expires: u64,
}

/// A flow's state: TCP's connection states; other protocols are `Established` throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// SYN seen from the originator.
    SynSent,
    /// SYN-ACK seen from the responder.
    SynRecv,
    /// Handshake done (or picked up mid-stream).
    Established,
    /// FIN seen from one or both sides.
    Closing { fin_orig: bool, fin_reply: bool },
    /// RST seen.
    Closed,
}

/// The TCP flags that drive the state machine (PSH, URG, ECE, CWR do not matter to it).
const STATE_FLAGS: u8 = tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::ACK;
const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;
const RST_ACK: u8 = tcp_flags::RST | tcp_flags::ACK;
const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;

/// The flag combinations that a TCP segment can carry (of [`STATE_FLAGS`], as Linux's
/// `tcp_valid_flags`): no SYN with FIN or RST, no FIN without ACK, not none at all.
fn valid_tcp_flags(flags: u8) -> bool {
    matches!(flags, tcp_flags::SYN | SYN_ACK | tcp_flags::RST | RST_ACK | tcp_flags::ACK | FIN_ACK)
}

/// The state of a flow committed from a packet with `flags`: SYN-sent for a SYN, else picked up
/// mid-stream (closing if the packet is a FIN).
fn initial_tcp_state(flags: u8) -> State {
    match flags & STATE_FLAGS {
        tcp_flags::SYN => State::SynSent,
        FIN_ACK => State::Closing { fin_orig: true, fin_reply: false },
        _ => State::Established,
    }
}

/// What a TCP segment does to its flow.
enum Step {
    /// Accepted, moving the flow to this state.
    To(State),
    /// A SYN that starts a new connection on the same ports: a new flow.
    Reopen,
    /// Does not fit the flow's state.
    Invalid(&'static str),
}

/// The TCP state machine, for a segment with valid `flags` going the `reply` way.
fn tcp_step(state: State, reply: bool, flags: u8) -> Step {
    use State::*;
    match (flags, state) {
        (tcp_flags::RST | RST_ACK, _) => Step::To(Closed),
        // A retransmitted SYN.
        (tcp_flags::SYN, SynSent | SynRecv) if !reply => Step::To(state),
        (tcp_flags::SYN, _) => Step::Reopen,
        // The SYN-ACK, or its retransmission when the originator's ACK was lost.
        (SYN_ACK, SynSent | SynRecv) if reply => Step::To(SynRecv),
        (SYN_ACK, Established) if reply => Step::To(Established),
        (SYN_ACK, _) => Step::Invalid("tcp_unexpected_synack"),
        (_, SynSent) => Step::Invalid("tcp_ack_before_synack"),
        (tcp_flags::ACK, SynRecv) if !reply => Step::To(Established),
        (FIN_ACK, SynRecv | Established) => Step::To(Closing { fin_orig: !reply, fin_reply: reply }),
        (FIN_ACK, Closing { fin_orig, fin_reply }) => Step::To(Closing { fin_orig: fin_orig || !reply, fin_reply: fin_reply || reply }),
        // ACKs and data in any other state, FINs after a RST: no change.
        _ => Step::To(state),
    }
}

/// The key of a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    id: u32,
}

impl FragKey {
    fn of(pkt: &Packet, id: u32) -> FragKey {
        FragKey { src: pkt.src, dst: pkt.dst, protocol: pkt.protocol, id }
    }
}

/// A fragmented datagram whose first fragment was let through.
#[derive(Clone, Copy, Debug)]
struct Frag {
    verdict: Track,
    expires: u64,
}

/// Table values: they expire, and some may be dropped early when the table is full.
trait Expires {
    fn expires(&self) -> u64;
    fn early_droppable(&self) -> bool;
}

impl Expires for Entry {
    fn expires(&self) -> u64 {
        self.expires
    }
    fn early_droppable(&self) -> bool {
        !self.replied
    }
}

impl Expires for Frag {
    fn expires(&self) -> u64 {
        self.expires
    }
    fn early_droppable(&self) -> bool {
        false
    }
}

/// A bounded map of expiring values, with its counters. `len` counts the entries exactly (the
/// map's own `len` locks every shard).
struct Table<K, V> {
    map: DashMap<K, V, RandomState>,
    capacity: usize,
    len: AtomicUsize,
    evicted: AtomicU64,
    early_drops: AtomicU64,
    full: AtomicU64,
    /// Where the next eviction looks (a Weyl sequence: spread evenly over shards and slots).
    cursor: AtomicU64,
    expired: AtomicU64,
}

impl<K: Copy + Eq + Hash, V: Expires> Table<K, V> {
    fn new(capacity: usize, map: DashMap<K, V, RandomState>) -> Self {
        Table {
            map,
            capacity,
            len: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            early_drops: AtomicU64::new(0),
            full: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the live value of `key`; `None` if there is none (an expired one is removed).
    fn update<R>(&self, key: &K, now: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        match self.map.get_mut(key) {
            None => return None,
            Some(mut value) if value.expires() > now => return Some(f(&mut value)),
            Some(_) => {}
        }
        if self.remove_expired(key, now) {
            self.expired.fetch_add(1, Relaxed);
        }
        None
    }

    /// Inserts or replaces; when full, evicts expired entries or else drops one early, else fails.
    fn insert(&self, key: K, value: V, now: u64) -> Result<(), Full> {
        // Under capacity (the common case), one map access: take a slot, give it back if the key
        // was there. When full, a replacement needs no room, so look for the key first.
        let reserved = self.reserve()
            || match self.map.get_mut(&key) {
                Some(mut slot) => {
                    *slot = value;
                    return Ok(());
                }
                None => self.evict(now) > 0 && self.reserve(),
            };
        if !reserved {
            self.full.fetch_add(1, Relaxed);
            return Err(Full);
        }
        if self.map.insert(key, value).is_some() {
            // The key was there (a replaced flow, or another worker was first): one entry, one slot.
            self.len.fetch_sub(1, Relaxed);
        }
        Ok(())
    }

    /// Takes a slot for a new entry, if under capacity.
    fn reserve(&self) -> bool {
        self.len.fetch_update(Relaxed, Relaxed, |len| (len < self.capacity).then_some(len + 1)).is_ok()
    }

    /// Looks at up to [`EVICT_SCAN`] slots from a pseudo-random position of a pseudo-random shard
    /// on (as Linux's `early_drop` starts at a random bucket: a scan from a fixed place would walk
    /// ever longer emptied stretches) for the first [`EVICT_LOOK`] entries, and removes those that
    /// have expired, or if none has, one early-droppable entry; returns how many it removed.
    fn evict(&self, now: u64) -> usize {
        let mut victims = [None; EVICT_LOOK];
        let mut droppable = None;
        let mut looked = 0;
        let spot = self.cursor.fetch_add(WEYL, Relaxed);
        let shards = self.map.shards();
        let first = (spot >> 40) as usize % shards.len();
        let mut budget = EVICT_SCAN;
        // From the chosen spot on through the following shards, until the budget is spent.
        'shards: for s in (first..shards.len()).chain(0..first) {
            let shard = shards[s].read();
            let buckets = shard.buckets();
            let start = if s == first { spot as usize % buckets } else { 0 };
            for i in (start..buckets).chain(0..start) {
                if budget == 0 {
                    break 'shards;
                }
                budget -= 1;
                // SAFETY: `i` is below the table's bucket count, and the shard's read lock keeps
                // the table and its entries in place while we read them.
                let Some((key, value)) = (unsafe { shard.is_bucket_full(i).then(|| shard.bucket(i).as_ref()) }) else { continue };
                if value.get().expires() <= now {
                    victims[looked] = Some(*key);
                } else if droppable.is_none() && value.get().early_droppable() {
                    droppable = Some(*key);
                }
                looked += 1;
                if looked == EVICT_LOOK {
                    break 'shards;
                }
            }
        }
        // The shard's lock is released: removing is safe.
        let evicted = victims.iter().flatten().filter(|key| self.remove_expired(key, now)).count();
        self.evicted.fetch_add(evicted as u64, Relaxed);
        if evicted > 0 {
            return evicted;
        }
        let dropped = droppable.is_some_and(|key| self.map.remove_if(&key, |_, value| value.early_droppable()).is_some());
        if dropped {
            self.len.fetch_sub(1, Relaxed);
            self.early_drops.fetch_add(1, Relaxed);
        }
        usize::from(dropped)
    }

    /// Removes `key` if its value has expired; returns whether it did.
    fn remove_expired(&self, key: &K, now: u64) -> bool {
        let removed = self.map.remove_if(key, |_, value| value.expires() <= now).is_some();
        if removed {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Removes every expired entry; returns how many.
    fn sweep(&self, now: u64) -> usize {
        let removed = self.retain(|value| value.expires() > now);
        self.expired.fetch_add(removed as u64, Relaxed);
        removed
    }

    /// Removes every entry.
    fn clear(&self) {
        self.retain(|_| false);
    }

    /// Keeps the entries that `keep` accepts; returns how many it removed.
    fn retain(&self, keep: impl Fn(&V) -> bool) -> usize {
        let mut removed = 0;
        self.map.retain(|_, value| {
            let kept = keep(value);
            removed += usize::from(!kept);
            kept
        });
        self.len.fetch_sub(removed, Relaxed);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tcp_flags::{ACK, FIN, PSH, RST, SYN};
    use std::sync::{mpsc, Arc};

    const T0: u64 = 1_000_000_000_000;
    const UDP: u8 = PROTO_UDP;
    const TCP: u8 = PROTO_TCP;
    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const ROUTER: [u8; 4] = [10, 0, 0, 254];

    fn secs(s: u64) -> u64 {
        s * 1_000_000_000
    }

    fn table(capacity: usize) -> ConnTrack {
        ConnTrack::new(Config { capacity, timeouts: Timeouts::default() })
    }

    fn packet(src: impl Into<IpAddr>, src_port: u16, dst: impl Into<IpAddr>, dst_port: u16, protocol: u8) -> Packet {
        Packet {
            vlan: None,
            l3_offset: 14,
            src: src.into(),
            dst: dst.into(),
            protocol,
            src_port,
            dst_port,
            tcp_flags: 0,
            sctp_chunk: None,
            icmp: None,
            inner: None,
            fragment: Fragment::None,
            ttl: 64,
            len: 64,
        }
    }

    /// A TCP connection from `client`:40000 to `server`:80.
    struct Conn {
        client: [u8; 4],
        server: [u8; 4],
    }

    impl Conn {
        fn c2s(&self, flags: u8) -> Packet {
            Packet { tcp_flags: flags, ..packet(self.client, 40000, self.server, 80, TCP) }
        }
        fn s2c(&self, flags: u8) -> Packet {
            Packet { tcp_flags: flags, ..packet(self.server, 80, self.client, 40000, TCP) }
        }
    }

    fn echo(src: [u8; 4], dst: [u8; 4], reply: bool, ident: u16) -> Packet {
        let message = if reply { 0 } else { 8 };
        Packet { icmp: Some((message, 0)), ..packet(src, ident, dst, ident, PROTO_ICMP) }
    }

    /// An ICMPv4 error (port unreachable) from `src` to `dst` quoting `quoted`.
    fn icmp_error(src: [u8; 4], dst: [u8; 4], quoted: &Packet) -> Packet {
        Packet { icmp: Some((3, 3)), inner: Some(quoted.tuple()), ..packet(src, 0, dst, 0, PROTO_ICMP) }
    }

    const fn est(reply: bool, tag: u32) -> Track {
        Track::Established { reply, tag }
    }
    const NEW: Track = Track::New { loose: false };
    const LOOSE: Track = Track::New { loose: true };

    #[test]
    fn tcp_handshake_data_and_teardown_either_address_order() {
        for conn in [Conn { client: A, server: B }, Conn { client: B, server: A }] {
            let ct = table(10);
            assert_eq!(ct.track(&conn.c2s(SYN), T0), NEW);
            ct.commit(&conn.c2s(SYN), T0, 7).unwrap();
            assert_eq!(ct.track(&conn.c2s(SYN), T0 + 1), est(false, 7)); // retransmitted
            assert_eq!(ct.track(&conn.s2c(SYN | ACK), T0 + 2), est(true, 7));
            assert_eq!(ct.track(&conn.s2c(SYN | ACK), T0 + 3), est(true, 7)); // retransmitted
            assert_eq!(ct.track(&conn.c2s(ACK), T0 + 4), est(false, 7));
            assert_eq!(ct.track(&conn.s2c(SYN | ACK), T0 + 5), est(true, 7)); // the ACK was lost
            assert_eq!(ct.track(&conn.c2s(ACK | PSH), T0 + 6), est(false, 7));
            assert_eq!(ct.track(&conn.s2c(ACK), T0 + 7), est(true, 7));
            // Established: an hour of silence is fine, not more.
            let t = T0 + secs(3599);
            assert_eq!(ct.track(&conn.s2c(ACK | PSH), t), est(true, 7));
            assert_eq!(ct.track(&conn.c2s(FIN | ACK), t + 1), est(false, 7));
            assert_eq!(ct.track(&conn.s2c(ACK), t + 2), est(true, 7));
            // Half closed: still the established timeout.
            let t = t + secs(600);
            assert_eq!(ct.track(&conn.s2c(ACK | PSH), t), est(true, 7));
            assert_eq!(ct.track(&conn.s2c(FIN | ACK), t + 1), est(true, 7));
            assert_eq!(ct.track(&conn.c2s(ACK), t + 2), est(false, 7));
            // Both FINs: gone after 10 s.
            assert_eq!(ct.track(&conn.c2s(ACK), t + secs(10)), est(false, 7));
            assert_eq!(ct.track(&conn.c2s(ACK), t + secs(20)), LOOSE);
            assert_eq!(ct.stats().entries, 0);
        }
    }

    #[test]
    fn tcp_established_timeout() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        ct.commit(&conn.c2s(SYN), T0, 1).unwrap();
        ct.track(&conn.s2c(SYN | ACK), T0);
        ct.track(&conn.c2s(ACK), T0);
        assert_eq!(ct.track(&conn.s2c(ACK), T0 + secs(3600)), LOOSE);
    }

    #[test]
    fn tcp_handshake_timeout() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        ct.commit(&conn.c2s(SYN), T0, 1).unwrap();
        assert_eq!(ct.track(&conn.s2c(SYN | ACK), T0 + secs(20) - 1), est(true, 1));
        assert_eq!(ct.track(&conn.c2s(ACK), T0 + secs(40)), LOOSE);
    }

    #[test]
    fn tcp_reset() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        ct.commit(&conn.c2s(SYN), T0, 1).unwrap();
        ct.track(&conn.s2c(SYN | ACK), T0);
        ct.track(&conn.c2s(ACK), T0);
        assert_eq!(ct.track(&conn.s2c(RST), T0 + 1), est(true, 1));
        // Segments in flight still pass, for 10 s.
        assert_eq!(ct.track(&conn.c2s(ACK), T0 + 2), est(false, 1));
        assert_eq!(ct.track(&conn.c2s(RST | ACK), T0 + 3), est(false, 1));
        assert_eq!(ct.track(&conn.c2s(FIN | ACK), T0 + 4), est(false, 1));
        assert_eq!(ct.track(&conn.s2c(RST), T0 + secs(20)), Track::Invalid("tcp_rst_without_flow"));
        // A reset during the handshake (a closed port).
        ct.commit(&conn.c2s(SYN), T0, 2).unwrap();
        assert_eq!(ct.track(&conn.s2c(RST | ACK), T0 + 1), est(true, 2));
    }

    #[test]
    fn tcp_without_entry() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        assert_eq!(ct.track(&conn.s2c(SYN | ACK), T0), Track::Invalid("tcp_synack_without_flow"));
        assert_eq!(ct.track(&conn.s2c(RST), T0), Track::Invalid("tcp_rst_without_flow"));
        assert_eq!(ct.track(&conn.s2c(RST | ACK), T0), Track::Invalid("tcp_rst_without_flow"));
        for flags in [0, FIN, SYN | FIN, SYN | RST, SYN | FIN | ACK, FIN | RST | ACK, PSH, FIN | PSH] {
            assert_eq!(ct.track(&conn.c2s(flags), T0), Track::Invalid("tcp_bad_flags"), "{flags:#x}");
        }
        assert_eq!(ct.track(&conn.c2s(SYN | PSH), T0), NEW);
        assert_eq!(ct.track(&conn.c2s(ACK), T0), LOOSE);
        assert_eq!(ct.track(&conn.c2s(FIN | ACK), T0), LOOSE);
        assert_eq!(ct.stats().entries, 0);
    }

    #[test]
    fn tcp_invalid_in_flow() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        ct.commit(&conn.c2s(SYN), T0, 1).unwrap();
        assert_eq!(ct.track(&conn.c2s(ACK), T0), Track::Invalid("tcp_ack_before_synack"));
        assert_eq!(ct.track(&conn.s2c(ACK), T0), Track::Invalid("tcp_ack_before_synack"));
        assert_eq!(ct.track(&conn.c2s(FIN | ACK), T0), Track::Invalid("tcp_ack_before_synack"));
        assert_eq!(ct.track(&conn.c2s(SYN | ACK), T0), Track::Invalid("tcp_unexpected_synack"));
        assert_eq!(ct.track(&conn.s2c(SYN | FIN), T0), Track::Invalid("tcp_bad_flags"));
        ct.track(&conn.s2c(SYN | ACK), T0);
        ct.track(&conn.c2s(ACK), T0);
        assert_eq!(ct.track(&conn.c2s(SYN | ACK), T0), Track::Invalid("tcp_unexpected_synack"));
        assert_eq!(ct.track(&conn.c2s(0), T0), Track::Invalid("tcp_bad_flags"));
        // Invalid segments do not move the state: the connection goes on.
        assert_eq!(ct.track(&conn.s2c(ACK), T0), est(true, 1));
    }

    #[test]
    fn tcp_reopen_on_syn() {
        let conn = Conn { client: A, server: B };
        let ct = table(10);
        ct.commit(&conn.c2s(SYN), T0, 1).unwrap();
        ct.track(&conn.s2c(SYN | ACK), T0);
        ct.track(&conn.c2s(ACK), T0);
        // A new connection on the same ports (the old one was never closed): policy decides
        // again, and committing it replaces the entry.
        assert_eq!(ct.track(&conn.c2s(SYN), T0 + 1), NEW);
        assert_eq!(ct.track(&conn.s2c(SYN), T0 + 1), NEW);
        ct.commit(&conn.s2c(SYN), T0 + 2, 9).unwrap();
        assert_eq!(ct.track(&conn.c2s(SYN | ACK), T0 + 3), est(true, 9));
        assert_eq!(ct.stats().entries, 1);
    }

    #[test]
    fn loose_pickup() {
        let conn = Conn { client: B, server: A };
        let ct = table(10);
        assert_eq!(ct.track(&conn.c2s(ACK | PSH), T0), LOOSE);
        ct.commit(&conn.c2s(ACK | PSH), T0, 4).unwrap();
        assert_eq!(ct.track(&conn.s2c(ACK), T0 + 1), est(true, 4));
        assert_eq!(ct.track(&conn.c2s(ACK), T0 + secs(3600)), est(false, 4));
        // Picked up on a FIN: that side is closing.
        let ct = table(10);
        ct.commit(&conn.s2c(FIN | ACK), T0, 5).unwrap();
        assert_eq!(ct.track(&conn.c2s(FIN | ACK), T0 + 1), est(true, 5));
        assert_eq!(ct.track(&conn.s2c(ACK), T0 + secs(11)), LOOSE);
    }

    /// Whether a flow committed from `pkt` at T0 still exists `after` nanoseconds.
    fn lives(timeouts: Timeouts, pkt: &Packet, after: u64) -> bool {
        let ct = ConnTrack::new(Config { capacity: 10, timeouts });
        ct.commit(pkt, T0, 1).unwrap();
        matches!(ct.track(pkt, T0 + after), Track::Established { .. })
    }

    #[test]
    fn timeouts_per_protocol() {
        let defaults = Timeouts::default();
        let custom = Timeouts {
            tcp_syn: Duration::from_secs(2),
            tcp_established: Duration::from_secs(3),
            tcp_fin: Duration::from_secs(4),
            tcp_close: Duration::from_secs(5),
            udp: Duration::from_secs(6),
            icmp: Duration::from_secs(7),
            other: Duration::from_secs(8),
            fragment: Duration::from_secs(9),
        };
        let conn = Conn { client: A, server: B };
        let sctp = Packet { sctp_chunk: Some(1), ..packet(A, 1, B, 2, palisade_policy::model::proto::SCTP) };
        let cases = [
            (conn.c2s(SYN), defaults.tcp_syn, custom.tcp_syn),
            (conn.c2s(ACK), defaults.tcp_established, custom.tcp_established),
            (packet(A, 1000, B, 53, UDP), defaults.udp, custom.udp),
            (echo(A, B, false, 1), defaults.icmp, custom.icmp),
            (packet(A, 0, B, 0, 47), defaults.other, custom.other),
            (sctp, defaults.other, custom.other),
        ];
        for (pkt, default, custom_timeout) in cases {
            for (timeouts, timeout) in [(defaults, default), (custom, custom_timeout)] {
                let t = u64::try_from(timeout.as_nanos()).unwrap();
                assert!(lives(timeouts, &pkt, t - 1), "{pkt:?} {timeout:?}");
                assert!(!lives(timeouts, &pkt, t), "{pkt:?} {timeout:?}");
            }
        }
        assert_eq!(
            [defaults.tcp_syn, defaults.tcp_established, defaults.tcp_fin, defaults.tcp_close, defaults.udp, defaults.icmp, defaults.other],
            [20, 3600, 10, 10, 60, 5, 60].map(Duration::from_secs)
        );
    }

    #[test]
    fn udp_both_directions() {
        let ct = table(10);
        let query = packet(A, 5000, B, 53, UDP);
        let answer = packet(B, 53, A, 5000, UDP);
        assert_eq!(ct.track(&answer, T0), NEW); // reply first: a new flow the other way
        assert_eq!(ct.track(&query, T0), NEW);
        ct.commit(&query, T0, 3).unwrap();
        assert_eq!(ct.track(&answer, T0 + 1), est(true, 3));
        assert_eq!(ct.track(&query, T0 + 2), est(false, 3));
        assert_eq!(ct.track(&packet(A, 5001, B, 53, UDP), T0), NEW);
        // The same addresses and ports, another protocol.
        assert_eq!(ct.track(&Packet { tcp_flags: ACK, ..packet(B, 53, A, 5000, TCP) }, T0), LOOSE);
    }

    #[test]
    fn icmp_echo() {
        let ct = table(10);
        assert_eq!(ct.track(&echo(B, A, true, 9), T0), Track::Invalid("echo_reply_without_flow"));
        assert_eq!(ct.track(&echo(A, B, false, 9), T0), NEW);
        ct.commit(&echo(A, B, false, 9), T0, 2).unwrap();
        assert_eq!(ct.track(&echo(B, A, true, 9), T0 + 1), est(true, 2));
        assert_eq!(ct.track(&echo(A, B, false, 9), T0 + 2), est(false, 2));
        // Another identifier, or a reply the wrong way, is no reply.
        assert_eq!(ct.track(&echo(B, A, true, 10), T0), Track::Invalid("echo_reply_without_flow"));
        assert_eq!(ct.track(&echo(A, B, true, 9), T0), Track::Invalid("echo_reply_without_flow"));
        // B pinging A with the same identifier is a flow of its own.
        assert_eq!(ct.track(&echo(B, A, false, 9), T0), NEW);
        assert_eq!(ct.track(&echo(B, A, true, 9), T0 + 2 + secs(5)), Track::Invalid("echo_reply_without_flow"));
    }

    #[test]
    fn icmpv6_echo() {
        let (a, b) = (IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1u16]), IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 2u16]));
        let request = Packet { icmp: Some((128, 0)), ..packet(a, 3, b, 3, PROTO_ICMPV6) };
        let reply = Packet { icmp: Some((129, 0)), ..packet(b, 3, a, 3, PROTO_ICMPV6) };
        let ct = table(10);
        assert_eq!(ct.track(&reply, T0), Track::Invalid("echo_reply_without_flow"));
        ct.commit(&request, T0, 6).unwrap();
        assert_eq!(ct.track(&reply, T0), est(true, 6));
    }

    #[test]
    fn icmp_errors_are_related_either_way() {
        let ct = table(10);
        let query = packet(A, 5000, B, 53, UDP);
        let answer = packet(B, 53, A, 5000, UDP);
        ct.commit(&query, T0, 3).unwrap();
        // About the query: from B itself or from a router on the way, back to A.
        assert_eq!(ct.track(&icmp_error(B, A, &query), T0), Track::Related { tag: 3 });
        assert_eq!(ct.track(&icmp_error(ROUTER, A, &query), T0), Track::Related { tag: 3 });
        // About the answer, back to B.
        assert_eq!(ct.track(&icmp_error(ROUTER, B, &answer), T0), Track::Related { tag: 3 });
        // Not back to the quoted packet's sender.
        assert_eq!(ct.track(&icmp_error(ROUTER, B, &query), T0), Track::Invalid("icmp_error_misdirected"));
        // About an unknown flow, or unreadable.
        assert_eq!(ct.track(&icmp_error(B, A, &packet(A, 5001, B, 53, UDP)), T0), Track::Invalid("icmp_error_without_flow"));
        let unreadable = Packet { inner: None, ..icmp_error(B, A, &query) };
        assert_eq!(ct.track(&unreadable, T0), Track::Invalid("icmp_error_without_flow"));
        // Errors about echo messages, either way.
        ct.commit(&echo(A, B, false, 4), T0, 8).unwrap();
        assert_eq!(ct.track(&icmp_error(ROUTER, A, &echo(A, B, false, 4)), T0), Track::Related { tag: 8 });
        assert_eq!(ct.track(&icmp_error(ROUTER, B, &echo(B, A, true, 4)), T0), Track::Related { tag: 8 });
        // An error does not keep its flow alive.
        assert_eq!(ct.track(&icmp_error(B, A, &query), T0 + secs(60)), Track::Invalid("icmp_error_without_flow"));
    }

    #[test]
    fn other_icmp_is_not_tracked() {
        let ct = table(10);
        let advert = Packet { icmp: Some((9, 0)), ..packet(ROUTER, 0, A, 0, PROTO_ICMP) };
        assert_eq!(ct.track(&advert, T0), NEW);
        ct.commit(&advert, T0, 1).unwrap();
        assert_eq!(ct.track(&advert, T0), NEW);
        assert_eq!(ct.stats().entries, 0);
    }

    fn fragment(pkt: Packet, fragment: Fragment) -> Packet {
        match fragment {
            Fragment::Later { .. } => Packet { fragment, src_port: 0, dst_port: 0, tcp_flags: 0, icmp: None, inner: None, ..pkt },
            _ => Packet { fragment, ..pkt },
        }
    }

    #[test]
    fn later_fragments_follow_the_first() {
        let ct = table(10);
        let query = packet(A, 5000, B, 53, UDP);
        let answer = packet(B, 53, A, 5000, UDP);
        let first = fragment(query, Fragment::First { id: 11 });
        assert_eq!(ct.track(&fragment(query, Fragment::Later { id: 11 }), T0), Track::Invalid("fragment_without_first"));
        assert_eq!(ct.track(&first, T0), NEW);
        ct.commit(&first, T0, 5).unwrap();
        assert_eq!(ct.stats().fragments, 1);
        assert_eq!(ct.track(&fragment(query, Fragment::Later { id: 11 }), T0 + 1), est(false, 5));
        assert_eq!(ct.track(&fragment(query, Fragment::Later { id: 12 }), T0 + 1), Track::Invalid("fragment_without_first"));
        assert_eq!(ct.track(&fragment(answer, Fragment::Later { id: 11 }), T0 + 1), Track::Invalid("fragment_without_first"));
        assert_eq!(ct.track(&fragment(query, Fragment::Later { id: 11 }), T0 + secs(30)), Track::Invalid("fragment_without_first"));
        // A fragmented answer on the established flow.
        assert_eq!(ct.track(&fragment(answer, Fragment::First { id: 40 }), T0 + 2), est(true, 5));
        assert_eq!(ct.track(&fragment(answer, Fragment::Later { id: 40 }), T0 + 3), est(true, 5));
        // A fragmented ICMP error about it.
        let error = fragment(icmp_error(ROUTER, A, &query), Fragment::First { id: 41 });
        assert_eq!(ct.track(&error, T0 + 4), Track::Related { tag: 5 });
        assert_eq!(ct.track(&fragment(error, Fragment::Later { id: 41 }), T0 + 5), Track::Related { tag: 5 });
        // A first fragment that policy denied (never committed): its followers are dropped.
        let denied = fragment(packet(A, 6000, B, 53, UDP), Fragment::First { id: 50 });
        assert_eq!(ct.track(&denied, T0), NEW);
        assert_eq!(ct.track(&fragment(denied, Fragment::Later { id: 50 }), T0), Track::Invalid("fragment_without_first"));
        // Untracked ICMP: the fragments still follow a committed first.
        let advert = fragment(Packet { icmp: Some((9, 0)), ..packet(ROUTER, 0, A, 0, PROTO_ICMP) }, Fragment::First { id: 60 });
        ct.commit(&advert, T0, 6).unwrap();
        assert_eq!(ct.track(&fragment(advert, Fragment::Later { id: 60 }), T0), est(false, 6));
    }

    #[test]
    fn capacity_eviction_and_full() {
        let ct = table(2);
        let flow = |port| packet(A, port, B, 53, UDP);
        let reply = |port| packet(B, 53, A, port, UDP);
        ct.commit(&flow(1), T0, 1).unwrap();
        ct.commit(&flow(2), T0 + secs(30), 2).unwrap();
        // Both flows answered: nothing to drop early.
        assert_eq!(ct.track(&reply(1), T0 + secs(1)), est(true, 1));
        assert_eq!(ct.track(&reply(2), T0 + secs(30)), est(true, 2));
        assert_eq!(ct.commit(&flow(3), T0 + secs(30), 3), Err(Full));
        assert_eq!(ct.track(&flow(3), T0 + secs(30)), NEW);
        // Replacing an entry needs no room.
        ct.commit(&flow(2), T0 + secs(30), 22).unwrap();
        assert_eq!(ct.stats(), CtStats { entries: 2, fragments: 0, evicted: 0, early_drops: 0, full_drops: 1, expired: 0 });
        // Once flow 1 has expired, it makes room.
        ct.commit(&flow(3), T0 + secs(61), 3).unwrap();
        assert_eq!(ct.stats(), CtStats { entries: 2, fragments: 0, evicted: 1, early_drops: 0, full_drops: 1, expired: 0 });
        assert_eq!(ct.track(&flow(2), T0 + secs(61)), est(false, 22));
        assert_eq!(ct.track(&reply(2), T0 + secs(61)), est(true, 22));
        // Flow 3 was never answered: a new flow takes its place while flow 2 stays.
        ct.commit(&flow(4), T0 + secs(61), 4).unwrap();
        assert_eq!(ct.stats().early_drops, 1);
        assert_eq!(ct.track(&flow(3), T0 + secs(61)), NEW);
        assert_eq!(ct.track(&flow(4), T0 + secs(61)), est(false, 4));
        assert_eq!(ct.track(&flow(2), T0 + secs(61)), est(false, 22));
        // The fragment table is bounded too.
        let first = |id| fragment(flow(2), Fragment::First { id });
        ct.track(&first(1), T0 + secs(61));
        ct.track(&first(2), T0 + secs(61));
        ct.track(&first(3), T0 + secs(61));
        assert_eq!(ct.track(&fragment(flow(2), Fragment::Later { id: 3 }), T0 + secs(61)), Track::Invalid("fragment_without_first"));
        assert_eq!(ct.stats().full_drops, 2);
        assert_eq!(ct.stats().fragments, 2);
    }

    #[test]
    fn a_flood_of_one_way_flows_replaces_itself_and_spares_answered_flows() {
        let ct = table(10_000);
        let flow = |i: u32| packet([10, 1, (i >> 8) as u8, i as u8], (i >> 16) as u16 + 1, B, 53, UDP);
        let answered: Vec<Packet> = (0..100).map(flow).collect();
        for (i, p) in answered.iter().enumerate() {
            ct.commit(p, T0, i as u32).unwrap();
            let reply = Packet { src: p.dst, dst: p.src, src_port: p.dst_port, dst_port: p.src_port, ..*p };
            assert_eq!(ct.track(&reply, T0), est(true, i as u32));
        }
        for i in 100..50_000 {
            ct.commit(&flow(i), T0 + secs(1), i).unwrap();
        }
        let stats = ct.stats();
        assert_eq!((stats.entries, stats.early_drops, stats.full_drops), (10_000, 40_000, 0));
        for (i, p) in answered.iter().enumerate() {
            assert_eq!(ct.track(p, T0 + secs(2)), est(false, i as u32));
        }
        assert_eq!(ct.track(&flow(49_999), T0 + secs(2)), est(false, 49_999));
    }

    #[test]
    fn expire_and_clear() {
        let ct = table(10);
        ct.commit(&echo(A, B, false, 1), T0, 1).unwrap();
        ct.commit(&packet(A, 1, B, 2, UDP), T0, 1).unwrap();
        ct.commit(&Conn { client: A, server: B }.c2s(ACK), T0, 1).unwrap();
        ct.commit(&fragment(packet(A, 3, B, 4, UDP), Fragment::First { id: 1 }), T0, 1).unwrap();
        assert_eq!(ct.stats().entries, 4);
        assert_eq!(ct.expire(T0 + secs(5)), 1); // echo
        assert_eq!(ct.expire(T0 + secs(60)), 3); // UDP flows and the fragment
        assert_eq!(ct.stats(), CtStats { entries: 1, fragments: 0, evicted: 0, early_drops: 0, full_drops: 0, expired: 4 });
        // Found expired by a lookup.
        assert_eq!(ct.track(&Conn { client: A, server: B }.c2s(ACK), T0 + secs(3600)), LOOSE);
        assert_eq!(ct.stats().expired, 5);
        assert_eq!(ct.stats().entries, 0);
        ct.commit(&packet(A, 1, B, 2, UDP), T0, 1).unwrap();
        ct.commit(&fragment(packet(A, 3, B, 4, UDP), Fragment::First { id: 1 }), T0, 1).unwrap();
        ct.clear();
        assert_eq!((ct.stats().entries, ct.stats().fragments), (0, 0));
        assert_eq!(ct.track(&packet(B, 2, A, 1, UDP), T0), NEW);
    }

    #[test]
    fn concurrent_workers() {
        let ct = Arc::new(table(100_000));
        let (done, finished) = mpsc::channel();
        for worker in 0..2u16 {
            let (ct, done) = (Arc::clone(&ct), done.clone());
            std::thread::spawn(move || {
                for i in 0..20_000u16 {
                    let port = i % 2000;
                    let conn = Conn { client: A, server: B };
                    let (syn, synack) = (Packet { src_port: port, ..conn.c2s(SYN) }, Packet { dst_port: port, ..conn.s2c(SYN | ACK) });
                    // Both workers open and answer the same flows, in opposite orders.
                    let (first, second) = if worker == 0 { (syn, synack) } else { (synack, syn) };
                    let now = T0 + u64::from(i);
                    for pkt in [first, second] {
                        if ct.track(&pkt, now) == NEW {
                            ct.commit(&pkt, now, u32::from(worker)).unwrap();
                        }
                    }
                    let quoted = Packet { src_port: port, ..conn.c2s(ACK) };
                    ct.track(&icmp_error(ROUTER, A, &quoted), now);
                    if i % 1000 == 0 {
                        ct.expire(now);
                        ct.stats();
                    }
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..2 {
            finished.recv_timeout(std::time::Duration::from_secs(60)).expect("a worker is stuck");
        }
        assert_eq!(ct.stats().entries, ct.conns.map.len());
        assert_eq!(ct.stats().entries, 2000);
    }
}
