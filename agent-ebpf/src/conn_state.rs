//! `conn_state`: tp_btf `inet_sock_set_state` (include/trace/events/sock.h, fired by
//! `tcp_set_state`, 4.16+; 5.5+ as tp_btf). The node's own TCP requests to pods (kubelet
//! probes) are answered here, where the node's socket takes the answer: SYN_SENT ->
//! ESTABLISHED (the SYN-ACK reached it) or -> CLOSE with ECONNREFUSED (a RST or ICMP port
//! unreachable did). A SYN-ACK that crossed the pod's host veth has not: a strict pod's
//! answer leaves by its VLAN and comes back through the VPC to the node ENI, where the
//! VPC or `tcp_early_demux` can lose it (see `conns`).
//!
//! Fires per TCP state change, never per packet; only a node socket leaving SYN_SENT gets
//! past the first compares.

use crate::{conns, skb};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sgpath_ebpf::packet::TCP_SYN_SENT;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn conn_state(ctx: BtfTracePointContext) -> i32 {
    let old: i32 = ctx.arg(1);
    if old != TCP_SYN_SENT as i32 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() || !skb::sock_is_tcp(sk) || skb::sock_netns(sk) != Some(skb::node_netns()) {
        return 0;
    }
    let new: i32 = ctx.arg(2);
    conns::socket_answer(sk, new);
    0
}
