//! Why the kernel refused a route lookup. The kernel says only the errno; the node's own
//! rules and routes, walked as the kernel walks them ([`fib`]), say which rule led where
//! and what refused the packet: an unreachable or prohibit route, a missing table, or the
//! reverse-path filter (EXDEV) with the rule that causes it.

use std::net::IpAddr;

use crate::model::{
    Family, Node, RouteKind, Rule, Sysctls, TABLE_LOCAL, cni,
    fib::{self, Flow, Outcome, Selection},
    lookup::Refusal,
    rule::table_name,
};

/// `10: from all iif vlan.eth.1 lookup 101`, quoted.
fn quoted(r: &Rule) -> String {
    format!("rule \"{r}\"")
}

/// Why the kernel refused a lookup, in plain words, and the rule that causes it. The
/// kernel says only the errno; the node's rules and routes, walked as the kernel walks
/// them, say where the packet was going and what refused it.
pub(super) fn why_refused<'a>(
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
                r.lookup_table().is_some_and(|t| t != TABLE_LOCAL) && fib::selects(r, flow)
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
            let off = node.sysctls.get(Sysctls::IP_FORWARD) == Some(0);
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
    let home_is_a_branch_table = node
        .routes_via(on)
        .any(|r| r.is_host() && r.dst.addr() == src && cni::vlan_of_table(r.table).is_some());
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

fn family(ip: IpAddr) -> Family {
    if ip.is_ipv6() {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// Capitalise the first letter of a sentence.
fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
