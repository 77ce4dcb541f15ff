//! The kernel's policy routing walk, replayed over the node's own rules and routes: which
//! rule selects a packet and which route of which table it takes (`fib_rules_lookup`,
//! `fib_table_lookup`). Pure.
//!
//! sgpath asks the kernel itself wherever it can (`ip route get`, see
//! [`Lookup`](super::Lookup)); this replay serves where the kernel's answer is only an
//! errno: when rp_filter refuses a packet (EXDEV) the kernel had already chosen a rule and a
//! route, and the reverse lookup it did to refuse (`fib_validate_source`) is replayed here
//! to say which rule causes the refusal.

use std::net::IpAddr;

use super::{Family, Node, Route, RouteKind, Rule, RuleAction, lookup::Refusal};

/// A packet as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow<'a> {
    /// The interface it came in on; `None` for a packet the node sends itself (it matches
    /// `iif lo`).
    pub iif: Option<&'a str>,
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    /// IP protocol number, for rules with `ipproto`.
    pub ipproto: Option<u8>,
}

/// What the walk ended on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A route of the table the rule looked up (unicast, local, broadcast...).
    Route(&'a Route),
    /// A rule or route that refuses (`unreachable`, `prohibit`, `blackhole`).
    Refused(Refusal),
    /// No table the rules lead to has a route for the destination.
    NoRoute,
}

/// The rule that decided and what it led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection<'a> {
    /// The rule that selected the outcome; `None` when no rule did.
    pub rule: Option<&'a Rule>,
    pub outcome: Outcome<'a>,
    /// Tables looked up in order, for "tried tables 101, local, main".
    pub tables: Vec<u32>,
}

impl Selection<'_> {
    pub fn route(&self) -> Option<&Route> {
        match self.outcome {
            Outcome::Route(r) => Some(r),
            _ => None,
        }
    }
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv6() {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// Whether a rule's selector matches a flow, as `fib_rule_match` decides it. A packet the
/// node sends carries mark 0 and matches `iif lo`; rules with `oif` never match a packet
/// that has no output interface yet.
pub fn selects(rule: &Rule, flow: &Flow<'_>) -> bool {
    let matched = rule
        .iif
        .as_deref()
        .is_none_or(|i| i == flow.iif.unwrap_or("lo"))
        && rule
            .src
            .is_none_or(|n| flow.src.is_some_and(|s| n.contains(&s)))
        && rule.dst.is_none_or(|n| n.contains(&flow.dst))
        && rule
            .fwmark
            .is_none_or(|m| m & rule.fwmask.unwrap_or(u32::MAX) == 0)
        && rule.ipproto.is_none_or(|p| flow.ipproto == Some(p))
        && rule.oif.is_none();
    // FIB_RULE_INVERT (`not ...`) negates the whole selector.
    matched != rule.invert
}

/// The rules of a family in the order the kernel walks them (by priority; rules of equal
/// priority in the order the kernel lists them).
pub fn ordered(node: &Node, family: Family) -> impl Iterator<Item = &Rule> {
    node.rules_in_order(family)
}

/// The longest-prefix route for `dst` in one table; among routes of equal prefix the
/// first the kernel lists (its preferred one).
pub fn route_in(node: &Node, table: u32, dst: IpAddr) -> Option<&Route> {
    let family = family_of(dst);
    let mut best: Option<&Route> = None;
    for r in node
        .table(table)
        .filter(|r| r.family == family && r.dst.contains(&dst))
    {
        if best.is_none_or(|b| r.dst.prefix_len() > b.dst.prefix_len()) {
            best = Some(r);
        }
    }
    best
}

/// Walk the rules for a flow, as the kernel's `fib_lookup` does.
pub fn select<'a>(node: &'a Node, flow: &Flow<'_>) -> Selection<'a> {
    let mut tables = Vec::new();
    for rule in ordered(node, family_of(flow.dst)) {
        if !selects(rule, flow) {
            continue;
        }
        let refused = match rule.action {
            RuleAction::Lookup => {
                tables.push(rule.table);
                match route_in(node, rule.table, flow.dst) {
                    None => continue,
                    Some(r) => match r.kind {
                        // `throw`: go on with the next rule.
                        RouteKind::Throw => continue,
                        RouteKind::Unreachable => Refusal::HostUnreachable,
                        RouteKind::Prohibit => Refusal::Prohibited,
                        RouteKind::Blackhole => Refusal::Invalid,
                        _ => {
                            return Selection {
                                rule: Some(rule),
                                outcome: Outcome::Route(r),
                                tables,
                            };
                        }
                    },
                }
            }
            RuleAction::Unreachable => Refusal::NetUnreachable,
            RuleAction::Prohibit => Refusal::Prohibited,
            RuleAction::Blackhole => Refusal::Invalid,
            RuleAction::Goto | RuleAction::Nop | RuleAction::Other(_) => continue,
        };
        return Selection {
            rule: Some(rule),
            outcome: Outcome::Refused(refused),
            tables,
        };
    }
    Selection {
        rule: None,
        outcome: Outcome::NoRoute,
        tables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RouteScope, TABLE_LOCAL, TABLE_MAIN};

    fn rule(priority: u32, iif: Option<&str>, table: u32) -> Rule {
        crate::model::fixtures::rule(priority, None, None, iif, table)
    }

    fn route(table: u32, dst: &str, dev: &str, kind: RouteKind) -> Route {
        Route {
            family: Family::Ipv4,
            table,
            dst: dst.parse().unwrap(),
            gateway: None,
            oif: Some(dev.into()),
            scope: RouteScope::Universe,
            kind,
            prefsrc: None,
        }
    }

    fn node() -> Node {
        Node {
            rules: vec![
                rule(10, Some("vlana"), 101),
                rule(20, None, TABLE_LOCAL),
                rule(32766, None, TABLE_MAIN),
            ],
            routes: vec![
                route(101, "0.0.0.0/0", "vlan.eth.1", RouteKind::Unicast),
                route(101, "192.168.3.219/32", "vlana", RouteKind::Unicast),
                route(TABLE_LOCAL, "192.168.1.10/32", "eth0", RouteKind::Local),
                route(TABLE_MAIN, "0.0.0.0/0", "eth0", RouteKind::Unicast),
            ],
            ..Default::default()
        }
    }

    fn flow<'a>(iif: Option<&'a str>, dst: &str) -> Flow<'a> {
        Flow {
            iif,
            src: Some("192.168.3.219".parse().unwrap()),
            dst: dst.parse().unwrap(),
            ipproto: Some(6),
        }
    }

    #[test]
    fn the_iif_rule_wins_before_the_local_rule() {
        let n = node();
        let s = select(&n, &flow(Some("vlana"), "192.168.1.10"));
        assert_eq!(s.rule.map(|r| r.priority), Some(10));
        assert_eq!(s.route().and_then(|r| r.oif.as_deref()), Some("vlan.eth.1"));
        assert_eq!(s.tables, [101]);
    }

    #[test]
    fn a_table_without_a_route_falls_through_to_the_next_rule() {
        let mut n = node();
        n.routes.retain(|r| !(r.table == 101 && r.is_default()));
        let s = select(&n, &flow(Some("vlana"), "10.0.1.10"));
        assert_eq!(s.rule.map(|r| r.table), Some(TABLE_MAIN));
        assert_eq!(s.tables, [101, TABLE_LOCAL, TABLE_MAIN]);
    }

    #[test]
    fn the_node_itself_matches_iif_lo_and_not_the_pod_rule() {
        let n = node();
        let s = select(&n, &flow(None, "10.0.1.10"));
        assert_eq!(s.rule.map(|r| r.table), Some(TABLE_MAIN));
    }

    #[test]
    fn unreachable_routes_and_rules_refuse() {
        let mut n = node();
        n.routes
            .push(route(101, "10.0.0.0/8", "lo", RouteKind::Unreachable));
        let s = select(&n, &flow(Some("vlana"), "10.0.1.10"));
        assert_eq!(s.outcome, Outcome::Refused(Refusal::HostUnreachable));
        n.rules.insert(
            0,
            Rule {
                action: RuleAction::Prohibit,
                ..rule(5, Some("vlana"), 0)
            },
        );
        let s = select(&n, &flow(Some("vlana"), "10.0.1.10"));
        assert_eq!(s.outcome, Outcome::Refused(Refusal::Prohibited));
        assert_eq!(s.rule.map(|r| r.priority), Some(5));
    }

    #[test]
    fn nothing_routes_it() {
        let mut n = node();
        n.routes.retain(|r| !r.is_default());
        let s = select(&n, &flow(None, "10.0.1.10"));
        assert_eq!((s.rule, s.outcome), (None, Outcome::NoRoute));
    }
}
