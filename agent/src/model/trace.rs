//! `sgpath trace`: which rule, table, route and interface a pod's packet takes, which
//! security groups decide it, and whether the answer comes back the same way. Pure: the
//! kernel's answers (`ip route get`) come in as [`Answer`]s; when the kernel refuses, the
//! node's own rules and routes say which rule selected the route and why it was refused
//! ([`fib`]); the VPC's source/destination check comes from which ENI owns which address
//! ([`eni`]).

use std::net::IpAddr;

use serde::Serialize;

use super::{
    Node, Path, PathKind, PathRule, Route, RouteKind, Rule, Topology,
    eni::{self, Eni, EniKind},
    fib::{self, Flow, Outcome, Selection},
    lookup::{Answer, Refusal},
    rule::table_name,
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
        super::Family::Ipv6
    } else {
        super::Family::Ipv4
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

/// `10: from all iif vlan.eth.1 lookup 101`, quoted.
fn quoted(r: &Rule) -> String {
    format!("rule \"{r}\"")
}

/// Why the kernel refused a lookup, in plain words, and the rule that causes it. The
/// kernel says only the errno; the node's rules and routes, walked as the kernel walks
/// them, say where the packet was going and what refused it.
fn why_refused<'a>(
    node: &'a Node,
    flow: &Flow<'_>,
    refusal: Refusal,
    sel: &Selection<'a>,
) -> (String, Option<&'a Rule>) {
    let dst = flow.dst;
    let on = flow.iif.unwrap_or("lo");
    // A rule or a route that refuses by itself, whatever the errno says.
    if let (Outcome::Refused(r), Some(rule)) = (sel.outcome, sel.rule) {
        let text = match rule.lookup_table() {
            Some(t) => {
                let route = fib::route_in(node, t, dst).map_or(String::new(), |r| r.to_string());
                let what = match r {
                    Refusal::Prohibited => format!("prohibits {dst}"),
                    Refusal::Invalid => format!("drops everything for {dst} (a blackhole)"),
                    _ => format!("makes {dst} unreachable"),
                };
                format!(
                    "{} leads to table {}, whose route \"{route}\" {what}.",
                    cap(&quoted(rule)),
                    table_name(t)
                )
            }
            None => {
                let what = match r {
                    Refusal::Prohibited => "prohibits every packet it selects",
                    Refusal::Invalid => "drops every packet it selects (a blackhole)",
                    _ => "makes every packet it selects unreachable",
                };
                format!("{} {what}.", cap(&quoted(rule)))
            }
        };
        return (text, Some(rule));
    }
    match refusal {
        Refusal::ReversePath => reverse_path(node, flow, sel).unwrap_or_else(|| {
            let src = flow.src.map_or("?".to_string(), |s| s.to_string());
            (
                format!(
                    "rp_filter on {on} refused the source {src}: the kernel found no route back to it through {on}."
                ),
                None,
            )
        }),
        Refusal::NetUnreachable | Refusal::HostUnreachable if sel.route().is_none() => {
            let first = fib::ordered(node, family(dst)).into_iter().find(|r| {
                r.lookup_table().is_some_and(|t| t != super::TABLE_LOCAL) && fib::selects(r, flow)
            });
            let forwarding = if refusal == Refusal::HostUnreachable {
                format!(" Forwarding is off on {on}, too.")
            } else {
                String::new()
            };
            let text = match first {
                Some(r) => {
                    let rest: Vec<String> = sel
                        .tables
                        .iter()
                        .filter(|t| **t != r.table)
                        .map(|t| table_name(*t))
                        .collect();
                    let rest = if rest.is_empty() {
                        "and no other table is looked up".to_string()
                    } else {
                        format!(
                            "and the tables after it ({}) have none either",
                            rest.join(", ")
                        )
                    };
                    format!(
                        "No route to {dst}: {} sends the packet to table {}, which has no route for it, {rest}.{forwarding}",
                        quoted(r),
                        table_name(r.table)
                    )
                }
                None => format!(
                    "No route to {dst}: no rule sends the packet to a table that routes it.{forwarding}"
                ),
            };
            (text, first)
        }
        Refusal::HostUnreachable => {
            let off = node.sysctls.get(super::Sysctls::IP_FORWARD) == Some(0);
            let text = if off {
                format!(
                    "Forwarding is off (net.ipv4.ip_forward = 0), so the node routes nothing that comes in on {on}."
                )
            } else {
                format!(
                    "Forwarding is off on {on}, so the node routes nothing that comes in on it."
                )
            };
            (text, None)
        }
        Refusal::Invalid => {
            let src = flow.src;
            // Newer kernels answer EINVAL for every packet they drop on input, rp_filter's
            // refusal included (drop reasons replaced the errnos of ip_route_input_slow).
            let rp_on = node.sysctls.effective_rp_filter(on) != Some(0);
            if let Some((why, cause)) = rp_on
                .then(|| reverse_path(node, flow, sel))
                .flatten()
                .filter(|_| !src.is_some_and(|s| node.has_address(s)))
            {
                return (
                    format!(
                        "{why} Newer kernels report rp_filter's refusal as EINVAL rather than EXDEV."
                    ),
                    cause,
                );
            }
            let text = if let Some(s) = src.filter(|s| node.has_address(*s)) {
                format!(
                    "The source {s} is an address of this node, so the kernel treats a packet from it coming in on {on} as a martian."
                )
            } else if let Some(r) = sel
                .route()
                .filter(|r| !matches!(r.kind, RouteKind::Unicast | RouteKind::Local))
            {
                format!(
                    "The route to {dst} is \"{r}\", which the node does not forward to (a martian destination)."
                )
            } else {
                "The kernel treats the packet as a martian (an invalid source or destination address).".to_string()
            };
            (text, None)
        }
        Refusal::NoDevice => (format!("The interface {on} is down or gone."), None),
        Refusal::NetUnreachable | Refusal::Prohibited | Refusal::Other(_) => (
            format!(
                "The kernel refused the lookup with {}, though the node's rules lead to a route for {dst}.",
                refusal.name()
            ),
            None,
        ),
    }
}

/// EXDEV: the kernel checks the source with a reverse lookup, as for a packet to the
/// source coming in on the interface the forward route leaves by (`fib_validate_source`);
/// with rp_filter strict the answer must leave by the interface the packet came in on.
/// `None` when the replayed reverse lookup passes (the refusal has another cause).
fn reverse_path<'a>(
    node: &'a Node,
    flow: &Flow<'_>,
    sel: &Selection<'a>,
) -> Option<(String, Option<&'a Rule>)> {
    let on = flow.iif.unwrap_or("lo");
    let src = flow.src?;
    let rp = node.sysctls.effective_rp_filter(on);
    let mode = match rp {
        Some(1) => "strict (1)",
        Some(2) => "loose (2)",
        _ => "on",
    };
    let back_in = sel
        .route()
        .filter(|r| r.kind != RouteKind::Local)
        .and_then(|r| r.oif.as_deref());
    let reverse = Flow {
        iif: back_in,
        src: Some(flow.dst),
        dst: src,
        ipproto: flow.ipproto,
    };
    let rsel = fib::select(node, &reverse);
    // Strict: the way back must leave by the interface the packet came in on; loose: there
    // must be a way back at all.
    let fails = match rp {
        Some(2) => rsel.route().is_none(),
        _ => !rsel.route().is_some_and(|r| r.goes_via(on)),
    };
    if !fails {
        return None;
    }
    let packet = back_in.map_or("a packet the node sends itself".to_string(), |d| {
        format!("a packet coming in on {d}")
    });
    let mut text = format!(
        "rp_filter is {mode} on {on}, and the route back to the source {src} does not go through {on}: "
    );
    match (rsel.rule, rsel.route()) {
        (Some(rr), Some(route)) => {
            text += &format!(
                "for {packet}, {} leads to \"{route}\", out through {}.",
                quoted(rr),
                route.oif.as_deref().unwrap_or("nowhere")
            )
        }
        _ => text += &format!("for {packet}, no rule leads to a route for {src}."),
    }
    // The cause: the rule that sent the pod's traffic to a table with no way back to it
    // when the way back is looked up in that same table, or when another branch ENI table
    // is the one that routes the pod (a stale `iif vlan<hash>` rule, VPC CNI #1375); else
    // the rule that sends the way back elsewhere.
    let forward_rule = sel.rule;
    let returns = |t: u32| fib::route_in(node, t, src).is_some_and(|r| r.goes_via(on));
    let home_is_a_branch_table = node.routes_via(on).any(|r| {
        r.is_host() && r.dst.addr() == src && super::cni::vlan_of_table(r.table).is_some()
    });
    let forward_to_blame = forward_rule
        .and_then(|r| r.lookup_table())
        .is_some_and(|t| {
            !returns(t)
                && (rsel.rule.and_then(|r| r.lookup_table()) == Some(t) || home_is_a_branch_table)
        });
    let cause = match forward_rule {
        Some(r) if forward_to_blame => {
            text += &format!(
                " The cause is {}: it sends the pod's traffic to table {}, which does not route {src} back through {on}.",
                quoted(r),
                table_name(r.table)
            );
            Some(r)
        }
        _ => match rsel.rule {
            Some(r) => {
                text += &format!(
                    " The cause is {}: it sends {packet} to table {}, which does not route {src} back through {on}.",
                    quoted(r),
                    table_name(r.table)
                );
                Some(r)
            }
            None => None,
        },
    };
    Some((text, cause))
}

fn family(ip: IpAddr) -> super::Family {
    if ip.is_ipv6() {
        super::Family::Ipv6
    } else {
        super::Family::Ipv4
    }
}

/// Capitalise the first letter of a sentence.
fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
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

fn deciders_of(kind: PathKind) -> Deciders {
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
fn lost_in_vpc(node: &Node, topo: &Topology, forward: &Leg, to: IpAddr) -> bool {
    leaves_node(forward) && node.has_address(to) && !eni::vpc_delivers_here(topo, to)
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
        && from.mode == Some(super::EnforcingMode::Strict)
        && node.has_address(to)
        && node.sysctls.get(super::Sysctls::TCP_EARLY_DEMUX) == Some(1);
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

/// `sgpath trace --from <address> --to <pod>:<port>` for an address that is no pod on this
/// node (a bastion, a load balancer, another node, the node itself):
///
/// ```text
/// { "schema": "sgpath.trace-inbound/v1", "from": <ip>, "to": <path>, "proto", "port",
///   "arrival": <leg>,             // the request, from where it enters the node
///   "security_groups": "branch-eni" | "node-eni" | "none", // whose inbound rules decide
///   "sender_security_groups": "node-eni" | null, // the node's own outbound rules, when it sends
///   "decided_by": "<sentence>", "answer": <trace>, "works", "verdict" }
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Inbound {
    pub schema: &'static str,
    pub from: IpAddr,
    pub to: Path,
    pub proto: Proto,
    pub port: Option<u16>,
    /// The request's route lookup: in on the ENI the VPC hands it to (the pod's branch
    /// ENI's VLAN link, or the node ENI its table routes by), or sent by the node itself.
    pub arrival: Leg,
    pub security_groups: Deciders,
    pub sender_security_groups: Option<Deciders>,
    pub decided_by: String,
    /// The pod's answer, as `trace --from <pod> --to <address>` follows it.
    pub answer: Trace,
    pub works: bool,
    pub verdict: String,
}

/// Trace a request from `src`, which is no pod on this node, to the pod `to`: where it
/// enters the node and whether its route reaches the pod's host veth, whose inbound rules
/// admit it, then the pod's answer (see [`run`]).
///
/// # Errors
/// Whatever `ask` fails with.
pub fn inbound<E>(
    node: &Node,
    topo: &Topology,
    src: IpAddr,
    to: &Path,
    proto: Proto,
    port: Option<u16>,
    mut ask: impl FnMut(&Flow<'_>, Option<u16>) -> Result<Answer, E>,
) -> Result<Inbound, E> {
    let pod_ip = to.pod_ip.expect("the caller resolved the pod's address");
    let local = node.has_address(src);
    let pod_eni = eni::pod_eni(node, topo, to);
    let ipproto = Some(proto.number());
    let flow = Flow {
        iif: if local { None } else { pod_eni.as_deref() },
        src: Some(src),
        dst: pod_ip,
        ipproto,
    };
    let arrival = leg(node, topo, &flow, &ask(&flow, port)?);
    let receiver = deciders_of(to.kind);
    let pod_eni_text = pod_eni
        .as_deref()
        .and_then(|l| eni::of_link(topo, l))
        .map_or_else(|| "the pod's ENI".to_string(), Eni::describe);
    let (security_groups, sender_security_groups, decided_by) = if !local {
        (
            receiver,
            None,
            format!("The inbound rules of {pod_eni_text} decide what comes in from {src}."),
        )
    } else if leaves_node(&arrival) {
        let out = arrival
            .egress
            .as_deref()
            .and_then(|l| eni::of_link(topo, l))
            .map_or_else(|| "the ENI it leaves by".to_string(), Eni::describe);
        (
            receiver,
            Some(Deciders::NodeEni),
            format!(
                "The node's packet leaves by {out} and comes back through the VPC: that ENI's \
                 outbound rules and the inbound rules of {pod_eni_text} decide."
            ),
        )
    } else {
        (
            Deciders::None,
            None,
            "No security group: the node reaches the pod without leaving the node.".to_string(),
        )
    };
    let answer = run(
        node,
        topo,
        &Request {
            from: to,
            to: src,
            proto,
            port: None,
        },
        &mut ask,
    )?;
    // The node's own packet that leaves by an ENI comes back in on the pod's ENI: the
    // second lookup is the one that must reach the pod.
    let arrives = if local && leaves_node(&arrival) {
        let again = Flow {
            iif: pod_eni.as_deref(),
            src: Some(src),
            dst: pod_ip,
            ipproto,
        };
        leg(node, topo, &again, &ask(&again, port)?)
    } else {
        arrival.clone()
    };
    let reached = arrives.error.is_none()
        && arrives.vpc_drop.is_none()
        && arrives.egress.as_deref() == Some(to.host_veth.as_str());
    let (works, verdict) = if !reached {
        (
            false,
            format!(
                "The request does not reach the pod's host veth {}: {}.",
                to.host_veth,
                arrives.why.clone().unwrap_or_else(|| arrives.summary())
            ),
        )
    } else if !answer.works {
        (
            false,
            format!(
                "The request reaches the pod through {}; its answer does not get back: {}",
                to.host_veth, answer.verdict
            ),
        )
    } else {
        (
            true,
            format!(
                "The request reaches the pod through {} and its answer leaves by {}.",
                to.host_veth,
                answer.forward.egress.as_deref().unwrap_or("?")
            ),
        )
    };
    Ok(Inbound {
        schema: "sgpath.trace-inbound/v1",
        from: src,
        to: to.clone(),
        proto,
        port,
        arrival,
        security_groups,
        sender_security_groups,
        decided_by,
        answer,
        works,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::model::{LinkKind, RouteScope, TABLE_LOCAL, TABLE_MAIN};

    const A: &str = "vlanaaaaaaaaaaa";
    const B: &str = "vlanbbbbbbbbbbb";
    const O: &str = "eni3bbf5fcab96";
    const POD_A: &str = "192.168.3.219";
    const BASTION: &str = "10.0.1.10";
    const NODE_IP: &str = "192.168.1.10";

    use crate::model::fixtures::{ip, link, route, rule, uni};

    fn local(table: u32, dst: &str, dev: &str) -> Route {
        route(table, dst, None, Some(dev), RouteKind::Local)
    }

    /// A strict node: pod A on VLAN 1, pod B on VLAN 7, ordinary pod O, NodeLocal DNSCache.
    fn node() -> Node {
        let mut n = Node {
            links: vec![
                link(1, "lo", LinkKind::Device, None, &["127.0.0.1/8"]),
                link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
                link(3, "eth1", LinkKind::Device, None, &[]),
                link(10, "vlan.eth.1", LinkKind::Vlan, Some(3), &[]),
                link(11, "vlan.eth.7", LinkKind::Vlan, Some(3), &[]),
                link(12, A, LinkKind::Veth, None, &[]),
                link(13, B, LinkKind::Veth, None, &[]),
                link(14, O, LinkKind::Veth, None, &[]),
                link(
                    20,
                    "nodelocaldns",
                    LinkKind::Dummy,
                    None,
                    &["169.254.20.10/32"],
                ),
            ],
            routes: vec![
                uni(TABLE_MAIN, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                uni(TABLE_MAIN, "192.168.0.0/16", None, "eth0"),
                uni(TABLE_MAIN, "192.168.7.31/32", None, O),
                uni(101, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.1"),
                uni(101, "192.168.0.1/32", None, "vlan.eth.1"),
                uni(101, "192.168.3.219/32", None, A),
                uni(107, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.7"),
                uni(107, "192.168.0.1/32", None, "vlan.eth.7"),
                uni(107, "192.168.26.147/32", None, B),
                local(TABLE_LOCAL, "192.168.1.10/32", "eth0"),
                local(TABLE_LOCAL, "169.254.20.10/32", "nodelocaldns"),
                local(TABLE_LOCAL, "127.0.0.0/8", "lo"),
            ],
            rules: vec![
                rule(10, None, None, Some(A), 101),
                rule(10, None, None, Some("vlan.eth.1"), 101),
                rule(10, None, None, Some(B), 107),
                rule(10, None, None, Some("vlan.eth.7"), 107),
                rule(20, None, None, None, TABLE_LOCAL),
                rule(512, None, Some("192.168.7.31/32"), None, TABLE_MAIN),
                rule(32766, None, None, None, TABLE_MAIN),
                rule(32767, None, None, None, 253),
            ],
            ..Default::default()
        };
        for (k, v) in [
            ("net.ipv4.ip_forward", 1),
            ("net.ipv4.conf.all.rp_filter", 0),
            ("net.ipv4.conf.eth0.rp_filter", 2),
        ] {
            n.sysctls.0.insert(k.into(), v);
        }
        n
    }

    /// The kernel, played by the node's own rules and tables.
    fn kernel(n: &Node, flow: &Flow<'_>) -> Answer {
        match fib::select(n, flow).outcome {
            Outcome::Route(r) => Ok(r.clone()),
            Outcome::Refused(e) => Err(e),
            Outcome::NoRoute => Err(Refusal::NetUnreachable),
        }
    }

    /// Trace `from` (a pod IP) to `to` with `kernel`, or with `refuse` answering the
    /// forward lookup instead.
    fn trace_with(n: &Node, from: &str, to: &str, forward: Option<Answer>) -> Trace {
        let topo = Topology::from_node(n);
        let path = topo
            .paths
            .iter()
            .find(|p| p.pod_ip == Some(ip(from)))
            .unwrap()
            .clone();
        let req = Request {
            from: &path,
            to: ip(to),
            proto: Proto::Tcp,
            port: Some(443),
        };
        let mut first = forward;
        run(n, &topo, &req, |flow, _| {
            Ok::<_, Infallible>(first.take().unwrap_or_else(|| kernel(n, flow)))
        })
        .unwrap()
    }

    fn trace(n: &Node, from: &str, to: &str) -> Trace {
        trace_with(n, from, to, None)
    }

    fn inbound_to(n: &Node, from: &str, to: &str) -> Inbound {
        let topo = Topology::from_node(n);
        let pod = topo
            .paths
            .iter()
            .find(|p| p.pod_ip == Some(ip(to)))
            .unwrap()
            .clone();
        inbound(n, &topo, ip(from), &pod, Proto::Tcp, Some(80), |flow, _| {
            Ok::<_, Infallible>(kernel(n, flow))
        })
        .unwrap()
    }

    #[test]
    fn the_bastion_reaches_a_strict_pod_through_its_vlan_and_its_branch_enis_rules_decide() {
        let t = inbound_to(&node(), BASTION, POD_A);
        assert_eq!(t.arrival.ingress.as_deref(), Some("vlan.eth.1"));
        assert_eq!(t.arrival.egress_kind, Egress::PodVeth);
        assert_eq!(t.security_groups, Deciders::BranchEni);
        assert_eq!(t.sender_security_groups, None);
        assert!(
            t.decided_by
                .starts_with("The inbound rules of the branch ENI on VLAN 1 (vlan.eth.1)"),
            "{}",
            t.decided_by
        );
        assert!(t.works, "{}", t.verdict);
        assert_eq!(t.answer.forward.egress.as_deref(), Some("vlan.eth.1"));
    }

    #[test]
    fn the_bastion_reaches_an_ordinary_pod_through_the_node_eni() {
        let t = inbound_to(&node(), BASTION, "192.168.7.31");
        assert_eq!(t.arrival.ingress.as_deref(), Some("eth0"));
        assert_eq!(t.security_groups, Deciders::NodeEni);
        assert!(t.works, "{}", t.verdict);
    }

    #[test]
    fn the_nodes_own_request_to_a_strict_pod_meets_both_enis_rules() {
        let t = inbound_to(&node(), NODE_IP, POD_A);
        // Sent by the node (no iif), out of a node ENI, back in through the pod's VLAN.
        assert_eq!(t.arrival.ingress, None);
        assert_eq!(t.arrival.egress_kind, Egress::NodeEni);
        assert_eq!(t.security_groups, Deciders::BranchEni);
        assert_eq!(t.sender_security_groups, Some(Deciders::NodeEni));
    }

    #[test]
    fn a_stale_rule_lets_the_request_in_and_loses_the_answer() {
        let t = inbound_to(&stale(node()), BASTION, POD_A);
        assert!(!t.works);
        assert!(
            t.verdict.starts_with("The request reaches the pod through")
                && t.verdict.contains("its answer does not get back"),
            "{}",
            t.verdict
        );
    }

    /// Pod A re-created under the same name: the old pod's `iif` rule to table 107 (pod
    /// B's VLAN) survived and comes first (VPC CNI #1375).
    fn stale(mut n: Node) -> Node {
        n.rules.insert(0, rule(10, None, None, Some(A), 107));
        n
    }

    #[test]
    fn strict_pod_to_the_bastion_comes_back_the_same_way() {
        let t = trace(&node(), POD_A, BASTION);
        assert_eq!(t.forward.egress.as_deref(), Some("vlan.eth.1"));
        assert_eq!(
            t.forward.rule.as_ref().map(|r| r.to_string()).as_deref(),
            Some("10: from all iif vlanaaaaaaaaaaa lookup 101")
        );
        assert_eq!(t.reply.len(), 1);
        assert_eq!(t.reply[0].ingress.as_deref(), Some("vlan.eth.1"));
        assert!(t.works);
        assert_eq!(
            t.decided_by,
            "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide."
        );
        assert_eq!(
            t.verdict,
            "The packet reaches 10.0.1.10, and the answer comes back the same way to vlanaaaaaaaaaaa."
        );
    }

    #[test]
    fn strict_pod_to_the_node_hairpins_through_the_vpc() {
        let t = trace(&node(), POD_A, NODE_IP);
        assert_eq!(
            (t.security_groups, t.receiver_security_groups),
            (Deciders::BranchEni, Some(Deciders::NodeEni))
        );
        let hops: Vec<(Option<&str>, Option<&str>)> = t
            .reply
            .iter()
            .map(|l| (l.ingress.as_deref(), l.egress.as_deref()))
            .collect();
        assert_eq!(hops, [(None, Some("eth0")), (Some("vlan.eth.1"), Some(A))]);
        assert_eq!(
            t.decided_by,
            "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide what leaves, and the node ENI's inbound rules decide what comes in."
        );
        assert_eq!(
            t.verdict,
            "The packet reaches 192.168.1.10; the answer leaves by eth0, hairpins through the VPC and comes back in through vlan.eth.1 to vlanaaaaaaaaaaa."
        );
        assert!(t.works);
    }

    /// The trace and the `tcp-early-demux-enabled` check tell one story: with early demux on,
    /// a strict pod's TCP answer to the node fails in both; with it off, neither says so.
    #[test]
    fn early_demux_breaks_a_strict_pods_tcp_to_the_node_as_the_check_says() {
        for on in [0, 1] {
            let mut n = node();
            n.sysctls
                .0
                .insert(crate::model::Sysctls::TCP_EARLY_DEMUX.into(), on);
            let topo = Topology::from_node(&n);
            let check = crate::checks::run(&n, &topo)
                .iter()
                .any(|f| f.id == crate::checks::FindingId::TcpEarlyDemuxEnabled);
            let t = trace(&n, POD_A, NODE_IP);
            assert_eq!(check, on == 1);
            assert_eq!(t.works, on == 0, "{}", t.verdict);
            assert_eq!(
                t.verdict.contains("tcp_early_demux"),
                on == 1,
                "{}",
                t.verdict
            );
            // Not the pod's traffic elsewhere: the bastion is fine either way.
            assert!(trace(&n, POD_A, BASTION).works);
        }
    }

    #[test]
    fn strict_pod_to_nodelocal_dns_never_reaches_it() {
        let t = trace(&node(), POD_A, "169.254.20.10");
        assert_eq!(t.forward.egress_kind, Egress::BranchVlan);
        assert!(t.reply.is_empty());
        assert_eq!(t.receiver_security_groups, None);
        assert!(!t.works);
        assert_eq!(
            t.verdict,
            "The packet never reaches 169.254.20.10: 169.254.20.10 is an address only this node has, but the pod's packet leaves through vlan.eth.1, and the VPC does not bring it back."
        );
    }

    /// The garbled verdict of issue 8 ("no security group: the flow stays on the node
    /// decide"), with the #1662 workaround in place: the kernel delivers 169.254.20.10 on
    /// the node for the strict pod and the answer comes back by the rule at 9.
    #[test]
    fn regression_local_delivery_verdict_is_a_sentence() {
        let mut n = node();
        n.routes
            .push(local(101, "169.254.20.10/32", "nodelocaldns"));
        n.rules.insert(
            0,
            rule(
                9,
                Some("169.254.20.10/32"),
                Some("192.168.3.219/32"),
                None,
                101,
            ),
        );
        let t = trace(&n, POD_A, "169.254.20.10");
        assert_eq!(t.forward.egress_kind, Egress::Local);
        assert_eq!(t.forward.table, Some(101));
        assert_eq!(
            t.reply[0].rule.as_ref().map(|r| r.to_string()).as_deref(),
            Some("9: from 169.254.20.10 to 192.168.3.219 lookup 101")
        );
        assert_eq!(
            t.decided_by,
            "No security group: the flow stays on the node."
        );
        assert_eq!(
            t.verdict,
            "The packet reaches 169.254.20.10, and the answer comes back the same way to vlanaaaaaaaaaaa."
        );
        assert!(t.works);
    }

    #[test]
    fn strict_pod_to_another_strict_pod_meets_both_branch_enis() {
        let t = trace(&node(), POD_A, "192.168.26.147");
        assert_eq!(t.receiver_security_groups, Some(Deciders::BranchEni));
        assert_eq!(
            t.decided_by,
            "The security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) decide what leaves, and the target's branch ENI's inbound rules decide what comes in."
        );
        assert_eq!(
            t.verdict,
            "The packet reaches 192.168.26.147; the answer leaves by vlan.eth.7, hairpins through the VPC and comes back in through vlan.eth.1 to vlanaaaaaaaaaaa."
        );
    }

    #[test]
    fn without_an_answer_to_follow_the_verdict_says_so() {
        let n = node();
        let topo = Topology::from_node(&n);
        let pod = topo
            .paths
            .iter()
            .find(|p| p.pod_ip == Some(ip(POD_A)))
            .unwrap();
        let req = Request {
            from: pod,
            to: ip(BASTION),
            proto: Proto::Udp,
            port: Some(53),
        };
        let fwd = Flow {
            iif: Some(A),
            src: Some(ip(POD_A)),
            dst: ip(BASTION),
            ipproto: Some(17),
        };
        let forward = leg(&n, &topo, &fwd, &kernel(&n, &fwd));
        let t = explain(&n, &topo, &req, forward, Vec::new());
        assert_eq!(
            t.verdict,
            "The packet leaves through vlan.eth.1; sgpath has no answer to follow."
        );
        assert_eq!(t.same_path, None);
    }

    #[test]
    fn ordinary_pod_uses_the_node_eni() {
        let t = trace(&node(), "192.168.7.31", BASTION);
        assert_eq!(t.security_groups, Deciders::NodeEni);
        assert_eq!(
            t.decided_by,
            "The security groups of the node ENI eth0 decide."
        );
        assert!(t.works, "{}", t.verdict);
    }

    /// rp_filter on: the kernel refuses the stale-ruled pod's packet (EXDEV); trace names
    /// the rule and table that selected the route and the rule that causes the refusal.
    #[test]
    fn reverse_path_refusal_names_the_stale_rule() {
        let mut n = stale(node());
        n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
        let f = &t.forward;
        assert_eq!(f.error.as_deref(), Some("EXDEV (reverse path filter)"));
        assert_eq!(
            f.rule.as_ref().map(|r| r.to_string()).as_deref(),
            Some("10: from all iif vlanaaaaaaaaaaa lookup 107")
        );
        assert_eq!(f.table, Some(107));
        assert_eq!(
            f.route.as_deref(),
            Some("default via 192.168.0.1 dev vlan.eth.7 table 107")
        );
        assert_eq!(f.cause, f.rule);
        assert_eq!(
            f.why.as_deref(),
            Some(
                "rp_filter is strict (1) on vlanaaaaaaaaaaa, and the route back to the source 192.168.3.219 does not go through vlanaaaaaaaaaaa: for a packet coming in on vlan.eth.7, rule \"10: from all iif vlan.eth.7 lookup 107\" leads to \"default via 192.168.0.1 dev vlan.eth.7 table 107\", out through vlan.eth.7. The cause is rule \"10: from all iif vlanaaaaaaaaaaa lookup 107\": it sends the pod's traffic to table 107, which does not route 192.168.3.219 back through vlanaaaaaaaaaaa."
            )
        );
        assert_eq!(
            t.decided_by,
            "No security group: the node drops the packet before it reaches an ENI."
        );
        assert_eq!(
            t.verdict,
            format!(
                "The node refuses the pod's packet with EXDEV (reverse path filter). {}",
                f.why.as_deref().unwrap()
            )
        );
        assert!(t.reply.is_empty() && !t.works);
    }

    /// The stale rule's table has no `iif` rule for its VLAN: the way back is looked up in
    /// main, yet the pod's own table 101 is the one that routes it, so the stale rule is
    /// still the cause.
    #[test]
    fn reverse_path_refusal_blames_the_stale_rule_when_the_way_back_is_main() {
        let mut n = stale(node());
        n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.7"));
        n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
        assert_eq!(
            t.forward.cause.as_ref().map(|r| r.to_string()).as_deref(),
            Some("10: from all iif vlanaaaaaaaaaaa lookup 107")
        );
        assert!(
            t.forward.why.as_deref().unwrap().contains(
                "rule \"32766: from all lookup main\" leads to \"192.168.0.0/16 dev eth0 scope link\", out through eth0."
            ),
            "{:?}",
            t.forward.why
        );
    }

    /// Kernels with drop reasons answer EINVAL where older ones answered EXDEV: the same
    /// explanation, and a word on the errno.
    #[test]
    fn reverse_path_refusal_reported_as_einval() {
        let mut n = stale(node());
        n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 1);
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::Invalid)));
        let why = t.forward.why.as_deref().unwrap();
        assert!(
            why.starts_with("rp_filter is strict (1) on vlanaaaaaaaaaaa"),
            "{why}"
        );
        assert!(
            why.ends_with("Newer kernels report rp_filter's refusal as EINVAL rather than EXDEV."),
            "{why}"
        );
        assert_eq!(t.forward.cause, t.forward.rule);
        // rp_filter off: EINVAL is something else.
        n.sysctls.0.insert("net.ipv4.conf.all.rp_filter".into(), 0);
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::Invalid)));
        assert_eq!(
            t.forward.why.as_deref(),
            Some(
                "The kernel treats the packet as a martian (an invalid source or destination address)."
            )
        );
    }

    /// A missing `iif vlan.eth.N` rule with rp_filter on: the forward table is right, the
    /// way back is not, and the rule that sends it elsewhere is named.
    #[test]
    fn reverse_path_refusal_without_the_vlan_rule_names_the_main_rule() {
        let mut n = node();
        n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::ReversePath)));
        assert_eq!(
            t.forward.cause.as_ref().map(|r| r.to_string()).as_deref(),
            Some("32766: from all lookup main")
        );
        assert!(
            t.forward.why.as_deref().unwrap().ends_with(
                "The cause is rule \"32766: from all lookup main\": it sends a packet coming in on vlan.eth.1 to table main, which does not route 192.168.3.219 back through vlanaaaaaaaaaaa."
            ),
            "{:?}",
            t.forward.why
        );
    }

    /// rp_filter off: the stale rule's packet leaves by pod B's VLAN, and the VPC drops it.
    #[test]
    fn a_packet_leaving_by_another_pods_vlan_is_dropped_by_the_vpc() {
        let t = trace(&stale(node()), POD_A, BASTION);
        let drop = t.forward.vpc_drop.as_ref().expect("VPC drop");
        assert_eq!((drop.link.as_str(), drop.vlan_id), ("vlan.eth.7", Some(7)));
        assert!(t.reply.is_empty() && !t.works);
        assert_eq!(t.security_groups, Deciders::None);
        assert_eq!(
            t.decided_by,
            "No security group: the VPC drops the packet by its source/destination check before any group sees it."
        );
        assert_eq!(
            t.verdict,
            "The pod's packet goes no further: it leaves by the branch ENI on VLAN 7 (vlan.eth.7), whose only address is 192.168.26.147; its source 192.168.3.219 is not one of them, so the VPC's source/destination check drops it."
        );
    }

    /// Without its `iif vlan<hash>` rule the strict pod's packet falls to the main table and
    /// leaves by eth0, which does not own the pod's address.
    #[test]
    fn a_strict_pod_leaving_by_the_node_eni_is_dropped_unless_snat() {
        let mut n = node();
        n.rules.retain(|r| r.iif.as_deref() != Some(A));
        let t = trace(&n, POD_A, BASTION);
        assert_eq!(
            t.verdict,
            "The pod's packet goes no further: it leaves by the node ENI eth0, whose addresses are 192.168.1.10, 192.168.7.31; its source 192.168.3.219 is not one of them, so the VPC's source/destination check drops it, unless the CNI's SNAT rewrites the source to the node's address, as it does for destinations outside the VPC."
        );
    }

    /// Without `iif vlan.eth.1`, the bastion's answer to pod A follows the main table out
    /// of eth0 with the bastion's address as its source.
    #[test]
    fn an_answer_leaving_by_the_node_eni_is_dropped_by_the_vpc() {
        let mut n = node();
        n.rules.retain(|r| r.iif.as_deref() != Some("vlan.eth.1"));
        let t = trace(&n, POD_A, BASTION);
        assert_eq!(t.reply.len(), 1, "not followed past the VPC drop");
        assert_eq!(t.same_path, Some(false));
        assert_eq!(
            t.verdict,
            "The packet reaches 10.0.1.10, but the answer goes no further: it leaves by the node ENI eth0, whose addresses are 192.168.1.10, 192.168.7.31; its source 10.0.1.10 is not one of them, so the VPC's source/destination check drops it."
        );
    }

    #[test]
    fn an_answer_that_leaves_elsewhere_does_not_work() {
        let n = node();
        let topo = Topology::from_node(&n);
        let pod = topo
            .paths
            .iter()
            .find(|p| p.pod_ip == Some(ip(POD_A)))
            .unwrap();
        let req = Request {
            from: pod,
            to: ip(BASTION),
            proto: Proto::Tcp,
            port: Some(443),
        };
        let fwd = Flow {
            iif: Some(A),
            src: Some(ip(POD_A)),
            dst: ip(BASTION),
            ipproto: Some(6),
        };
        let forward = leg(&n, &topo, &fwd, &kernel(&n, &fwd));
        // An answer that ends on another pod's veth.
        let back = Flow {
            iif: Some("vlan.eth.1"),
            src: Some(ip(BASTION)),
            dst: ip(POD_A),
            ipproto: Some(6),
        };
        let to_b = Ok(uni(107, "192.168.3.219/32", None, B));
        let t = explain(&n, &topo, &req, forward, vec![leg(&n, &topo, &back, &to_b)]);
        assert_eq!(t.same_path, Some(false));
        assert_eq!(
            t.verdict,
            "The packet reaches 10.0.1.10, but the answer leaves through vlanbbbbbbbbbbb instead of going back to vlanaaaaaaaaaaa."
        );
    }

    #[test]
    fn an_answer_refused_on_the_way_back() {
        let mut n = node();
        n.routes
            .retain(|r| !(r.table == 101 && r.dst.addr() == ip(POD_A)));
        n.routes.push(Route {
            scope: RouteScope::Universe,
            ..route(101, "192.168.3.219/32", None, None, RouteKind::Unreachable)
        });
        n.pod_addresses
            .insert(A.into(), vec!["192.168.3.219/32".parse().unwrap()]);
        let t = trace(&n, POD_A, BASTION);
        assert_eq!(
            t.reply[0].rule.as_ref().map(|r| r.to_string()).as_deref(),
            Some("10: from all iif vlan.eth.1 lookup 101")
        );
        assert_eq!(t.same_path, Some(false));
        assert_eq!(
            t.verdict,
            "The packet reaches 10.0.1.10, but the node refuses the answer coming in on vlan.eth.1 with EHOSTUNREACH (host unreachable). Rule \"10: from all iif vlan.eth.1 lookup 101\" leads to table 101, whose route \"unreachable 192.168.3.219 table 101\" makes 192.168.3.219 unreachable."
        );
    }

    #[test]
    fn no_route_names_the_table_that_should_have_one() {
        let mut n = node();
        n.routes.retain(|r| !r.is_default());
        let t = trace(&n, POD_A, BASTION);
        assert_eq!(t.forward.table, Some(101));
        assert_eq!(
            t.verdict,
            "The node refuses the pod's packet with ENETUNREACH (no route). No route to 10.0.1.10: rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" sends the packet to table 101, which has no route for it, and the tables after it (local, main, default) have none either."
        );
    }

    #[test]
    fn forwarding_off_is_said() {
        let mut n = node();
        n.sysctls.0.insert("net.ipv4.ip_forward".into(), 0);
        let t = trace_with(&n, POD_A, BASTION, Some(Err(Refusal::HostUnreachable)));
        assert_eq!(t.forward.table, Some(101), "the rule that chose the route");
        assert_eq!(
            t.forward.why.as_deref(),
            Some(
                "Forwarding is off (net.ipv4.ip_forward = 0), so the node routes nothing that comes in on vlanaaaaaaaaaaa."
            )
        );
    }

    #[test]
    fn an_unreachable_route_is_named() {
        let mut n = node();
        n.routes.push(Route {
            scope: RouteScope::Universe,
            ..route(101, "10.0.0.0/8", None, None, RouteKind::Unreachable)
        });
        let t = trace(&n, POD_A, BASTION);
        assert_eq!(
            t.forward.error.as_deref(),
            Some("EHOSTUNREACH (host unreachable)")
        );
        assert_eq!(
            t.forward.why.as_deref(),
            Some(
                "Rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" leads to table 101, whose route \"unreachable 10.0.0.0/8 table 101\" makes 10.0.1.10 unreachable."
            )
        );
    }

    #[test]
    fn a_martian_source_is_named() {
        let n = node();
        let topo = Topology::from_node(&n);
        let flow = Flow {
            iif: Some(O),
            src: Some(ip(NODE_IP)),
            dst: ip(BASTION),
            ipproto: Some(6),
        };
        let l = leg(&n, &topo, &flow, &Err(Refusal::Invalid));
        assert_eq!(
            l.why.as_deref(),
            Some(
                "The source 192.168.1.10 is an address of this node, so the kernel treats a packet from it coming in on eni3bbf5fcab96 as a martian."
            )
        );
    }

    #[test]
    fn leg_summaries_read_as_evidence() {
        let n = node();
        let topo = Topology::from_node(&n);
        let flow = Flow {
            iif: Some(A),
            src: Some(ip(POD_A)),
            dst: ip(BASTION),
            ipproto: None,
        };
        assert_eq!(
            leg(&n, &topo, &flow, &kernel(&n, &flow)).summary(),
            "rule \"10: from all iif vlanaaaaaaaaaaa lookup 101\" picks \"default via 192.168.0.1 dev vlan.eth.1 table 101\""
        );
        assert_eq!(
            leg(&n, &topo, &flow, &Err(Refusal::NoDevice)).summary(),
            "the kernel refuses it with ENODEV (interface down or gone)"
        );
    }
}
