//! Drops inside the VPC, inferred from what a node can see: connections that left a pod's
//! path and were never answered, and branch traffic that left by the wrong interface.
//! Only `observe` fills the counters these read; `inspect` raises none of them.
//!
//! | finding                    | path            | counter                                   |
//! |----------------------------|-----------------|-------------------------------------------|
//! | `sg-suspected-block`       | branch, node ENI| `from_pod.syn_unanswered` (any port)      |
//! | `dns-path-broken`          | branch, node ENI| `from_pod.dns_unanswered`                 |
//! | `probe-path-broken`        | branch          | `to_pod.syn_unanswered` (the node's SYNs) |
//! | `branch-traffic-off-vlan`  | branch          | `from_pod.left_via` not its `vlan.eth.N`  |
//!
//! An ordinary pod (node ENI path) leaves by a node ENI, whose groups decide its flows: the
//! most common security-groups-for-pods failure is a pod that should have been a branch pod
//! (a label typo, a policy in another namespace, a pod created before its policy) whose
//! database admits the policy's group and not the node's. Its unanswered flows raise
//! `sg-suspected-block` from [`ORDINARY_MIN_UNANSWERED`] connections in a window, and name
//! the SecurityGroupPolicy whose groups would have been admitted. The node's probes of an
//! ordinary pod never leave the node: no group sees them, so they raise nothing here.
//!
//! With the groups' rules read from EC2 ([`super::security_groups::fresh`]) each unanswered
//! flow is judged: a denial the rules prove *confirms* the finding (severity error, the
//! missing rule quoted, the `aws ec2 authorize-security-group-*` command as the fix); a
//! denial they cannot prove (the far end not an ENI sgpath read, a group it could not read)
//! is evidence marked unverified and the finding stays suspected; rules that admit it say so
//! and point past the groups (the far end's groups, the subnets' network ACLs, the
//! application).

use super::{Finding, FindingId, Severity};
use std::collections::BTreeMap;

use crate::model::{
    Node, Path, PathKind, Port, Topology,
    conns::{Conn, Unanswered},
    k8s::{Cluster, Pod},
    sg::{Catalog, Direction, Flow, Missing, Verdict},
};

/// Unanswered connections out of an ordinary pod, in one window, before its path raises
/// `sg-suspected-block`: the node's groups are everyone's, so one lost SYN to a host that
/// went away is not a page; a pod retrying a database is (connections, not SYNs: the
/// retransmits of one connection count once).
pub const ORDINARY_MIN_UNANSWERED: u64 = 3;

/// What the groups' rules say of the unanswered flows of one finding.
enum Judged {
    /// Rules were not read (or not current): the finding stays suspected.
    Unknown,
    /// At least one flow is denied and the rules prove it: the missing rules, first one
    /// first.
    Confirmed(Vec<Missing>),
    /// Denied by what sgpath read, but not proven ([`Missing::doubts`]).
    Unverified(Vec<Missing>),
    /// Every flow is admitted: one line per flow naming the rules that admit it.
    Allowed(Vec<String>),
}

fn judge(node: &Node, flows: &[Flow]) -> Judged {
    let Some(catalog) = super::security_groups::fresh(node) else {
        return Judged::Unknown;
    };
    if flows.is_empty() {
        return Judged::Unknown;
    }
    let mut confirmed = Vec::new();
    let mut unverified = Vec::new();
    let mut allowed = Vec::new();
    for f in flows {
        match catalog.judge(f) {
            Verdict::Denied(m) if m.is_confirmed() => confirmed.push(m),
            Verdict::Denied(m) => unverified.push(m),
            Verdict::Allowed { egress, ingress } => {
                allowed.push(allowed_line(catalog, f, egress.as_ref(), ingress.as_ref()))
            }
        }
    }
    if !confirmed.is_empty() {
        Judged::Confirmed(confirmed)
    } else if !unverified.is_empty() {
        Judged::Unverified(unverified)
    } else {
        Judged::Allowed(allowed)
    }
}

fn allowed_line(
    catalog: &Catalog,
    flow: &Flow,
    egress: Option<&crate::model::sg::Admitted>,
    ingress: Option<&crate::model::sg::Admitted>,
) -> String {
    let side =
        |a: Option<&crate::model::sg::Admitted>, addr: std::net::IpAddr, d: Direction| match a {
            Some(a) => format!(
                "{} {} ({})",
                a.group,
                if d == Direction::Egress {
                    "lets it out"
                } else {
                    "admits it"
                },
                a.rule
            ),
            None if catalog.groups_of(addr).is_none() => {
                format!("{addr} is no ENI sgpath read (its own groups are not judged)")
            }
            None => format!("{addr}'s ENI has no groups"),
        };
    format!(
        "the security groups' rules allow {flow}: {}; {}",
        side(egress, flow.src, Direction::Egress),
        side(ingress, flow.dst, Direction::Ingress)
    )
}

/// Evidence and fix of a finding the rules decided; `Err` with the finding (and any
/// unverified evidence) when they did not prove anything, so the caller's own fix applies.
fn verdict(f: Finding, judged: Judged) -> Result<Finding, Finding> {
    match judged {
        Judged::Unknown => Err(f),
        Judged::Unverified(missing) => {
            let mut f = f;
            for m in &missing {
                f = f.evidence(format!(
                    "not proven by the security groups' rules: {}",
                    m.summary()
                ));
            }
            Err(f)
        }
        Judged::Confirmed(missing) => {
            let mut f = f;
            f.severity = Severity::Error;
            let fix = missing[0].remediation();
            for m in &missing {
                f = f.evidence(format!(
                    "confirmed by the security groups' rules: {}",
                    m.summary()
                ));
            }
            Ok(f.fix(fix))
        }
        Judged::Allowed(lines) => {
            let mut f = f;
            for l in lines {
                f = f.evidence(l);
            }
            Ok(f.fix(
                "the rules allow it: look past the groups: the destination's own security groups \
                 (when it is no ENI sgpath read), the subnets' network ACLs (aws ec2 \
                 describe-network-acls --filters Name=association.subnet-id,Values=<subnet>), \
                 or the application (is it listening and answering?)",
            ))
        }
    }
}

/// The pod's first security group from the policies selecting it (`sgpath agent` with a
/// cluster), or a placeholder.
fn group(p: &Path) -> String {
    p.pod
        .as_ref()
        .and_then(|r| r.security_groups.first().cloned())
        .unwrap_or_else(|| "<the pod's security group>".to_owned())
}

/// ` (the pod also has sg-2, sg-3: any of them may hold the rule)` when it has several.
fn other_groups(p: &Path) -> String {
    match p.pod.as_ref().map(|r| &r.security_groups[..]) {
        Some([_, rest @ ..]) if !rest.is_empty() => format!(
            " (the pod also has {}: any of its groups may hold the rule)",
            rest.join(", ")
        ),
        _ => String::new(),
    }
}

pub fn sg_suspected_block(node: &Node, topo: &Topology) -> Vec<Finding> {
    pod_paths(topo)
        .filter_map(|(p, subject)| {
            let c = p.judged()?;
            let d = &c.from_pod;
            // Unanswered only: a refused connection proves the groups let it through.
            let lost = lost_or_ports(&d.unanswered, Conn::Syn, &d.syn_unanswered);
            let (first_flow, first_port, _) = lost.first()?.clone();
            if p.kind == PathKind::NodeEni
                && lost.iter().map(|(_, _, n)| n).sum::<u64>() < ORDINARY_MIN_UNANSWERED
            {
                return None;
            }
            let mut f = Finding::new(FindingId::SgSuspectedBlock, Severity::Warning, subject);
            for (u, port, n) in &lost {
                f = f.evidence(match u {
                    Some(u) => format!(
                        "{n} TCP connection(s) from {} to {}:{port} left {} and got no SYN-ACK",
                        u.source,
                        u.destination,
                        via(p)
                    ),
                    None => format!(
                        "{n} TCP connection(s) to port {port} left {} and got no SYN-ACK",
                        via(p)
                    ),
                });
            }
            f = f.evidence(answered(&d.syn_answered));
            if let Some(r) = refused(&d.syn_refused) {
                f = f.evidence(r);
            }
            let flows: Vec<Flow> = lost
                .iter()
                .filter_map(|(u, port, _)| match (u, port) {
                    (Some(u), Port::Number(n)) => Some(Flow::tcp(u.source, u.destination, *n)),
                    _ => None,
                })
                .collect();
            let missed = missed_policies(node, p, &flows);
            for line in &missed {
                f = f.evidence(line.clone());
            }
            let f = match verdict(f, judge(node, &flows)) {
                Ok(f) if missed.is_empty() => return Some(f),
                Ok(f) | Err(f) if !missed.is_empty() => {
                    return Some(f.fix(
                        "the pod left by the node ENI because no SecurityGroupPolicy gave it a \
                         branch ENI: fix the policy's selector (or the pod's labels or service \
                         account) so it selects the pod, then recreate the pod (a policy applies \
                         to pods created after it); kubectl get pod <pod> -o \
                         jsonpath='{.metadata.annotations.vpc\\.amazonaws\\.com/pod-eni}' shows \
                         its branch ENI",
                    ));
                }
                Ok(f) | Err(f) => f,
            };
            let dst = first_flow.map_or_else(|| "<peer>".to_owned(), |u| u.destination.to_string());
            if p.kind == PathKind::NodeEni {
                return Some(f.fix(format!(
                    "the pod leaves by the node ENI: the node's security groups must allow this \
                     out and {dst}'s in (when {dst} is an ENI in the VPC, the node's group as its \
                     source: aws ec2 authorize-security-group-ingress --group-id <{dst}'s group> \
                     --protocol tcp --port {first_port} --source-group <the node's group>); or give \
                     the pod its own groups with a SecurityGroupPolicy"
                )));
            }
            Some(f.fix(format!(
                "the branch ENI's security groups must allow this out, and the peer's in: \
                 aws ec2 authorize-security-group-egress --group-id {group} \
                 --ip-permissions 'IpProtocol=tcp,FromPort={port},ToPort={port},IpRanges=[{{CidrIp={dst}/32}}]' \
                 (and the same as ingress on {dst}'s security group; when {dst} is an ENI in the \
                 VPC, referencing the groups instead of the address: UserIdGroupPairs=[{{GroupId=<{dst}'s group>}}]){others}",
                port = first_port,
                group = group(p),
                others = other_groups(p),
            )))
        })
        .collect()
}

/// For an ordinary pod whose flows the node's groups do not admit: the SecurityGroupPolicies
/// whose groups would have been admitted, and why each did not give the pod a branch ENI.
/// Empty for branch pods, without rules or a cluster, or when the node's groups admit it.
fn missed_policies(node: &Node, p: &Path, flows: &[Flow]) -> Vec<String> {
    let (Some(catalog), Some(cluster), Some(pod_ref)) = (
        super::security_groups::fresh(node),
        node.cluster.as_deref(),
        p.pod.as_ref(),
    ) else {
        return Vec::new();
    };
    if p.kind != PathKind::NodeEni {
        return Vec::new();
    }
    let Some(pod) = cluster
        .pods
        .iter()
        .find(|q| q.namespace == pod_ref.namespace && q.name == pod_ref.name)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for flow in flows {
        if catalog.judge(flow).is_allowed() {
            continue;
        }
        for policy in &cluster.policies {
            let Ok(spec) = &policy.spec else { continue };
            let Verdict::Allowed { ingress, .. } = catalog.judge_from_groups(flow, &spec.group_ids)
            else {
                continue;
            };
            let by = ingress.map_or_else(String::new, |a| {
                format!(" ({} admits it: {})", a.group, a.rule)
            });
            out.push(format!(
                "SecurityGroupPolicy {}/{} gives {}, which would be admitted for {flow}{by}; {}",
                policy.namespace,
                policy.name,
                spec.group_ids.join(", "),
                why_not_selected(cluster, policy, pod)
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Why `policy` did not give `pod` its groups, as an operator checks it.
fn why_not_selected(
    cluster: &Cluster,
    policy: &crate::model::k8s::SecurityGroupPolicy,
    pod: &Pod,
) -> String {
    let key = pod.key();
    if policy.namespace != pod.namespace {
        return format!(
            "it is in namespace {}, and a policy selects pods of its own namespace only: pod \
             {key} is in {}",
            policy.namespace, pod.namespace
        );
    }
    if cluster
        .policies_for(pod)
        .any(|(q, _)| q.namespace == policy.namespace && q.name == policy.name)
    {
        return format!(
            "it selects pod {key}, which still has no branch ENI: the pod was created before \
             the policy, or the VPC resource controller could not attach one (kubectl describe \
             pod {key}; recreate it)"
        );
    }
    format!(
        "it does not select pod {key} (neither its podSelector nor its serviceAccountSelector \
         matches the pod's labels {:?} and service account {:?}); no SecurityGroupPolicy \
         selects the pod",
        pod.labels, pod.service_account
    )
}

pub fn dns_path_broken(node: &Node, topo: &Topology) -> Vec<Finding> {
    pod_paths(topo)
        .filter_map(|(p, subject)| {
            let c = p.judged().filter(|c| c.from_pod.dns_unanswered > 0)?;
            let mut f = Finding::new(FindingId::DnsPathBroken, Severity::Warning, subject)
                .evidence(format!(
                    "{} of {} DNS queries left {} unanswered",
                    c.from_pod.dns_unanswered,
                    c.from_pod.dns_unanswered + c.from_pod.dns_answered,
                    via(p)
                ));
            let queries = lost(&c.from_pod.unanswered, Conn::Dns);
            for u in &queries {
                f = f.evidence(format!(
                    "{} quer(ies) from {} to {}:53 unanswered",
                    u.count, u.source, u.destination
                ));
            }
            let flows: Vec<Flow> = queries
                .iter()
                .map(|u| Flow::udp(u.source, u.destination, 53))
                .collect();
            let f = match verdict(f, judge(node, &flows)) {
                Ok(f) => return Some(f),
                Err(f) => f,
            };
            Some(f.fix(format!(
                "the pod's security group must allow UDP and TCP 53 out to CoreDNS (and CoreDNS's \
                 security group them in): aws ec2 authorize-security-group-egress --group-id \
                 {} --ip-permissions \
                 'IpProtocol=udp,FromPort=53,ToPort=53,IpRanges=[{{CidrIp=<VPC CIDR>}}]' \
                 'IpProtocol=tcp,FromPort=53,ToPort=53,IpRanges=[{{CidrIp=<VPC CIDR>}}]'{}",
                group(p),
                other_groups(p)
            )))
        })
        .collect()
}

pub fn probe_path_broken(node: &Node, topo: &Topology) -> Vec<Finding> {
    branch_paths(topo)
        .filter_map(|(p, subject)| {
            let c = p.judged()?;
            let lost = lost(&c.to_pod.unanswered, Conn::Syn);
            if lost.is_empty() {
                return None;
            }
            let mut f = Finding::new(FindingId::ProbePathBroken, Severity::Error, subject);
            for u in &lost {
                f = f.evidence(format!(
                    "{} TCP connection(s) from the node ({}) to {}:{} got no SYN-ACK",
                    u.count, u.source, u.destination, u.port
                ));
            }
            if node.sysctls.get(crate::model::Sysctls::TCP_EARLY_DEMUX) == Some(1) {
                f = f.evidence("net.ipv4.tcp_early_demux = 1 (the answers of a strict pod come back through the VPC and are dropped)");
            }
            let flows: Vec<Flow> = lost
                .iter()
                .map(|u| Flow::tcp(u.source, u.destination, u.port))
                .collect();
            let early_demux = node.sysctls.get(crate::model::Sysctls::TCP_EARLY_DEMUX) == Some(1);
            let f = match verdict(f, judge(node, &flows)) {
                Ok(mut f) => {
                    if early_demux && f.severity != Severity::Error {
                        f.remediation.push_str(
                            "; with tcp_early_demux on, the answers are dropped on the node: \
                             kubectl set env daemonset aws-node -n kube-system -c \
                             aws-vpc-cni-init DISABLE_TCP_EARLY_DEMUX=true",
                        );
                    }
                    return Some(f);
                }
                Err(f) => f,
            };
            let u = lost[0];
            Some(f.fix(format!(
                "kubelet probes fail: the pod's security group must admit the node's: aws ec2 \
                 authorize-security-group-ingress --group-id {group} \
                 --ip-permissions 'IpProtocol=tcp,FromPort={port},ToPort={port},IpRanges=[{{CidrIp={src}/32}}]' \
                 (or the node's security group as the source); with tcp_early_demux on, also \
                 kubectl set env daemonset aws-node -n kube-system -c aws-vpc-cni-init DISABLE_TCP_EARLY_DEMUX=true{others}",
                port = u.port,
                src = u.source,
                group = group(p),
                others = other_groups(p),
            )))
        })
        .collect()
}

pub fn off_vlan(_: &Node, topo: &Topology) -> Vec<Finding> {
    branch_paths(topo)
        .filter_map(|(p, subject)| {
            let c = p.judged()?;
            let off: Vec<(&String, &u64)> = c
                .from_pod
                .left_via
                .iter()
                .filter(|(dev, n)| Some(dev.as_str()) != p.vlan_link.as_deref() && **n > 0)
                .collect();
            if off.is_empty() {
                return None;
            }
            let mut f = Finding::new(FindingId::BranchTrafficOffVlan, Severity::Error, subject);
            for (dev, n) in off {
                f = f.evidence(format!(
                    "{n} packet(s) from the pod left the node by {dev}, not by {}",
                    p.vlan_link.as_deref().unwrap_or("its VLAN (missing)")
                ));
            }
            Some(f.fix(format!(
                "the branch ENI's security groups are bypassed and the VPC judges these packets \
                 as the node's (or drops them): restore the pod's rule `ip rule add iif {} \
                 table {} prio 10` (the VPC CNI adds it; recreate the pod)",
                p.host_veth, p.route_table
            )))
        })
        .collect()
}

/// Branch paths with their subject (the pod IP, else the host veth).
fn branch_paths(topo: &Topology) -> impl Iterator<Item = (&Path, String)> {
    pod_paths(topo).filter(|(p, _)| p.kind == PathKind::BranchEni)
}

/// Every pod's path (branch and node ENI) with its subject (the pod IP, else the host veth).
fn pod_paths(topo: &Topology) -> impl Iterator<Item = (&Path, String)> {
    topo.paths.iter().map(|p| {
        let subject = p
            .pod_ip
            .map_or_else(|| p.host_veth.clone(), |ip| ip.to_string());
        (p, subject)
    })
}

fn lost(list: &[Unanswered], kind: Conn) -> Vec<&Unanswered> {
    list.iter().filter(|u| u.kind == kind).collect()
}

fn via(p: &Path) -> String {
    match (&p.vlan_link, p.kind) {
        (Some(v), _) => format!("the pod's path ({} on {v})", p.host_veth),
        (None, PathKind::NodeEni) => {
            format!("the pod's path ({}, by a node ENI)", p.host_veth)
        }
        (None, _) => format!("the pod's path ({})", p.host_veth),
    }
}

fn answered(by_port: &BTreeMap<Port, u64>) -> String {
    if by_port.is_empty() {
        return "no connection out of this path was answered".into();
    }
    format!("answered connections by port: {}", ports(by_port))
}

fn ports(by_port: &BTreeMap<Port, u64>) -> String {
    let ports: Vec<String> = by_port.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    ports.join(", ")
}

/// Evidence that some connections were refused: something answered them (a RST from a
/// closed port or a REJECT rule, or an ICMP unreachable quoting the request). Security
/// groups drop silently, so the groups let these requests through; nothing more is proven.
fn refused(by_port: &BTreeMap<Port, u64>) -> Option<String> {
    (!by_port.is_empty()).then(|| {
        format!(
            "refused (something answered with a RST or an ICMP unreachable: a closed port or a \
             REJECT rule; security groups drop silently, so they let these through): {}",
            ports(by_port)
        )
    })
}

/// The unanswered flows of `kind` to show; when the window holds unanswered connections of
/// flows beyond the tracked ones (a scan), one line per port stands in.
fn lost_or_ports(
    list: &[Unanswered],
    kind: Conn,
    by_port: &BTreeMap<Port, u64>,
) -> Vec<(Option<Unanswered>, Port, u64)> {
    let flows: Vec<_> = lost(list, kind)
        .into_iter()
        .map(|u| (Some(u.clone()), Port::Number(u.port), u.count))
        .collect();
    if !flows.is_empty() {
        return flows;
    }
    by_port.iter().map(|(&p, &n)| (None, p, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PathCounters, conns::Unanswered};

    fn path(kind: PathKind, ip: &str, counters: PathCounters) -> Path {
        Path {
            kind,
            mode: None,
            pod_ip: Some(ip.parse().unwrap()),
            host_veth: "vlan0123456789a".into(),
            vlan_id: (kind == PathKind::BranchEni).then_some(1),
            vlan_link: (kind == PathKind::BranchEni).then(|| "vlan.eth.1".into()),
            trunk: None,
            route_table: 101,
            rules: Vec::new(),
            eni_id: None,
            pod: None,
            counters: Some(counters),
            window: None,
        }
    }

    fn lost_syn(src: &str, dst: &str, port: u16, count: u64) -> Unanswered {
        Unanswered {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            port,
            kind: Conn::Syn,
            count,
        }
    }

    #[test]
    fn unanswered_out_of_a_branch_path_only() {
        let mut c = PathCounters::default();
        c.from_pod.syn_unanswered.insert(8080.into(), 3);
        c.from_pod.syn_answered.insert(80.into(), 2);
        c.from_pod.unanswered = vec![lost_syn("192.168.3.219", "10.0.1.10", 8080, 3)];
        let mut ordinary = c.clone();
        ordinary.from_pod.unanswered[0].source = "192.168.7.31".parse().unwrap();
        let topo = Topology {
            paths: vec![
                path(PathKind::BranchEni, "192.168.3.219", c),
                path(PathKind::NodeEni, "192.168.7.31", ordinary),
            ],
            ..Default::default()
        };
        let f = sg_suspected_block(&Node::default(), &topo);
        // The ordinary pod's 3 lost connections left by a node ENI: raised too (issue 29).
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!(f[1].subject, "192.168.7.31");
        assert!(f[1].evidence[0].contains("(vlan0123456789a, by a node ENI)"));
        assert!(
            f[1].remediation
                .starts_with("the pod leaves by the node ENI"),
            "{}",
            f[1].remediation
        );
        assert_eq!(f[0].subject, "192.168.3.219");
        assert_eq!(
            f[0].evidence,
            [
                "3 TCP connection(s) from 192.168.3.219 to 10.0.1.10:8080 left the pod's path \
                 (vlan0123456789a on vlan.eth.1) and got no SYN-ACK",
                "answered connections by port: 80: 2"
            ]
        );
        assert!(f[0].remediation.contains("FromPort=8080"));
        assert!(probe_path_broken(&Node::default(), &topo).is_empty());
        assert!(dns_path_broken(&Node::default(), &topo).is_empty());
    }

    #[test]
    fn node_probes_and_dns_and_off_vlan() {
        let mut c = PathCounters::default();
        c.to_pod.syn_unanswered.insert(80.into(), 4);
        c.to_pod.unanswered = vec![lost_syn("192.168.1.10", "192.168.3.219", 80, 4)];
        c.from_pod.dns_unanswered = 2;
        c.from_pod.dns_answered = 1;
        c.from_pod.left_via.insert("vlan.eth.1".into(), 9);
        c.from_pod.left_via.insert("eth0".into(), 5);
        let topo = Topology {
            paths: vec![path(PathKind::BranchEni, "192.168.3.219", c)],
            ..Default::default()
        };
        let n = Node::default();
        let probe = probe_path_broken(&n, &topo);
        assert_eq!(
            probe[0].evidence,
            ["4 TCP connection(s) from the node (192.168.1.10) to 192.168.3.219:80 got no SYN-ACK"]
        );
        assert!(probe[0].remediation.contains("CidrIp=192.168.1.10/32"));
        let dns = dns_path_broken(&n, &topo);
        assert_eq!(
            dns[0].evidence[0],
            "2 of 3 DNS queries left the pod's path (vlan0123456789a on vlan.eth.1) unanswered"
        );
        let off = off_vlan(&n, &topo);
        assert_eq!(
            off[0].evidence,
            ["5 packet(s) from the pod left the node by eth0, not by vlan.eth.1"]
        );
        assert_eq!(off[0].severity, Severity::Error);
    }

    /// The lab's rules: sg-pod on the branch pod admits 80 from anywhere and all from the
    /// node; sg-node on the node.
    fn with_rules(strip_port_80: bool) -> Node {
        use crate::model::sg::{Catalog, Peer, Ports, Protocol, Rules, SecurityGroup, SgRule};
        let cidr = |s: &str| Peer::Cidr {
            cidr: s.parse().unwrap(),
        };
        let mut c = Catalog::default();
        let mut pod = SecurityGroup::new("sg-pod");
        if !strip_port_80 {
            pod.ingress.push(SgRule::new(
                Protocol::Tcp,
                Ports::port(80),
                cidr("0.0.0.0/0"),
            ));
        }
        pod.ingress.push(SgRule::new(
            Protocol::All,
            Ports::Any,
            cidr("192.168.1.10/32"),
        ));
        c.insert_group(pod);
        c.insert_group(SecurityGroup::new("sg-node"));
        c.insert_eni("192.168.3.219".parse().unwrap(), "eni-b", &["sg-pod"]);
        c.insert_eni("192.168.1.10".parse().unwrap(), "eni-n", &["sg-node"]);
        c.vpc_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
        Node {
            security_groups: Some(std::sync::Arc::new(Rules::Fresh { catalog: c })),
            ..Default::default()
        }
    }

    #[test]
    fn rules_confirm_or_clear_an_unanswered_connection() {
        // The bastion's connections to the pod are not counted here; the pod's own to the
        // bastion on 8080: sg-pod's default egress lets them out, the bastion is no ENI.
        let mut c = PathCounters::default();
        c.from_pod.unanswered = vec![lost_syn("192.168.3.219", "10.0.1.10", 8080, 3)];
        c.to_pod.unanswered = vec![lost_syn("192.168.1.10", "192.168.3.219", 8080, 2)];
        let topo = Topology {
            paths: vec![path(PathKind::BranchEni, "192.168.3.219", c)],
            ..Default::default()
        };
        let n = with_rules(true);
        let f = &sg_suspected_block(&n, &topo)[0];
        assert_eq!(f.severity, Severity::Warning, "allowed: still a warning");
        assert!(
            f.evidence.contains(
                &"the security groups' rules allow tcp/8080 192.168.3.219 -> 10.0.1.10: sg-pod \
                  lets it out (all traffic 0.0.0.0/0); 10.0.1.10 is no ENI sgpath read (its own \
                  groups are not judged)"
                    .to_owned()
            ),
            "{:#?}",
            f.evidence
        );
        assert!(
            f.remediation
                .starts_with("the rules allow it: look past the groups")
        );
        // The node's probes: sg-pod admits all from the node, so the groups are not why.
        let p = &probe_path_broken(&n, &topo)[0];
        assert_eq!(p.severity, Severity::Error);
        assert!(
            p.remediation.starts_with("the rules allow it"),
            "{}",
            p.remediation
        );
        // Remove the node's rule: the probe's loss is confirmed, with the exact command.
        let mut n = with_rules(true);
        if let Some(crate::model::sg::Rules::Fresh { catalog, .. }) =
            n.security_groups.as_deref().cloned().as_mut()
        {
            catalog.groups.get_mut("sg-pod").unwrap().ingress.clear();
            n.security_groups = Some(std::sync::Arc::new(crate::model::sg::Rules::Fresh {
                catalog: catalog.clone(),
            }));
        }
        let p = &probe_path_broken(&n, &topo)[0];
        assert_eq!(
            p.evidence.last().unwrap(),
            "confirmed by the security groups' rules: sg-pod admits no tcp/8080 from members of sg-node"
        );
        assert_eq!(
            p.remediation,
            "aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol tcp --port 8080 --source-group sg-node"
        );
        // Without current rules the findings stay suspected, as before.
        let mut n = with_rules(true);
        n.security_groups = Some(std::sync::Arc::new(crate::model::sg::Rules::Unavailable {
            reason: "no credentials".into(),
        }));
        let f = &sg_suspected_block(&n, &topo)[0];
        assert!(
            f.remediation
                .contains("--group-id <the pod's security group>")
        );
        assert!(
            !f.evidence.iter().any(|e| e.contains("rules")),
            "{:#?}",
            f.evidence
        );
    }

    #[test]
    fn dns_confirmed_when_the_pods_egress_lacks_53() {
        use crate::model::sg::Rules;
        let mut c = PathCounters::default();
        c.from_pod.dns_unanswered = 2;
        c.from_pod.unanswered = vec![Unanswered {
            kind: Conn::Dns,
            ..lost_syn("192.168.3.219", "192.168.1.10", 53, 2)
        }];
        let topo = Topology {
            paths: vec![path(PathKind::BranchEni, "192.168.3.219", c)],
            ..Default::default()
        };
        let mut n = with_rules(false);
        let Some(Rules::Fresh { mut catalog, .. }) = n.security_groups.as_deref().cloned() else {
            unreachable!()
        };
        catalog.groups.get_mut("sg-pod").unwrap().egress.clear();
        n.security_groups = Some(std::sync::Arc::new(Rules::Fresh { catalog }));
        let f = &dns_path_broken(&n, &topo)[0];
        assert_eq!(f.severity, Severity::Error);
        assert!(
            f.evidence
                .contains(&"confirmed by the security groups' rules: sg-pod lets out no udp/53 to members of sg-node".to_owned()),
            "{:#?}",
            f.evidence
        );
        assert!(
            f.remediation.starts_with("aws ec2 authorize-security-group-egress --group-id sg-pod --ip-permissions 'IpProtocol=udp,FromPort=53,ToPort=53,UserIdGroupPairs=[{GroupId=sg-node}]'"),
            "{}",
            f.remediation
        );
    }

    #[test]
    fn remediations_name_the_pods_security_groups_when_known() {
        let mut c = PathCounters::default();
        c.to_pod.unanswered = vec![lost_syn("192.168.1.10", "192.168.3.219", 80, 4)];
        c.from_pod.unanswered = vec![lost_syn("192.168.3.219", "10.0.1.10", 8080, 3)];
        c.from_pod.dns_unanswered = 2;
        let mut p = path(PathKind::BranchEni, "192.168.3.219", c);
        let n = Node::default();
        let topo = |p: &Path| Topology {
            paths: vec![p.clone()],
            ..Default::default()
        };
        assert!(
            probe_path_broken(&n, &topo(&p))[0]
                .remediation
                .contains("--group-id <the pod's security group>")
        );
        p.pod = Some(crate::model::k8s::PodRef {
            namespace: "sg-test".into(),
            name: "web".into(),
            matched_by: crate::model::k8s::MatchedBy::PodIp,
            branch_eni: Some("eni-1".into()),
            branch_vlan: Some(1),
            security_groups: vec!["sg-0pod".into(), "sg-0extra".into()],
        });
        let t = topo(&p);
        for f in [
            &probe_path_broken(&n, &t)[0],
            &sg_suspected_block(&n, &t)[0],
            &dns_path_broken(&n, &t)[0],
        ] {
            assert!(
                f.remediation.contains("--group-id sg-0pod "),
                "{}",
                f.remediation
            );
            assert!(
                f.remediation.contains("also has sg-0extra"),
                "{}",
                f.remediation
            );
        }
        assert!(
            probe_path_broken(&n, &t)[0]
                .remediation
                .contains("aws ec2 authorize-security-group-ingress --group-id sg-0pod")
        );
        assert!(
            sg_suspected_block(&n, &t)[0]
                .remediation
                .contains("aws ec2 authorize-security-group-egress --group-id sg-0pod")
        );
    }

    /// Issue 29: an ordinary pod below the threshold raises nothing (a healthy node's
    /// stray SYN is not a page), and its probes never do.
    #[test]
    fn ordinary_pods_raise_from_three_lost_connections() {
        let mut c = PathCounters::default();
        c.from_pod.unanswered = vec![lost_syn("192.168.7.31", "10.0.5.9", 5432, 2)];
        c.from_pod.syn_unanswered.insert(5432.into(), 2);
        c.to_pod.unanswered = vec![lost_syn("192.168.1.10", "192.168.7.31", 80, 4)];
        let mut topo = Topology {
            paths: vec![path(PathKind::NodeEni, "192.168.7.31", c)],
            ..Default::default()
        };
        let n = Node::default();
        assert!(sg_suspected_block(&n, &topo).is_empty());
        assert!(probe_path_broken(&n, &topo).is_empty());
        let c = topo.paths[0].counters.as_mut().unwrap();
        c.from_pod.unanswered[0].count = 3;
        assert_eq!(sg_suspected_block(&n, &topo).len(), 1);
    }

    /// Issue 29, item 9: the database admits the group of a SecurityGroupPolicy that did not
    /// select the pod (a label typo); the pod left by the node ENI, whose group the database
    /// does not admit. The finding is confirmed by the rules and names the policy.
    #[test]
    fn an_ordinary_pods_lost_database_names_the_policy_that_missed_it() {
        use crate::model::k8s::{
            LabelSelector, MatchedBy, PodRef, PolicySpec, SecurityGroupPolicy,
        };
        use crate::model::sg::{Catalog, Peer, Ports, Protocol, Rules, SecurityGroup, SgRule};
        let (pod_ip, db) = ("192.168.7.31", "10.0.5.9");
        let mut cat = Catalog {
            vpc_cidrs: vec![
                "192.168.0.0/16".parse().unwrap(),
                "10.0.0.0/16".parse().unwrap(),
            ],
            ..Default::default()
        };
        let mut sg_db = SecurityGroup::new("sg-db");
        sg_db.ingress = vec![SgRule::new(
            Protocol::Tcp,
            Ports::port(5432),
            Peer::Group {
                id: "sg-app".into(),
            },
        )];
        cat.insert_group(sg_db);
        cat.insert_group(SecurityGroup::new("sg-app"));
        cat.insert_group(SecurityGroup::new("sg-node"));
        // The ordinary pod's address is a secondary address of the node ENI.
        cat.insert_eni(pod_ip.parse().unwrap(), "eni-node", &["sg-node"]);
        cat.insert_eni(db.parse().unwrap(), "eni-db", &["sg-db"]);
        let pod = Pod {
            namespace: "shop".into(),
            name: "api-0".into(),
            labels: [("app".to_owned(), "api".to_owned())].into(),
            service_account: "default".into(),
            ips: vec![pod_ip.parse().unwrap()],
            ..Default::default()
        };
        let policy = |ns: &str, app: &str| SecurityGroupPolicy {
            namespace: ns.into(),
            name: "api-db".into(),
            spec: Ok(PolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: [("app".to_owned(), app.to_owned())].into(),
                    match_expressions: Vec::new(),
                }),
                service_account_selector: None,
                group_ids: vec!["sg-app".into()],
            }),
        };
        let mut c = PathCounters::default();
        c.from_pod.unanswered = vec![lost_syn(pod_ip, db, 5432, 10)];
        c.from_pod.syn_unanswered.insert(5432.into(), 10);
        let mut p = path(PathKind::NodeEni, pod_ip, c);
        p.pod = Some(PodRef {
            namespace: "shop".into(),
            name: "api-0".into(),
            matched_by: MatchedBy::PodIp,
            branch_eni: None,
            branch_vlan: None,
            security_groups: Vec::new(),
        });
        let topo = Topology {
            paths: vec![p],
            ..Default::default()
        };
        let node = |policy: SecurityGroupPolicy| Node {
            security_groups: Some(std::sync::Arc::new(Rules::Fresh {
                catalog: cat.clone(),
            })),
            cluster: Some(std::sync::Arc::new(Cluster {
                pods: vec![pod.clone()],
                policies: vec![policy],
                ..Default::default()
            })),
            ..Default::default()
        };
        // A typo in the selector: app=apii.
        let f = &sg_suspected_block(&node(policy("shop", "apii")), &topo)[0];
        assert_eq!(f.severity, Severity::Error, "{f:#?}");
        assert!(
            f.evidence.contains(
                &"confirmed by the security groups' rules: sg-db admits no tcp/5432 from members of sg-node"
                    .to_owned()
            ),
            "{:#?}",
            f.evidence
        );
        let line = f
            .evidence
            .iter()
            .find(|e| e.starts_with("SecurityGroupPolicy shop/api-db gives sg-app"))
            .unwrap_or_else(|| panic!("{:#?}", f.evidence));
        assert!(
            line.contains("(sg-db admits it: tcp/5432 members of sg-app)"),
            "{line}"
        );
        assert!(line.contains("it does not select pod shop/api-0"), "{line}");
        assert!(
            f.remediation
                .starts_with("the pod left by the node ENI because no SecurityGroupPolicy"),
            "{}",
            f.remediation
        );
        // The policy in another namespace.
        let f = &sg_suspected_block(&node(policy("payments", "api")), &topo)[0];
        assert!(
            f.evidence
                .iter()
                .any(|e| e.contains("it is in namespace payments")),
            "{:#?}",
            f.evidence
        );
        // The policy selects the pod, which predates it.
        let f = &sg_suspected_block(&node(policy("shop", "api")), &topo)[0];
        assert!(
            f.evidence
                .iter()
                .any(|e| e.contains("created before the policy")),
            "{:#?}",
            f.evidence
        );
        // A policy whose groups the database does not admit either is not named.
        let mut other = policy("shop", "apii");
        if let Ok(spec) = &mut other.spec {
            spec.group_ids = vec!["sg-node".into()];
        }
        let f = &sg_suspected_block(&node(other), &topo)[0];
        assert!(
            !f.evidence
                .iter()
                .any(|e| e.starts_with("SecurityGroupPolicy")),
            "{:#?}",
            f.evidence
        );
        assert!(
            f.remediation
                .starts_with("aws ec2 authorize-security-group-ingress --group-id sg-db")
        );
    }
}
