//! `sgpath trace`: which rule, table, route and interface a pod's packet takes, which
//! security groups decide it, and whether the answer comes back the same way. Pure: the
//! kernel's answers (`ip route get`) come in as [`Route`]s or errnos.

use std::net::IpAddr;

use serde::Serialize;

use super::{Family, Node, Path, PathKind, PathRule, Route, RouteKind, Rule, RuleAction, Topology};

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

/// One direction of the flow.
#[derive(Clone, Debug, Serialize)]
pub struct Leg {
    /// Interface the lookup was done for (`iif`), `None` for locally generated packets.
    pub ingress: Option<String>,
    /// First rule (by priority) that selects the packet and looks up the table the kernel used.
    pub rule: Option<PathRule>,
    pub table: Option<u32>,
    /// The matched route, as `ip route` prints it.
    pub route: Option<String>,
    pub egress: Option<String>,
    pub egress_kind: Egress,
    /// The kernel's refusal (`EXDEV: rp_filter`...), if it refused.
    pub error: Option<String>,
}

/// The trace report, as `sgpath trace --output json` prints it:
///
/// ```text
/// { "schema": "sgpath.trace/v1", "from": <path, as in the inspect report>,
///   "to", "proto", "port",
///   "forward": <leg>,
///   "security_groups": "branch-eni" | "node-eni" | "none",   // the sender's ENI, outbound rules
///   "receiver_security_groups": "branch-eni" | "node-eni" | null, // when the target is on this node
///   "decided_by": "...",
///   "reply": [<leg>...],   // the answer's way back, hop by hop (a VPC hairpin makes two)
///   "same_path": true | false | null, "works": true | false, "verdict": "..." }
/// <leg> = { "ingress", "rule": {priority, selector, table} | null, "table", "route",
///           "egress", "egress_kind": "branch-vlan"|"node-eni"|"pod-veth"|"local"|"refused", "error" }
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
    /// Which ENIs' groups decide, named for an operator.
    pub decided_by: String,
    pub reply: Vec<Leg>,
    /// Whether the answer reaches the pod through its own host veth.
    pub same_path: Option<bool>,
    /// Whether the flow works as far as the node can tell.
    pub works: bool,
    pub verdict: String,
}

/// The errno name the kernel's route lookup answered.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::EXDEV => {
            "EXDEV (reverse path filter: rp_filter refused the packet's source on this interface)"
                .into()
        }
        libc::ENETUNREACH => "ENETUNREACH (no route)".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH (unreachable route)".into(),
        libc::EACCES => "EACCES (prohibit route)".into(),
        libc::EINVAL => "EINVAL (blackhole or bad request)".into(),
        libc::ENODEV => "ENODEV (interface down or gone)".into(),
        other => format!("errno {other}"),
    }
}

fn classify(node: &Node, topo: &Topology, route: &Route) -> Egress {
    if route.kind == RouteKind::Local {
        return Egress::Local;
    }
    match route.oif.as_deref() {
        Some(dev) if topo.vlan_links.iter().any(|v| v.name == dev) => Egress::BranchVlan,
        Some(dev) if topo.host_veths.iter().any(|v| v.name == dev) => Egress::PodVeth,
        Some(dev) if node.link_by_name(dev).is_some_and(|l| l.name == "lo") => Egress::Local,
        Some(_) => Egress::NodeEni,
        None => Egress::Refused,
    }
}

/// The first rule that selects a packet with these fields and looks up `table`.
fn matching_rule(
    node: &Node,
    iif: Option<&str>,
    src: Option<IpAddr>,
    dst: IpAddr,
    proto: u8,
    table: u32,
) -> Option<PathRule> {
    let family = if dst.is_ipv6() {
        Family::Ipv6
    } else {
        Family::Ipv4
    };
    let mut rules: Vec<&Rule> = node.rules.iter().filter(|r| r.family == family).collect();
    rules.sort_by_key(|r| r.priority);
    rules
        .into_iter()
        .filter(|r| r.action == RuleAction::Lookup && r.table == table)
        .find(|r| {
            // Locally generated packets match `iif lo`; the traced packet carries mark 0, so
            // a fwmark rule selects it only when its mark is 0 under its mask.
            let selected = r.iif.as_deref().is_none_or(|i| i == iif.unwrap_or("lo"))
                && r.src.is_none_or(|n| src.is_some_and(|s| n.contains(&s)))
                && r.dst.is_none_or(|n| n.contains(&dst))
                && r.fwmark
                    .is_none_or(|m| m & r.fwmask.unwrap_or(u32::MAX) == 0)
                && r.ipproto.is_none_or(|p| p == proto)
                && r.oif.is_none();
            // FIB_RULE_INVERT (`not ...`) negates the whole selector.
            selected != r.invert
        })
        .map(|r| PathRule {
            priority: r.priority,
            selector: r.selector(),
            table: r.table,
        })
}

/// Build one leg from the kernel's answer.
pub fn leg(
    node: &Node,
    topo: &Topology,
    ingress: Option<&str>,
    src: Option<IpAddr>,
    dst: IpAddr,
    proto: Proto,
    answer: &Result<Route, i32>,
) -> Leg {
    match answer {
        Ok(route) => Leg {
            ingress: ingress.map(String::from),
            rule: matching_rule(node, ingress, src, dst, proto.number(), route.table),
            table: Some(route.table),
            route: Some(route.to_string()),
            egress: route.oif.clone(),
            egress_kind: classify(node, topo, route),
            error: None,
        },
        Err(e) => Leg {
            ingress: ingress.map(String::from),
            rule: None,
            table: None,
            route: None,
            egress: None,
            egress_kind: Egress::Refused,
            error: Some(errno_name(*e)),
        },
    }
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
    if forward.egress_kind == Egress::Refused {
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
    match from.kind {
        PathKind::BranchEni => from.vlan_link.clone(),
        PathKind::NodeEni => node
            .table(from.route_table)
            .find(|r| r.is_default())
            .and_then(|r| r.oif.clone())
            .or_else(|| topo.primary_eni.clone()),
    }
}

/// Whether a reply leg leaves the node toward the pod (a VPC hairpin) and must be followed
/// back in through the pod's ENI.
pub fn leaves_node(leg: &Leg) -> bool {
    matches!(leg.egress_kind, Egress::BranchVlan | Egress::NodeEni)
}

fn deciders_of(kind: PathKind) -> Deciders {
    match kind {
        PathKind::BranchEni => Deciders::BranchEni,
        PathKind::NodeEni => Deciders::NodeEni,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_loopback(),
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

/// Whether the forward leg can reach `to` at all: not when the kernel refused it, and not
/// when it leaves the node for a link-local address of the node (the VPC never brings
/// such a packet back). Only then is there an answer to follow.
pub fn reaches(node: &Node, forward: &Leg, to: IpAddr) -> bool {
    let on_node = node.has_address(to);
    forward.error.is_none() && !(on_node && leaves_node(forward) && is_link_local(to))
}

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
    let leaves = leaves_node(&forward);
    // The VPC routes the flow back into this node when its target lives here.
    let receiver = if !leaves || is_link_local(to) {
        None
    } else if let Some(p) = topo.paths.iter().find(|p| p.pod_ip == Some(to)) {
        Some(deciders_of(p.kind))
    } else {
        node.has_address(to).then_some(Deciders::NodeEni)
    };
    let dev = forward.egress.clone().unwrap_or_default();
    let (security_groups, mut decided_by) = match forward.egress_kind {
        Egress::BranchVlan => {
            let v = topo.vlan_links.iter().find(|v| v.name == dev);
            let trunk = v
                .and_then(|v| v.trunk.clone())
                .unwrap_or_else(|| "?".into());
            let vlan = v.map_or(0, |v| v.vlan_id);
            (
                Deciders::BranchEni,
                format!("the branch ENI's security groups (VLAN {vlan}, {dev} on trunk {trunk})"),
            )
        }
        Egress::NodeEni => (
            Deciders::NodeEni,
            format!("the node ENI's security groups ({dev})"),
        ),
        Egress::PodVeth | Egress::Local => (
            Deciders::None,
            "no security group: the flow stays on the node".into(),
        ),
        Egress::Refused => (
            Deciders::None,
            "no security group: the node drops it before any ENI".into(),
        ),
    };
    match receiver {
        Some(Deciders::BranchEni) => {
            decided_by.push_str(" outbound, then the target's branch ENI's inbound")
        }
        Some(Deciders::NodeEni) => decided_by.push_str(" outbound, then the node ENI's inbound"),
        _ => {}
    }
    let last = reply.last();
    let same_path =
        last.map(|r| r.error.is_none() && r.egress.as_deref() == Some(from.host_veth.as_str()));
    let hairpin = reply.len() > 1;
    let (works, verdict) = if let Some(e) = &forward.error {
        (false, format!("the node refuses the packet: {e}"))
    } else if !reaches(node, &forward, to) {
        (
            false,
            format!(
                "{to} is a link-local address of this node, but the pod's packet leaves through {dev}: the VPC never brings it back, so it never reaches {to} (NodeLocal DNSCache, link-local agents in strict mode)"
            ),
        )
    } else if let Some(r) = last {
        match (&r.error, same_path) {
            (Some(e), _) => (
                false,
                format!(
                    "reaches {to}, but the answer is refused on {}: {e}",
                    r.ingress.clone().unwrap_or_else(|| "the node".into())
                ),
            ),
            (None, Some(true)) if hairpin => (
                true,
                format!(
                    "reaches {to}; {decided_by} decide; the answer hairpins through the VPC and comes back in through {}",
                    r.ingress.clone().unwrap_or_default()
                ),
            ),
            (None, Some(true)) => (
                true,
                format!("reaches {to}; {decided_by} decide; the answer comes back the same way"),
            ),
            _ => (
                false,
                format!(
                    "reaches {to}; {decided_by} decide; but the answer leaves through {} instead of reaching {}",
                    r.egress.clone().unwrap_or_else(|| "?".into()),
                    from.host_veth
                ),
            ),
        }
    } else {
        (true, format!("{decided_by} decide"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnforcingMode, Link, LinkKind};

    fn strict_pod() -> Path {
        Path {
            kind: PathKind::BranchEni,
            mode: Some(EnforcingMode::Strict),
            pod_ip: Some("192.168.3.219".parse().unwrap()),
            host_veth: "vlana433f856e38".into(),
            vlan_id: Some(1),
            vlan_link: Some("vlan.eth.1".into()),
            trunk: Some("eth1".into()),
            route_table: 101,
            rules: Vec::new(),
            counters: None,
        }
    }

    fn node_with(name: &str, addr: &str) -> Node {
        Node {
            links: vec![Link {
                addresses: vec![addr.parse().unwrap()],
                ..Link::new(9, name, LinkKind::Dummy)
            }],
            ..Default::default()
        }
    }

    fn leg(egress: &str, kind: Egress) -> Leg {
        Leg {
            ingress: None,
            rule: None,
            table: Some(101),
            route: None,
            egress: Some(egress.into()),
            egress_kind: kind,
            error: None,
        }
    }

    #[test]
    fn a_link_local_node_address_out_of_the_vlan_is_never_reached() {
        let node = node_with("nodelocaldns", "169.254.20.10/32");
        let topo = Topology::default();
        let to: IpAddr = "169.254.20.10".parse().unwrap();
        let fwd = leg("vlan.eth.1", Egress::BranchVlan);
        assert!(!reaches(&node, &fwd, to));
        let pod = strict_pod();
        let req = Request {
            from: &pod,
            to,
            proto: Proto::Udp,
            port: Some(53),
        };
        let t = explain(&node, &topo, &req, fwd, Vec::new());
        assert!(
            !t.works && t.verdict.contains("never reaches"),
            "{}",
            t.verdict
        );
        assert_eq!(t.receiver_security_groups, None);
    }

    #[test]
    fn the_node_address_out_of_the_vlan_comes_back_through_the_node_eni() {
        let node = node_with("eth0", "192.168.1.10/16");
        let to: IpAddr = "192.168.1.10".parse().unwrap();
        let fwd = leg("vlan.eth.1", Egress::BranchVlan);
        assert!(reaches(&node, &fwd, to));
        assert_eq!(
            reply_ingress(&node, &Topology::default(), &fwd, to),
            Some(None),
            "the node answers itself"
        );
        let pod = strict_pod();
        let req = Request {
            from: &pod,
            to,
            proto: Proto::Tcp,
            port: Some(10250),
        };
        let mut back = leg("vlana433f856e38", Egress::PodVeth);
        back.ingress = Some("vlan.eth.1".into());
        let t = explain(
            &node,
            &Topology::default(),
            &req,
            fwd,
            vec![leg("eth0", Egress::NodeEni), back],
        );
        assert_eq!(
            (t.security_groups, t.receiver_security_groups),
            (Deciders::BranchEni, Some(Deciders::NodeEni))
        );
        assert_eq!(t.same_path, Some(true));
        assert!(t.works && t.verdict.contains("hairpins"), "{}", t.verdict);
    }

    #[test]
    fn an_answer_that_leaves_elsewhere_does_not_work() {
        let node = Node::default();
        let to: IpAddr = "10.0.1.10".parse().unwrap();
        let pod = strict_pod();
        let req = Request {
            from: &pod,
            to,
            proto: Proto::Tcp,
            port: Some(443),
        };
        let mut out = leg("eth0", Egress::NodeEni);
        out.ingress = Some("vlan.eth.1".into());
        let t = explain(
            &node,
            &Topology::default(),
            &req,
            leg("vlan.eth.1", Egress::BranchVlan),
            vec![out],
        );
        assert_eq!(t.same_path, Some(false));
        assert!(
            !t.works && t.verdict.contains("instead of reaching vlana433f856e38"),
            "{}",
            t.verdict
        );
    }
}
