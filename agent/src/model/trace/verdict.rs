//! The verdict: whose security groups decide the flow, whether the answer comes back the
//! way the request went, and what happens to it, as sentences an operator reads.

use std::net::IpAddr;

use super::{Deciders, Egress, Leg, Proto, Request, Trace, deciders_of, leaves_node, lost_in_vpc};
use crate::model::{
    EnforcingMode, Node, Sysctls, Topology,
    eni::{Eni, EniKind},
};

/// Put the trace together and say what it means.
pub fn explain(
    node: &Node,
    topo: &Topology,
    req: &Request<'_>,
    forward: Leg,
    reply: Vec<Leg>,
) -> Trace {
    let Request {
        from,
        to,
        proto,
        port,
    } = *req;
    let dev = forward.egress.clone().unwrap_or_default();
    let lost = lost_in_vpc(node, topo, &forward, to);
    // The VPC routes the flow back into this node when its target lives here.
    let receiver = if !leaves_node(&forward) || forward.vpc_drop.is_some() || lost {
        None
    } else if let Some(p) = topo.paths.iter().find(|p| p.pod_ip == Some(to)) {
        Some(deciders_of(p.kind))
    } else {
        node.has_address(to).then_some(Deciders::NodeEni)
    };
    let sender = match forward.egress_kind {
        Egress::BranchVlan => {
            let v = topo.vlan_links.iter().find(|v| v.name == dev);
            let trunk = v
                .and_then(|v| v.trunk.clone())
                .unwrap_or_else(|| "?".into());
            let vlan = v.map_or(0, |v| v.vlan_id);
            format!("The security groups of the branch ENI on VLAN {vlan} ({dev}, trunk {trunk})")
        }
        _ => format!("The security groups of the node ENI {dev}"),
    };
    let (security_groups, decided_by) = match forward.egress_kind {
        Egress::BranchVlan | Egress::NodeEni if forward.vpc_drop.is_some() => (
            Deciders::None,
            "No security group: the VPC drops the packet by its source/destination check before any group sees it.".to_string(),
        ),
        kind @ (Egress::BranchVlan | Egress::NodeEni) => {
            let ours = if kind == Egress::BranchVlan {
                Deciders::BranchEni
            } else {
                Deciders::NodeEni
            };
            let text = match receiver {
                Some(Deciders::BranchEni) => format!(
                    "{sender} decide what leaves, and the target's branch ENI's inbound rules decide what comes in."
                ),
                Some(Deciders::NodeEni) => format!(
                    "{sender} decide what leaves, and the node ENI's inbound rules decide what comes in."
                ),
                _ => format!("{sender} decide."),
            };
            (ours, text)
        }
        Egress::PodVeth | Egress::Local => (
            Deciders::None,
            "No security group: the flow stays on the node.".to_string(),
        ),
        Egress::Refused => (
            Deciders::None,
            "No security group: the node drops the packet before it reaches an ENI.".to_string(),
        ),
    };
    let veth = from.host_veth.as_str();
    let last = reply.last();
    let same_path = last
        .map(|r| r.error.is_none() && r.vpc_drop.is_none() && r.egress.as_deref() == Some(veth));
    let hairpin = reply.len() > 1;
    let (works, verdict) = if let Some(e) = &forward.error {
        let why = forward.why.clone().unwrap_or_default();
        (
            false,
            format!("The node refuses the pod's packet with {e}. {why}"),
        )
    } else if let Some(eni) = &forward.vpc_drop {
        (
            false,
            format!(
                "The pod's packet goes no further: {}",
                vpc_drop_text(topo, eni, forward.src)
            ),
        )
    } else if lost {
        (
            false,
            format!(
                "The packet never reaches {to}: {to} is an address only this node has, but the pod's packet leaves through {dev}, and the VPC does not bring it back."
            ),
        )
    } else if let Some(r) = last {
        if let Some(e) = &r.error {
            let answer = r
                .ingress
                .as_deref()
                .map_or("its own answer".to_string(), |i| {
                    format!("the answer coming in on {i}")
                });
            let why = r.why.clone().unwrap_or_default();
            (
                false,
                format!("The packet reaches {to}, but the node refuses {answer} with {e}. {why}"),
            )
        } else if let Some(eni) = &r.vpc_drop {
            (
                false,
                format!(
                    "The packet reaches {to}, but the answer goes no further: {}",
                    vpc_drop_text(topo, eni, r.src)
                ),
            )
        } else if same_path == Some(true) && hairpin {
            let out = reply[0].egress.as_deref().unwrap_or("?");
            let back = r.ingress.as_deref().unwrap_or("?");
            (
                true,
                format!(
                    "The packet reaches {to}; the answer leaves by {out}, hairpins through the VPC and comes back in through {back} to {veth}."
                ),
            )
        } else if same_path == Some(true) {
            (
                true,
                format!(
                    "The packet reaches {to}, and the answer comes back the same way to {veth}."
                ),
            )
        } else {
            (
                false,
                format!(
                    "The packet reaches {to}, but the answer leaves through {} instead of going back to {veth}.",
                    r.egress.as_deref().unwrap_or("?")
                ),
            )
        }
    } else {
        (
            true,
            format!("The packet leaves through {dev}; sgpath has no answer to follow."),
        )
    };
    // What the `tcp-early-demux-enabled` check warns of, the same way: a strict pod's TCP
    // packets to the node (the answer to a kubelet probe) arrive on its host veth, and early
    // demux hands them to the node's socket by the route cached from the connection's first
    // packet instead of the strict path through the VLAN: dropped (VPC CNI PR #1212).
    let early_demux = proto == Proto::Tcp
        && from.mode == Some(EnforcingMode::Strict)
        && node.has_address(to)
        && node.sysctls.get(Sysctls::TCP_EARLY_DEMUX) == Some(1);
    let (works, verdict) = if works && early_demux {
        (
            false,
            format!(
                "The pod's TCP packets to {to} die on the node: they arrive on {veth}, and with \
                 net.ipv4.tcp_early_demux = 1 the kernel hands them to the node's socket by the \
                 route cached from the connection's first packet, not by the pod's strict path \
                 through {dev} (VPC CNI PR #1212); kubelet probes to this pod fail. Fix: \
                 DISABLE_TCP_EARLY_DEMUX=true on aws-node's aws-vpc-cni-init \
                 (finding tcp-early-demux-enabled)."
            ),
        )
    } else {
        (works, verdict)
    };
    Trace {
        schema: "sgpath.trace/v1",
        from: from.clone(),
        to,
        proto,
        port,
        forward,
        security_groups,
        receiver_security_groups: receiver,
        decided_by,
        reply,
        same_path,
        works,
        verdict,
    }
}

/// The VPC's source/destination check, as a clause ending in a full stop.
fn vpc_drop_text(topo: &Topology, eni: &Eni, src: Option<IpAddr>) -> String {
    let src = src.map_or("?".to_string(), |s| s.to_string());
    // The CNI SNATs pod traffic leaving a node ENI for outside the VPC (AWS-SNAT-CHAIN),
    // which sgpath does not read.
    let snat = eni.kind == EniKind::Node
        && topo
            .paths
            .iter()
            .any(|p| p.pod_ip.is_some_and(|i| i.to_string() == src));
    let mut s = format!(
        "it leaves by {}, {}; its source {src} is not one of them, so the VPC's source/destination check drops it",
        eni.describe(),
        eni.owned()
    );
    if snat {
        s += ", unless the CNI's SNAT rewrites the source to the node's address, as it does for destinations outside the VPC";
    }
    s.push('.');
    s
}
