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
// - Uplinks and host interfaces (MODE_OWNED): only packets whose destination is an address the
//   dataplane owns (a local endpoint) go to the socket; the rest is the host's own traffic.
// - A queue without a socket drops the packet (fail closed) and counts it.
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
	__type(value, __u8);
} owned_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct lpm_v6);
	__type(value, __u8);
} owned_v6 SEC(".maps");

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

	__u32 queue = ctx->rx_queue_index;
	if (queue >= cfg->queues)
		return count(C_DROP_NO_SOCKET, XDP_DROP);
	__u32 slot = cfg->slot_base + queue;
	if (!bpf_map_lookup_elem(&sockets, &slot))
		return count(C_DROP_NO_SOCKET, XDP_DROP);
	count(C_REDIRECTED, 0);
	return bpf_redirect_map(&sockets, slot, XDP_DROP);
}

// Dual-licensed: the kernel needs to know it may be used under the GPL.
char LICENSE[] SEC("license") = "GPL";
