//! Text rendering of a [`Trace`].

use std::fmt::Write as _;

use crate::model::trace::{Inbound, Leg, Trace};

fn leg(out: &mut String, title: &str, l: &Leg) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  in on:   {}",
        l.ingress.as_deref().unwrap_or("(sent by the node itself)")
    );
    let rule = l.rule.as_ref().map_or("-".to_string(), |r| r.to_string());
    let _ = writeln!(out, "  rule:    {rule}");
    let _ = writeln!(out, "  route:   {}", l.route.as_deref().unwrap_or("-"));
    match &l.error {
        Some(e) => {
            let _ = writeln!(out, "  refused: {e}");
            if let Some(why) = &l.why {
                let _ = writeln!(out, "  why:     {why}");
            }
            if let Some(cause) = &l.cause {
                let _ = writeln!(out, "  cause:   {cause}");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "  out via: {} ({})",
                l.egress.as_deref().unwrap_or("-"),
                l.egress_kind.describe()
            );
            if let Some(eni) = &l.vpc_drop {
                let _ = writeln!(
                    out,
                    "  dropped: by the VPC's source/destination check: {} is not an address of {}",
                    l.src.map_or("?".to_string(), |s| s.to_string()),
                    eni.describe()
                );
            }
        }
    }
}

/// Render a trace for a terminal.
pub fn render(t: &Trace) -> String {
    let mut out = String::new();
    let port = t.port.map_or(String::new(), |p| format!(":{p}"));
    let _ = writeln!(
        out,
        "{} ({}, {}) -> {}{port}/{}",
        t.from.pod_ip.map_or("?".into(), |i| i.to_string()),
        t.from.host_veth,
        t.from.kind.as_str(),
        t.to,
        t.proto.as_str()
    );
    leg(&mut out, "forward", &t.forward);
    let _ = writeln!(out, "security groups: {}", t.decided_by);
    for (i, r) in t.reply.iter().enumerate() {
        leg(
            &mut out,
            if i == 0 {
                "reply"
            } else {
                "reply, back from the VPC"
            },
            r,
        );
    }
    let _ = writeln!(out, "verdict: {}", t.verdict);
    out
}

/// A request from an address that is no pod here to a pod here, then the pod's answer.
pub fn render_inbound(t: &Inbound) -> String {
    let mut out = String::new();
    let port = t.port.map_or(String::new(), |p| format!(":{p}"));
    let _ = writeln!(
        out,
        "{} -> {}{port}/{} ({}, {})",
        t.from,
        t.to.pod_ip.map_or("?".into(), |i| i.to_string()),
        t.proto.as_str(),
        t.to.host_veth,
        t.to.kind.as_str()
    );
    leg(&mut out, "request", &t.arrival);
    let _ = writeln!(out, "security groups: {}", t.decided_by);
    let _ = writeln!(out, "the pod's answer:");
    for line in render(&t.answer).lines().skip(1) {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "verdict: {}", t.verdict);
    out
}

/// The security groups' verdict on a traced flow (`trace --ec2`), or why there is none.
pub fn render_security_groups(
    flow: &crate::model::sg::Flow,
    verdict: &Result<crate::model::sg::Verdict, String>,
) -> String {
    use crate::model::sg::Verdict;
    let mut out = format!("\nsecurity groups (read from EC2), {flow}:\n");
    match verdict {
        Err(reason) => out += &format!("  not judged: {reason}\n"),
        Ok(Verdict::Denied(m)) if m.is_confirmed() => {
            out += &format!("  DENIED: {}\n  fix: {}\n", m.summary(), m.remediation());
        }
        // Not proven: the command is what would admit it, not a known cause.
        Ok(Verdict::Denied(m)) => {
            out += &format!(
                "  DENIED, UNVERIFIED: {}\n  if that is the cause: {}\n",
                m.summary(),
                m.remediation()
            );
        }
        Ok(Verdict::Allowed { egress, ingress }) => {
            out += "  allowed\n";
            for (what, a, addr) in [("egress", egress, flow.src), ("ingress", ingress, flow.dst)] {
                out += &match a {
                    Some(a) => format!("  {what}: {} ({})\n", a.group, a.rule),
                    None => {
                        format!("  {what}: {addr} is no ENI with groups sgpath read (not judged)\n")
                    }
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Path, PathKind, PathRule,
        eni::{Eni, EniKind},
        trace::{Deciders, Egress, Proto},
    };

    fn leg_to(egress: Option<&str>) -> Leg {
        Leg {
            ingress: Some("vlanaaaaaaaaaaa".into()),
            src: Some("192.168.3.219".parse().unwrap()),
            dst: "10.0.1.10".parse().unwrap(),
            rule: Some(PathRule {
                priority: 10,
                selector: "from all iif vlanaaaaaaaaaaa".into(),
                table: 107,
            }),
            table: Some(107),
            route: Some("default via 192.168.0.1 dev vlan.eth.7 table 107".into()),
            egress: egress.map(String::from),
            egress_kind: if egress.is_some() {
                Egress::BranchVlan
            } else {
                Egress::Refused
            },
            error: None,
            why: None,
            cause: None,
            vpc_drop: None,
        }
    }

    fn trace(forward: Leg) -> Trace {
        Trace {
            schema: "sgpath.trace/v1",
            from: Path {
                kind: PathKind::BranchEni,
                mode: None,
                pod_ip: Some("192.168.3.219".parse().unwrap()),
                host_veth: "vlanaaaaaaaaaaa".into(),
                vlan_id: Some(1),
                vlan_link: Some("vlan.eth.1".into()),
                trunk: Some("eth1".into()),
                route_table: 107,
                rules: Vec::new(),
                eni_id: None,
                pod: None,
                counters: None,
                window: None,
            },
            to: "10.0.1.10".parse().unwrap(),
            proto: Proto::Tcp,
            port: Some(80),
            forward,
            security_groups: Deciders::None,
            receiver_security_groups: None,
            decided_by: "No security group: the node drops the packet before it reaches an ENI."
                .into(),
            reply: Vec::new(),
            same_path: None,
            works: false,
            verdict: "The node refuses the pod's packet.".into(),
        }
    }

    #[test]
    fn a_refusal_shows_the_rule_the_route_and_why() {
        let mut l = leg_to(None);
        l.error = Some("EXDEV (reverse path filter)".into());
        l.why = Some("rp_filter is strict (1) on vlanaaaaaaaaaaa.".into());
        l.cause = l.rule.clone();
        let t = render(&trace(l));
        assert!(
            t.contains(
                "  rule:    10: from all iif vlanaaaaaaaaaaa lookup 107\n  route:   default via 192.168.0.1 dev vlan.eth.7 table 107\n  refused: EXDEV (reverse path filter)\n  why:     rp_filter is strict (1) on vlanaaaaaaaaaaa.\n  cause:   10: from all iif vlanaaaaaaaaaaa lookup 107\n"
            ),
            "{t}"
        );
        assert!(
            t.ends_with("verdict: The node refuses the pod's packet.\n"),
            "{t}"
        );
    }

    #[test]
    fn a_vpc_drop_names_the_eni() {
        let mut l = leg_to(Some("vlan.eth.7"));
        l.vpc_drop = Some(Eni {
            link: "vlan.eth.7".into(),
            kind: EniKind::Branch,
            vlan_id: Some(7),
            owns: vec!["192.168.26.147".parse().unwrap()],
            id: None,
        });
        let t = render(&trace(l));
        assert!(
            t.contains("  out via: vlan.eth.7 (leaves the node by a branch ENI)\n  dropped: by the VPC's source/destination check: 192.168.3.219 is not an address of the branch ENI on VLAN 7 (vlan.eth.7)\n"),
            "{t}"
        );
    }

    #[test]
    fn security_groups_verdicts() {
        use crate::model::sg::{Catalog, Flow, SecurityGroup};
        let pod = "192.168.3.219".parse().unwrap();
        let bastion = "10.0.1.10".parse().unwrap();
        let mut c = Catalog::default();
        c.insert_group(SecurityGroup::new("sg-pod"));
        c.insert_eni(pod, "eni-b", &["sg-pod"]);
        c.vpc_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
        let out = Flow::tcp(pod, bastion, 80);
        assert_eq!(
            render_security_groups(&out, &Ok(c.judge(&out))),
            "\nsecurity groups (read from EC2), tcp/80 192.168.3.219 -> 10.0.1.10:\n  allowed\n  \
             egress: sg-pod (all traffic 0.0.0.0/0)\n  ingress: 10.0.1.10 is no ENI with groups \
             sgpath read (not judged)\n"
        );
        let inbound = Flow::tcp(bastion, pod, 80);
        let text = render_security_groups(&inbound, &Ok(c.judge(&inbound)));
        assert!(
            text.contains("DENIED: sg-pod admits no tcp/80 from 10.0.1.10\n  fix: aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol tcp --port 80 --cidr 10.0.1.10/32"),
            "{text}"
        );
        // From inside the VPC, an address sgpath did not look up: not proven.
        let inside = Flow::tcp("192.168.9.9".parse().unwrap(), pod, 80);
        let text = render_security_groups(&inside, &Ok(c.judge(&inside)));
        assert!(
            text.contains("DENIED, UNVERIFIED: sg-pod admits no tcp/80 from 192.168.9.9 (unverified: sgpath has not looked 192.168.9.9 up in EC2")
                && text.contains("\n  if that is the cause: aws ec2 authorize-security-group-ingress"),
            "{text}"
        );
        assert!(
            render_security_groups(&inbound, &Err("no AWS region".into()))
                .contains("not judged: no AWS region")
        );
    }
}
