//! `sgpath trace`: which rule, table, route and interface a pod's packet takes, which
//! security groups decide it, and whether the answer comes back the same way. Pure: the
//! kernel's answers (`ip route get`) come in as [`Route`]s or errnos.

use std::net::IpAddr;

use serde::Serialize;

use super::{Family, Node, Path, PathRule, Route, RouteKind, Rule, RuleAction, Topology};

/// Transport protocol of the traced flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
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
/// { "schema": "sgpath.trace/v1", "from": { "pod_ip", "host_veth", "path_kind", "mode" },
///   "to", "proto", "port",
///   "forward": { "ingress", "rule": {priority, selector, table} | null, "table", "route",
///                "egress", "egress_kind": "branch-vlan"|"node-eni"|"pod-veth"|"local"|"refused", "error" },
///   "security_groups": "branch-eni" | "node-eni" | "none", "decided_by",
///   "reply": <leg> | null, "same_path": true | false | null, "verdict" }
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
    /// Which ENI's groups decide, named for an operator.
    pub decided_by: String,
    /// The answer's way back, when the flow leaves the node or reaches it.
    pub reply: Option<Leg>,
    /// Whether the answer comes back to the pod through its own host veth.
    pub same_path: Option<bool>,
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
            // Locally generated packets match `iif lo`.
            r.iif.as_deref().is_none_or(|i| i == iif.unwrap_or("lo"))
                && r.src.is_none_or(|n| src.is_some_and(|s| n.contains(&s)))
                && r.dst.is_none_or(|n| n.contains(&dst))
                && r.fwmark
                    .is_none_or(|m| m & r.fwmask.unwrap_or(u32::MAX) == 0)
                && r.ipproto.is_none_or(|p| p == proto)
                && r.oif.is_none()
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

/// Where the answer enters the node: the interface the forward leg left by (the VPC hands
/// the reply to the same ENI), or `None` (a local reply, looked up as locally generated).
pub fn reply_ingress(forward: &Leg) -> Option<Option<String>> {
    match forward.egress_kind {
        Egress::BranchVlan | Egress::NodeEni => Some(forward.egress.clone()),
        Egress::Local => Some(None),
        // Pod to pod on the node: the other pod's reply enters through its own veth.
        Egress::PodVeth => Some(forward.egress.clone()),
        Egress::Refused => None,
    }
}

/// Put the trace together and say what it means.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    node: &Node,
    topo: &Topology,
    from: &Path,
    to: IpAddr,
    proto: Proto,
    port: Option<u16>,
    forward: Leg,
    reply: Option<Leg>,
) -> Trace {
    let to_is_local = node
        .links
        .iter()
        .any(|l| l.addresses.iter().any(|a| a.addr() == to));
    let (security_groups, decided_by) = match forward.egress_kind {
        Egress::BranchVlan => {
            let dev = forward.egress.clone().unwrap_or_default();
            let v = topo.vlan_links.iter().find(|v| v.name == dev);
            let trunk = v
                .and_then(|v| v.trunk.clone())
                .unwrap_or_else(|| "?".into());
            (
                Deciders::BranchEni,
                format!(
                    "the branch ENI's security groups (VLAN {}, {dev} on trunk {trunk})",
                    v.map_or(0, |v| v.vlan_id)
                ),
            )
        }
        Egress::NodeEni => (
            Deciders::NodeEni,
            format!(
                "the node ENI's security groups ({})",
                forward.egress.clone().unwrap_or_default()
            ),
        ),
        Egress::PodVeth | Egress::Local => {
            (Deciders::None, "none: the flow stays on the node".into())
        }
        Egress::Refused => (
            Deciders::None,
            "none: the node drops it before any ENI".into(),
        ),
    };
    let same_path = reply
        .as_ref()
        .map(|r| r.egress.as_deref() == Some(from.host_veth.as_str()) && r.error.is_none());
    let verdict = if let Some(e) = &forward.error {
        format!("the node refuses the packet: {e}")
    } else if to_is_local && matches!(forward.egress_kind, Egress::BranchVlan | Egress::NodeEni) {
        format!(
            "{to} is an address of this node, but the pod's packet leaves it through {}: it never reaches {to} (NodeLocal DNSCache / link-local agents in strict mode)",
            forward.egress.clone().unwrap_or_default()
        )
    } else if let Some(r) = &reply {
        match (same_path, &r.error) {
            (_, Some(e)) => format!(
                "the answer is refused on {}: {e}",
                r.ingress.clone().unwrap_or_else(|| "the node".into())
            ),
            (Some(true), None) => {
                format!("reaches {to}; {decided_by} decide; the answer comes back the same way")
            }
            _ => format!(
                "reaches {to}; {decided_by} decide; but the answer leaves through {} instead of {}",
                r.egress.clone().unwrap_or_else(|| "?".into()),
                from.host_veth
            ),
        }
    } else {
        format!("reaches {to}; {decided_by} decide")
    };
    Trace {
        schema: "sgpath.trace/v1",
        from: from.clone(),
        to,
        proto,
        port,
        forward,
        security_groups,
        decided_by,
        reply,
        same_path,
        verdict,
    }
}
