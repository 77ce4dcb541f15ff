//! `sgpath trace`: which rule, table, route and interface a pod's packet takes, which
//! security groups decide it, and whether the answer comes back the same way. Pure: the
//! kernel's answers (`ip route get`) come in as [`Answer`]s; when the kernel refuses, the
//! node's own rules and routes say which rule selected the route and why it was refused
//! ([`fib`]); the VPC's source/destination check comes from which ENI owns which address
//! ([`eni`]).
//!
//! One file per part of the walk: [`run`] here asks for the forward leg and follows the
//! answer hop by hop; `leg` turns one kernel answer into a [`Leg`]; `refusal` says why the
//! kernel refused one; `verdict` puts the legs together and says what they mean
//! ([`explain`]); `inbound` traces a request from outside the node to a pod.

mod inbound;
mod leg;
mod refusal;
mod verdict;

use std::net::IpAddr;

use serde::Serialize;

pub use self::{
    inbound::{Inbound, inbound},
    leg::leg,
    verdict::explain,
};
use super::{
    Node, Path, PathKind, PathRule, Topology,
    eni::{self, Eni},
    fib::Flow,
    lookup::Answer,
};

/// Transport protocol of the traced flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// Where a packet leaves the route lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// Out of a branch ENI's `vlan.eth.N`: the VPC applies the branch ENI's groups.
    BranchVlan,
    /// Out of a node ENI (eth0, ens5, ...): the VPC applies the node ENI's groups.
    NodeEni,
    /// Into another pod's host veth: stays on the node.
    PodVeth,
    /// Delivered to the node itself (a local route).
    Local,
    /// The kernel refused the lookup.
    Refused,
}

impl Egress {
    /// For operators: where the packet goes.
    pub fn describe(self) -> &'static str {
        match self {
            Egress::BranchVlan => "leaves the node by a branch ENI",
            Egress::NodeEni => "leaves the node by a node ENI",
            Egress::PodVeth => "to a pod on this node",
            Egress::Local => "delivered to the node itself",
            Egress::Refused => "refused",
        }
    }
}

/// Whose security groups decide the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deciders {
    BranchEni,
    NodeEni,
    /// The flow never leaves the node: no security group sees it.
    None,
}

/// One direction of the flow: one route lookup and what it means.
#[derive(Clone, Debug, Serialize)]
pub struct Leg {
    /// Interface the lookup was done for (`iif`), `None` for packets the node sends itself.
    pub ingress: Option<String>,
    /// The packet's source and destination.
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    /// The first rule (by priority) that selects the packet and looks up the table the
    /// route came from. When the kernel refused, the rule its rules select on the way to
    /// the refusal.
    pub rule: Option<PathRule>,
    pub table: Option<u32>,
    /// The matched route, as `ip route` prints it; when the kernel refused, the route the
    /// rules led to before the failing check (`null` when there is none).
    pub route: Option<String>,
    pub egress: Option<String>,
    pub egress_kind: Egress,
    /// The kernel's refusal (`EXDEV (reverse path filter)`), if it refused.
    pub error: Option<String>,
    /// Why the kernel refused, in plain words.
    pub why: Option<String>,
    /// The rule that causes the refusal (a stale `iif vlan<hash>` rule sending the pod's
    /// traffic to a table that does not lead back to it).
    pub cause: Option<PathRule>,
    /// The ENI the packet leaves by when that ENI does not own its source: the VPC drops
    /// it (source/destination check) and the trace follows it no further.
    pub vpc_drop: Option<Eni>,
}

impl Leg {
    /// What the kernel said, for evidence: `rule "10: from all iif vlan.eth.1 lookup 101"
    /// picks "default via 192.168.0.1 dev vlan.eth.1 table 101"`, or its refusal.
    pub fn summary(&self) -> String {
        match (&self.error, &self.rule, &self.route) {
            (Some(e), _, _) => format!("the kernel refuses it with {e}"),
            (None, Some(rule), Some(route)) => format!("rule \"{rule}\" picks \"{route}\""),
            (None, None, Some(route)) => format!("the kernel picks \"{route}\""),
            (None, _, None) => "the kernel gives no route".to_string(),
        }
    }
}

/// The trace report, as `sgpath trace --output json` prints it:
///
/// ```text
/// { "schema": "sgpath.trace/v1", "from": <path, as in the inspect report>,
///   "to", "proto", "port",
///   "forward": <leg>,
///   "security_groups": "branch-eni" | "node-eni" | "none",   // the sender's ENI, outbound rules
///   "receiver_security_groups": "branch-eni" | "node-eni" | null, // when the target is on this node
///   "decided_by": "<sentence>",
///   "reply": [<leg>...],   // the answer's way back, hop by hop (a VPC hairpin makes two)
///   "same_path": true | false | null, "works": true | false, "verdict": "<sentence>" }
/// <leg> = { "ingress", "src", "dst", "rule": {priority, selector, table} | null, "table",
///           "route", "egress",
///           "egress_kind": "branch-vlan"|"node-eni"|"pod-veth"|"local"|"refused",
///           "error", "why", "cause": {priority, selector, table} | null,
///           "vpc_drop": {link, kind: "branch"|"node", vlan_id, owns: [ip...]} | null }
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub schema: &'static str,
    pub from: Path,
    pub to: IpAddr,
    pub proto: Proto,
    pub port: Option<u16>,
    pub forward: Leg,
    pub security_groups: Deciders,
    /// Whose inbound rules the flow meets when it comes back into this node from the VPC.
    pub receiver_security_groups: Option<Deciders>,
    /// Which ENIs' groups decide, as a sentence.
    pub decided_by: String,
    pub reply: Vec<Leg>,
    /// Whether the answer reaches the pod through its own host veth.
    pub same_path: Option<bool>,
    /// Whether the flow works as far as the node can tell.
    pub works: bool,
    /// What happens to the flow, as a sentence.
    pub verdict: String,
}

/// Where the answer starts its way back: the target pod's host veth when the target is a
/// pod of this node, `Some(None)` (sent by the node itself) when it is an address of this
/// node, else the interface the forward leg left by (the VPC hands the answer back to the
/// same ENI); `None` when the packet never got anywhere.
pub fn reply_ingress(
    node: &Node,
    topo: &Topology,
    forward: &Leg,
    to: IpAddr,
) -> Option<Option<String>> {
    if forward.egress_kind == Egress::Refused || forward.vpc_drop.is_some() {
        return None;
    }
    if let Some(p) = topo.paths.iter().find(|p| p.pod_ip == Some(to)) {
        return Some(Some(p.host_veth.clone()));
    }
    if node.has_address(to) {
        return Some(None);
    }
    Some(forward.egress.clone())
}

/// Where the VPC hands a packet for the pod back to the node: its branch ENI's VLAN link,
/// or the node ENI whose table routes the pod (`eth0` for a pod in the main table).
pub fn pod_eni(node: &Node, topo: &Topology, from: &Path) -> Option<String> {
    eni::pod_eni(node, topo, from)
}

/// Whether a reply leg leaves the node toward the pod (a VPC hairpin) and must be followed
/// back in through the pod's ENI: it leaves by an ENI and the VPC lets it through.
pub fn leaves_node(leg: &Leg) -> bool {
    matches!(leg.egress_kind, Egress::BranchVlan | Egress::NodeEni)
}

pub(super) fn deciders_of(kind: PathKind) -> Deciders {
    match kind {
        PathKind::BranchEni => Deciders::BranchEni,
        PathKind::NodeEni => Deciders::NodeEni,
    }
}

/// What to trace: from a pod to an address.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub from: &'a Path,
    pub to: IpAddr,
    pub proto: Proto,
    pub port: Option<u16>,
}

/// Whether the forward leg can reach `to` at all: not when the kernel refused it, not
/// when the VPC drops it, and not when it leaves the node for an address of this node
/// that the VPC does not deliver here (a link-local or service address: the VPC never
/// brings such a packet back). Only then is there an answer to follow.
pub fn reaches(node: &Node, topo: &Topology, forward: &Leg, to: IpAddr) -> bool {
    forward.error.is_none() && forward.vpc_drop.is_none() && !lost_in_vpc(node, topo, forward, to)
}

/// The packet leaves the node for an address only this node has.
pub(super) fn lost_in_vpc(node: &Node, topo: &Topology, forward: &Leg, to: IpAddr) -> bool {
    leaves_node(forward) && node.has_address(to) && !eni::vpc_delivers_here(topo, to)
}

/// A reply may leave the node and hairpin back through the VPC once; more is a loop.
pub const MAX_REPLY_HOPS: usize = 3;

/// Trace a request: ask for the forward leg, then follow the answer hop by hop from where
/// it starts (the target pod's veth, the node itself, or the ENI the packet left by) and,
/// when it leaves the node toward the pod and the VPC lets it through, back in through the
/// pod's ENI (strict pods' answers from the node hairpin this way). `ask` is the kernel:
/// it answers one flow and its destination port (`ip route get`).
///
/// # Errors
/// Whatever `ask` fails with.
pub fn run<E>(
    node: &Node,
    topo: &Topology,
    req: &Request<'_>,
    mut ask: impl FnMut(&Flow<'_>, Option<u16>) -> Result<Answer, E>,
) -> Result<Trace, E> {
    let ipproto = Some(req.proto.number());
    let flow = Flow {
        iif: Some(&req.from.host_veth),
        src: req.from.pod_ip,
        dst: req.to,
        ipproto,
    };
    let forward = leg(node, topo, &flow, &ask(&flow, req.port)?);
    let mut reply = Vec::new();
    let start = reply_ingress(node, topo, &forward, req.to)
        .filter(|_| reaches(node, topo, &forward, req.to));
    // Without the pod's address there is no answer to look up.
    if let (Some(mut ingress), Some(pod_ip)) = (start, req.from.pod_ip) {
        while reply.len() < MAX_REPLY_HOPS {
            let flow = Flow {
                iif: ingress.as_deref(),
                src: Some(req.to),
                dst: pod_ip,
                ipproto,
            };
            let l = leg(node, topo, &flow, &ask(&flow, None)?);
            let again = leaves_node(&l) && l.vpc_drop.is_none();
            reply.push(l);
            match pod_eni(node, topo, req.from) {
                // Back in where it just came from: it would loop, stop here.
                Some(eni) if again && ingress.as_deref() != Some(eni.as_str()) => {
                    ingress = Some(eni)
                }
                _ => break,
            }
        }
    }
    Ok(explain(node, topo, req, forward, reply))
}
#[cfg(test)]
mod tests;
