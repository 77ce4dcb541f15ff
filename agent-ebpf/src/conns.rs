//! Unanswered connections: SYNs and DNS queries that leave a path, matched with their
//! answers in `CONNS`. Userspace sweeps the map: an entry older than `--syn-timeout`
//! without an answer is an unanswered connection, counted once; retransmits find their
//! entry and are not new ones.
//!
//! | packet                    | where                          | entry                         |
//! |---------------------------|--------------------------------|-------------------------------|
//! | request from a pod        | its host veth, receive         | `path` = its path, `FromPod`  |
//! | request from the node     | any transmit, with a socket    | `path` = dest's path, `ToPod` |
//! | SYN handed to a pod       | its host veth, transmit        | `in_path` = its path          |
//! | answer (SYN-ACK, DNS)     | a host veth, either way        | `answered` = accepted         |
//! | refusal (RST, ICMP)       | a host veth, either way        | `answered` = refused          |
//! | node's TCP request answered | its socket leaves SYN_SENT   | `answered` = accepted/refused |
//!
//! The node's own TCP requests to a pod (kubelet probes) are answered only where the node
//! takes the answer: its socket leaving SYN_SENT (`conn_state`, on `inet_sock_set_state`),
//! never on the pod's host veth. A strict pod's SYN-ACK crosses its veth on its way out by
//! the VLAN; it still has to cross the VPC and come back in on the node ENI, where the
//! VPC's groups or `tcp_early_demux` can lose it. The socket costs nothing per packet: it
//! changes state once or twice per connection.
//!
//! On a host veth only packets with the veth's own pod address get here (see
//! `walk`), so a pod can neither open nor answer its neighbour's connections.
//!
//! A plain hash, not an LRU: an LRU would silently evict the oldest entries, which are
//! exactly the unanswered connections this is for. A full map is counted instead.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::HashMap};
use sgpath_ebpf::{
    ConnState, MAX_CONNS, NO_PATH, ProgError,
    packet::{self, Answer, ConnKey, ConnKind, IpHeader, L4, PROTO_TCP, Signal, Site},
};

use crate::{errors::bump_error, pods, skb};

/// BPF_NOEXIST: the first CPU to insert wins; the others update.
const NOEXIST: u64 = 1;

#[map]
static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNS, 0);

/// Tracks what `ip` with transport header `l4` says, if it opens, answers or refuses a
/// connection ([`L4::signal`]). `veth_path`: the path of the
/// host veth the packet crossed, its pod's address checked; [`NO_PATH`] on an uplink.
//
// Out of line: its own stack frame (LLVM does not share stack slots between inlined
// bodies, and the BPF stack is 512 bytes). Five arguments at most: BPF passes no more.
#[inline(never)]
pub fn track(skb: *const u8, site: Site, veth_path: u32, ip: &IpHeader, l4: &L4) {
    let Some(signal) = l4.signal() else { return };
    let veth_path = (veth_path != NO_PATH).then_some(veth_path);
    let answer = match signal {
        Signal::Request(kind) => return request(skb, site, veth_path, ip, l4, kind),
        // Answers count on a host veth only: on the uplink they are not yet through.
        _ if site == Site::UplinkTransmit => return,
        Signal::Answer => Answer::Accepted,
        Signal::Refused => Answer::Refused,
    };
    let key = ConnKey::of_answer(ip, l4);
    if let Some(st) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a map value; racing CPUs store the same byte. The first answer stands: a
        // RST closing an accepted connection does not make it refused.
        unsafe {
            if (*st).answered == Answer::None as u8
                && packet::veth_answer_counts(key.proto, (*st).path, (*st).direction)
            {
                (*st).answered = answer as u8;
            }
        }
    }
}

/// The node's socket `sk` left SYN_SENT for `new`: answers its connection's entry, if the
/// node's request to a pod opened one ([`packet::node_socket_answer`]). Out of line: the
/// key is built on its own stack frame.
#[inline(never)]
pub fn socket_answer(sk: *const u8, new: i32) {
    let Some(answer) = packet::node_socket_answer(TCP_SYN_SENT_I32, new, skb::sock_err(sk)) else {
        return;
    };
    let Some(key) = skb::sock_conn(sk) else {
        return;
    };
    if let Some(st) = CONNS.get_ptr_mut(&key) {
        // SAFETY: as in `track`.
        unsafe {
            if (*st).answered == Answer::None as u8 {
                (*st).answered = answer as u8;
            }
        }
    }
}

const TCP_SYN_SENT_I32: i32 = packet::TCP_SYN_SENT as i32;

#[inline(always)]
fn request(
    skb: *const u8,
    site: Site,
    veth_path: Option<u32>,
    ip: &IpHeader,
    l4: &L4,
    kind: ConnKind,
) {
    // Whose request, and is it handed to a pod here? The destination's path is looked up
    // only on an uplink (a veth's pod is known).
    let dst_path = if veth_path.is_none() {
        pods::path_of(&ip.dst)
    } else {
        None
    };
    let owner = packet::request_owner(
        site,
        veth_path,
        dst_path,
        skb::has_socket(skb),
        l4.proto == PROTO_TCP,
    );
    let (path, direction, in_path) = (owner.path, owner.direction, owner.in_path);
    if path.is_none() && in_path.is_none() {
        return;
    }
    let key = ConnKey::of_request(ip, l4);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(st) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a map value; racing CPUs write the same values.
        let st = unsafe { &mut *st };
        st.last_ns = now;
        if let (Some(p), NO_PATH) = (path, st.path) {
            st.path = p;
            st.direction = direction as u8;
        }
        if let (Some(p), NO_PATH) = (in_path, st.in_path) {
            st.in_path = p;
        }
        return;
    }
    let st = ConnState {
        path: path.unwrap_or(NO_PATH),
        in_path: in_path.unwrap_or(NO_PATH),
        kind: kind as u8,
        direction: direction as u8,
        answered: Answer::None as u8,
        _pad: [0; 5],
        first_ns: now,
        last_ns: now,
    };
    if CONNS.insert(&key, &st, NOEXIST).is_err() && CONNS.get_ptr_mut(&key).is_none() {
        bump_error(ProgError::ConnMapFull);
    }
}
