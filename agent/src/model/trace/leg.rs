//! One leg of a trace: the kernel's answer for one flow (`ip route get`), with the rule
//! that chose the route, where the packet leaves, and whether the VPC's source/destination
//! check drops it there; or, when the kernel refused, why.

use super::{Egress, Leg, refusal::why_refused};
use crate::model::{
    Node, PathRule, Route, RouteKind, Rule, Topology, eni,
    fib::{self, Flow},
    lookup::Answer,
};

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

/// The first rule that selects the flow and looks up `table`.
fn matching_rule<'a>(node: &'a Node, flow: &Flow<'_>, table: u32) -> Option<&'a Rule> {
    let family = if flow.dst.is_ipv6() {
        crate::model::Family::Ipv6
    } else {
        crate::model::Family::Ipv4
    };
    fib::ordered(node, family)
        .into_iter()
        .find(|r| r.lookup_table() == Some(table) && fib::selects(r, flow))
}

/// Build one leg from the kernel's answer for `flow`.
pub fn leg(node: &Node, topo: &Topology, flow: &Flow<'_>, answer: &Answer) -> Leg {
    let base = Leg {
        ingress: flow.iif.map(String::from),
        src: flow.src,
        dst: flow.dst,
        rule: None,
        table: None,
        route: None,
        egress: None,
        egress_kind: Egress::Refused,
        error: None,
        why: None,
        cause: None,
        vpc_drop: None,
    };
    match answer {
        Ok(route) => {
            let egress_kind = classify(node, topo, route);
            let vpc_drop = match (egress_kind, route.oif.as_deref(), flow.src) {
                (Egress::BranchVlan | Egress::NodeEni, Some(dev), Some(src)) => {
                    eni::source_check(topo, dev, src)
                }
                _ => None,
            };
            Leg {
                rule: matching_rule(node, flow, route.table).map(PathRule::from),
                table: Some(route.table),
                route: Some(route.to_string()),
                egress: route.oif.clone(),
                egress_kind,
                vpc_drop,
                ..base
            }
        }
        Err(refusal) => {
            let sel = fib::select(node, flow);
            let (why, cause) = why_refused(node, flow, *refusal, &sel);
            // The rule that chose the route; with no route at all, the rule that should have.
            let chose = sel.rule.or(cause);
            Leg {
                rule: chose.map(PathRule::from),
                table: chose.and_then(|r| r.lookup_table()),
                route: sel.route().map(|r| r.to_string()),
                error: Some(refusal.name()),
                why: Some(why),
                cause: cause.map(PathRule::from),
                ..base
            }
        }
    }
}
