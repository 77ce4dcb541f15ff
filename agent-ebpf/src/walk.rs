//! The packet's walk: what `path_rx` and `path_tx` do with a packet on an interface of the
//! node's namespace. The only module that calls the others ([`pods`], [`counters`],
//! [`conns`]); they are leaves. The decisions are plain functions of `sgpath_ebpf::packet`,
//! unit-tested on the host.
//!
//! `IFACES` (kept by userspace, an array by ifindex) says what the interface is. Another
//! namespace's packets leave at the namespace compare, before any map or packet read.
//!
//! | interface | receive (`path_rx`)                  | transmit (`path_tx`)              |
//! |-----------|--------------------------------------|-----------------------------------|
//! | host veth | `from_pod` of the veth's path        | `to_pod` of the veth's path       |
//! | uplink    | -                                    | `left_via` of the source's path   |
//!
//! A host veth counts a packet only with its pod's address on the pod's side (source on
//! receive, destination on transmit, [`packet::attribute`]): a pod sending with a
//! neighbour's address counts as `foreign` on its own path and touches nothing else. A veth
//! whose pod address is not known yet (an unset `PATH_PODS` slot) counts its packets as
//! forwarded and none as foreign, and opens or answers no connection.
//! Link-local chatter counts nowhere. SYNs, SYN-ACKs, RSTs and DNS packets also go to
//! [`conns`].

use sgpath_ebpf::{
    NO_PATH,
    packet::{self, Attribution, Direction, Hook, Site},
};

use crate::{
    conns, counters, pods,
    skb::{self, Mode, Probe},
};

/// Whether `dev` is an interface of the node's namespace: ifindexes repeat across
/// namespaces, only the node's own interfaces count. Three loads and a compare, inlined into
/// each program before its call to [`observe`]: a pod's own packets and every other
/// namespace's leave here, before any map.
#[inline(always)]
pub fn in_node(dev: *const u8) -> bool {
    !dev.is_null() && skb::netns(dev) == Some(skb::node_netns())
}

/// [`observe`] with headers copied by a helper read (5.10, 6.1). Out of line: one body for
/// both tracepoints, in its own stack frame with the copied bytes (5.10 counts frames
/// generously against the 512-byte stack).
#[inline(never)]
pub fn observe_copied(skb: *const u8, dev: *const u8, hook: Hook) {
    observe::<Probe>(skb, dev, hook)
}

/// Counts a packet on `dev`, an interface of the node's namespace ([`in_node`]), reading
/// its headers the `M` way. Inlined into the typed programs: no copy on their stack, and no
/// call on their path.
#[inline(always)]
pub fn observe<M: Mode>(skb: *const u8, dev: *const u8, hook: Hook) {
    let ifindex = skb::ifindex(dev);
    // An array lookup: the verifier inlines it (no helper call).
    let Some(iface) = pods::iface(ifindex) else {
        return;
    };
    let Some(site) = packet::site(hook, iface.role) else {
        return;
    };
    // The node's own packet on an uplink matters only as a request to a pod through the VPC
    // (a kubelet probe of a strict-mode branch pod): its socket says whether it can be one,
    // before the packet is read.
    if site == Site::UplinkTransmit {
        let sk = skb::socket(skb);
        if !sk.is_null() && !skb::may_request(sk) {
            return;
        }
    }
    if !skb::is_ip(skb) {
        return;
    }
    let at = match hook {
        // On receive the stack has not set the network header yet: the IP header is at data.
        Hook::Receive => skb::data(skb),
        Hook::Transmit => skb::network_header(skb),
    };
    let Some(h) = M::headers(at) else { return };
    walk::<M>(skb, ifindex, iface.path, site, &h);
}

/// What [`observe`] does once the headers are at hand: the IP header's addresses and length
/// for every packet, the transport header only for the packets `conns` can use.
#[inline(always)]
fn walk<M: Mode>(skb: *const u8, ifindex: u32, veth_path: u32, site: Site, h: &M::H) {
    let Some(ip) = packet::parse_ip(h) else {
        return;
    };
    // The path whose pod sent or gets the packet: the veth's, once its address checks out.
    let path = match site {
        Site::VethReceive | Site::VethTransmit => {
            let from_pod = site == Site::VethReceive;
            let Some(pod) = pods::pod_of(veth_path) else {
                return;
            };
            let dir = if from_pod {
                Direction::FromPod
            } else {
                Direction::ToPod
            };
            match packet::attribute(from_pod, pod, &ip) {
                Attribution::Own => {
                    counters::forwarded(skb::segments::<M>(skb), veth_path, dir, ip.len);
                    Some(veth_path)
                }
                Attribution::Foreign => {
                    counters::foreign(skb::segments::<M>(skb), veth_path, &ip.src);
                    return;
                }
                // The pod's address is not known yet: its packets are counted, but nothing
                // says whose they are, so no connection is opened or answered with them.
                Attribution::Unverified => {
                    counters::forwarded(skb::segments::<M>(skb), veth_path, dir, ip.len);
                    return;
                }
                Attribution::Ignore => return,
            }
        }
        Site::UplinkTransmit => {
            // A pod's packet leaving: forwarded, so without a socket. The node's own (with
            // its socket) only matters as a request to a pod through the VPC (a kubelet
            // probe of a strict-mode branch pod), which `conns` looks at.
            if !skb::has_socket(skb) {
                if let Some(path) = pods::path_of(&ip.src) {
                    counters::left_via(path, ifindex, skb::segments::<M>(skb));
                }
            }
            None
        }
    };
    if ip.proto == 0 {
        return;
    }
    if let Some(l4) = packet::transport(h, &ip) {
        conns::track(skb, site, path.unwrap_or(NO_PATH), &ip, &l4);
    }
}
