// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Palisade's XDP redirector. It makes one decision per packet, no policy: hand the packet to the
// AF_XDP socket of its RX queue (userspace filters and forwards it), or give it to the kernel.
//
// - Interfaces the dataplane has not configured: XDP_PASS (the program is only attached to
//   interfaces it configures, so this is a transient state during start-up).
// - ARP, IPv6 neighbour discovery and any non-IP frame: XDP_PASS, so the node's kernel answers
//   (proxy) ARP and ND as on a Calico node.
// - Workload interfaces (MODE_ALL): every other IPv4/IPv6 packet goes to the socket.
// - Uplinks (MODE_OWNED): only packets whose destination is an address the dataplane owns (a
//   local endpoint) go to the socket; the rest is the host's own traffic.
// - Host endpoints (MODE_HOST): TCP and UDP packets of a flow that userspace has admitted (an
//   entry in `host_flows`) go to the kernel, except TCP SYN, FIN and RST, which userspace tracks;
//   every other packet goes to the socket, and userspace decides and reinjects it. Workload
//   interfaces do the same for the flows between a pod and the host itself.
// - A queue without a socket drops the packet (fail closed) and counts it.
//
// Host endpoints also get `palisade_host_egress` on TC egress (tcx): packets the host sends out of
// the interface pass if their flow is admitted the same way; the others are redirected to the
// interface's TAP device, where userspace reads, decides and sends them (marked, so they pass).
// Userspace reinjects the arriving packets it allows by writing them to the same TAP device;
// `palisade_tap_ingress` redirects them into the host endpoint's own ingress path, so the stack
// sees them arrive on the real interface (reverse-path filtering, sockets bound to it, nftables).
// Workload interfaces get the egress program too (the host's own packets to a pod go to the
// workloads' shared TAP) and share one TAP for reinjection, into the interface of the pod whose
// address is the packet's source (the owned-address tries hold each endpoint's ifindex).
//
// Counters are per-CPU; userspace sums them.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MODE_ALL 1
#define MODE_OWNED 2
#define MODE_HOST 3

// The mark userspace puts on the packets it sends out of a host endpoint itself.
#define PALISADE_MARK 0x50a15ade

// tcx return codes (linux/bpf.h of kernels before 6.6 lacks them).
#define TCX_PASS 0
#define TCX_DROP 2

#define TCP_FLAGS_SLOW 0x07 // FIN, SYN, RST

// Counter indices: keep in step with `Counter` in lib.rs.
enum {
	C_RX = 0,
	C_REDIRECTED,
	C_PASS_NOT_IP,
	C_PASS_NEIGHBOUR,
	C_PASS_NOT_OWNED,
	C_PASS_UNCONFIGURED,
	C_DROP_NO_SOCKET,
	C_DROP_TRUNCATED,
	C_PASS_HOST_FLOW,
	C_EGRESS_PASS_FLOW,
	C_EGRESS_TO_TAP,
	C_EGRESS_PASS_OTHER,
	C_EGRESS_DROP_NO_TAP,
	C_REINJECTED,
	C_REINJECT_DROP,
	C_MAX,
};

struct iface_config {
	__u32 slot_base; // the XSKMAP slot of RX queue 0 of this interface
	__u32 queues;    // number of slots from slot_base
	__u32 mode;      // MODE_ALL or MODE_OWNED
};

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr;
};

struct lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // ifindex
	__type(value, struct iface_config);
} interfaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct lpm_v4);
	__type(value, __u32); // the ifindex of the local endpoint's interface
} owned_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct lpm_v6);
	__type(value, __u32);
} owned_v6 SEC(".maps");

// A flow as it crosses a host endpoint one way. Keep in step with `FlowKey` in lib.rs.
struct flow_key {
	__u32 ifindex;
	__u8 egress; // 0: arriving through the interface, 1: leaving through it
	__u8 family; // 4 or 6
	__u8 proto;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__u8 src[16]; // IPv4: the first 4 bytes
	__u8 dst[16];
};

struct flow_val {
	__u64 seen; // bpf_ktime_get_ns() of the last packet let through here
	__u64 packets;
	__u64 tag; // userspace's: 0 for tracked flows, else the revision that admitted the packet
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} host_flows SEC(".maps");

// Host endpoint ifindex -> its TAP device's ifindex.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} host_taps SEC(".maps");

// TAP device ifindex -> its host endpoint's ifindex.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} tap_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 idx, int action)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
	return action;
}

// Whether the IPv4/IPv6 packet at `l3` belongs to an admitted flow and may skip userspace; bumps
// the flow's last-seen time when it does.
static __always_inline int admitted(void *l3, void *end, __u16 proto, __u32 ifindex, __u8 egress)
{
	struct flow_key key = {.ifindex = ifindex, .egress = egress};
	void *l4;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		if (ip->frag_off & bpf_htons(0x3fff)) // a fragment: userspace reassembles the verdict
			return 0;
		key.family = 4;
		key.proto = ip->protocol;
		__builtin_memcpy(key.src, &ip->saddr, 4);
		__builtin_memcpy(key.dst, &ip->daddr, 4);
		l4 = l3 + ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return 0;
		key.family = 6;
		key.proto = ip6->nexthdr; // extension headers: not TCP/UDP here, so userspace
		__builtin_memcpy(key.src, &ip6->saddr, 16);
		__builtin_memcpy(key.dst, &ip6->daddr, 16);
		l4 = ip6 + 1;
	}
	if (key.proto == IPPROTO_TCP) {
		__u8 *th = l4;
		if ((void *)(th + 14) > end || (th[13] & TCP_FLAGS_SLOW))
			return 0;
	} else if (key.proto != IPPROTO_UDP) {
		return 0;
	}
	__be16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return 0;
	key.sport = ports[0];
	key.dport = ports[1];
	struct flow_val *v = bpf_map_lookup_elem(&host_flows, &key);
	if (!v)
		return 0;
	v->seen = bpf_ktime_get_ns();
	v->packets += 1;
	return 1;
}

SEC("xdp")
int palisade_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;

	count(C_RX, 0);
	struct iface_config *cfg = bpf_map_lookup_elem(&interfaces, &ifindex);
	if (!cfg)
		return count(C_PASS_UNCONFIGURED, XDP_PASS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(C_DROP_TRUNCATED, XDP_DROP);
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		// One 802.1Q tag: 2 bytes TCI, 2 bytes inner ethertype.
		if (l3 + 4 > end)
			return count(C_DROP_TRUNCATED, XDP_DROP);
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}

	int owned = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return count(C_DROP_TRUNCATED, XDP_DROP);
		if (cfg->mode == MODE_OWNED) {
			struct lpm_v4 key = {.prefixlen = 32, .addr = ip->daddr};
			owned = bpf_map_lookup_elem(&owned_v4, &key) != 0;
		}
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return count(C_DROP_TRUNCATED, XDP_DROP);
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
			if ((void *)(icmp6 + 1) > end)
				return count(C_DROP_TRUNCATED, XDP_DROP);
			// Router/neighbour solicitation and advertisement, redirect: the kernel's business.
			if (icmp6->icmp6_type >= 133 && icmp6->icmp6_type <= 137)
				return count(C_PASS_NEIGHBOUR, XDP_PASS);
		}
		if (cfg->mode == MODE_OWNED) {
			struct lpm_v6 key = {.prefixlen = 128};
			__builtin_memcpy(key.addr, &ip6->daddr, 16);
			owned = bpf_map_lookup_elem(&owned_v6, &key) != 0;
		}
	} else {
		return count(C_PASS_NOT_IP, XDP_PASS);
	}

	if (cfg->mode == MODE_OWNED && !owned)
		return count(C_PASS_NOT_OWNED, XDP_PASS);
	// Host endpoints' admitted flows, and on workload interfaces the admitted flows between the
	// pod and the host itself, go to the kernel.
	if (cfg->mode != MODE_OWNED && admitted(l3, end, proto, ifindex, 0))
		return count(C_PASS_HOST_FLOW, XDP_PASS);

	__u32 queue = ctx->rx_queue_index;
	if (queue >= cfg->queues)
		return count(C_DROP_NO_SOCKET, XDP_DROP);
	__u32 slot = cfg->slot_base + queue;
	if (!bpf_map_lookup_elem(&sockets, &slot))
		return count(C_DROP_NO_SOCKET, XDP_DROP);
	count(C_REDIRECTED, 0);
	return bpf_redirect_map(&sockets, slot, XDP_DROP);
}

SEC("tcx/egress")
int palisade_host_egress(struct __sk_buff *skb)
{
	if (skb->mark == PALISADE_MARK)
		return TCX_PASS;
	__u32 ifindex = skb->ifindex;
	struct iface_config *cfg = bpf_map_lookup_elem(&interfaces, &ifindex);
	if (!cfg || cfg->mode == MODE_OWNED)
		return TCX_PASS;
	// Headers a host builds are in the linear part; pull them in if not.
	bpf_skb_pull_data(skb, 14 + 40 + 20);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(C_EGRESS_PASS_OTHER, TCX_PASS);
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return count(C_EGRESS_PASS_OTHER, TCX_PASS);
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
			if ((void *)(icmp6 + 1) <= end && icmp6->icmp6_type >= 133 && icmp6->icmp6_type <= 137)
				return count(C_EGRESS_PASS_OTHER, TCX_PASS);
		}
	} else if (proto != bpf_htons(ETH_P_IP)) {
		return count(C_EGRESS_PASS_OTHER, TCX_PASS);
	}
	if (admitted(l3, end, proto, ifindex, 1))
		return count(C_EGRESS_PASS_FLOW, TCX_PASS);
	__u32 *tap = bpf_map_lookup_elem(&host_taps, &ifindex);
	if (!tap)
		return count(C_EGRESS_DROP_NO_TAP, TCX_DROP);
	count(C_EGRESS_TO_TAP, 0);
	return bpf_redirect(*tap, 0);
}

SEC("tcx/ingress")
int palisade_tap_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	__u32 *target = bpf_map_lookup_elem(&tap_targets, &ifindex);
	if (!target) {
		// The workloads' shared TAP: into the interface of the endpoint that sent the packet.
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end)
			return count(C_REINJECT_DROP, TCX_DROP);
		if (eth->h_proto == bpf_htons(ETH_P_IP)) {
			struct iphdr *ip = (void *)(eth + 1);
			if ((void *)(ip + 1) > end)
				return count(C_REINJECT_DROP, TCX_DROP);
			struct lpm_v4 key = {.prefixlen = 32, .addr = ip->saddr};
			target = bpf_map_lookup_elem(&owned_v4, &key);
		} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
			struct ipv6hdr *ip6 = (void *)(eth + 1);
			if ((void *)(ip6 + 1) > end)
				return count(C_REINJECT_DROP, TCX_DROP);
			struct lpm_v6 key = {.prefixlen = 128};
			__builtin_memcpy(key.addr, &ip6->saddr, 16);
			target = bpf_map_lookup_elem(&owned_v6, &key);
		}
		if (!target)
			return count(C_REINJECT_DROP, TCX_DROP);
	}
	count(C_REINJECTED, 0);
	return bpf_redirect(*target, BPF_F_INGRESS);
}

// Dual-licensed: the kernel needs to know it may be used under the GPL.
char LICENSE[] SEC("license") = "GPL";
