//! The security groups' own rules, judged before anything fails: flows a branch pod needs
//! that its groups (or the far end's) do not admit. Only with rules read from EC2
//! ([`Rules::Fresh`]); without them one `ec2-unavailable` finding says why.
//!
//! | finding                   | flow judged                                          |
//! |---------------------------|------------------------------------------------------|
//! | `sg-blocks-kubelet-probe` | node primary IP -> strict branch pod, each probe port |
//! | `sg-blocks-dns`           | branch pod -> every CoreDNS pod, UDP and TCP 53       |
//! | `sg-blocks-service`       | node, or the whole VPC CIDR -> pod, each targetPort   |
//! | `ec2-unavailable`         | none: the rules could not be read                     |

use std::net::IpAddr;

use super::{Finding, FindingId, Severity};
use crate::model::{
    EnforcingMode, Node, Topology,
    k8s::{Cluster, Pod},
    sg::{Catalog, Flow, Missing, Rules, Verdict},
};

/// The rules, when they were read and are current.
pub(super) fn fresh(node: &Node) -> Option<&Catalog> {
    node.security_groups.as_deref().and_then(Rules::fresh)
}

/// The node's primary IPv4 address (the source of kubelet's probes).
pub(super) fn node_ip(node: &Node, topo: &Topology) -> Option<IpAddr> {
    let eni = topo.primary_eni.as_deref()?;
    node.link_by_name(eni)?
        .addresses
        .iter()
        .map(|a| a.addr())
        .find(|a| matches!(a, IpAddr::V4(v) if !v.is_link_local()))
}

pub fn ec2_unavailable(node: &Node, _: &Topology) -> Vec<Finding> {
    match node.security_groups.as_deref() {
        Some(Rules::Unavailable { reason }) => vec![
            Finding::new(FindingId::Ec2Unavailable, Severity::Info, "ec2")
                .evidence(reason.clone())
                .evidence(
                    "without the rules, blocks stay suspected and the sg-blocks-* checks do not run",
                )
                .fix(
                    "give the node role (or sgpath's service account through IRSA or EKS Pod \
                     Identity) ec2:DescribeSecurityGroups, ec2:DescribeNetworkInterfaces and \
                     ec2:GetManagedPrefixListEntries (deploy/README.md), and let it reach \
                     instance metadata (IMDSv2, hop limit 2 for a pod) and the EC2 endpoint",
                ),
        ],
        _ => Vec::new(),
    }
}

/// Branch pods of this node whose branch ENI the catalog knows, with that address.
fn branch_pods<'a>(
    cluster: &'a Cluster,
    catalog: &'a Catalog,
) -> impl Iterator<Item = (&'a Pod, IpAddr)> + 'a {
    cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && p.branch_enis().is_ok_and(|e| !e.is_empty()))
        .filter_map(|p| {
            let ip = p
                .ips
                .iter()
                .copied()
                .find(|ip| catalog.groups_of(*ip).is_some())?;
            Some((p, ip))
        })
}

/// A denial the rules prove ([`Missing::is_confirmed`]). These findings fire before anything
/// fails, on rules alone: a denial sgpath cannot prove (the far end not an ENI it read, a
/// group it could not read, a group rule the far end may satisfy) is no page.
fn denied(v: Verdict) -> Option<Missing> {
    match v {
        Verdict::Denied(m) if m.is_confirmed() => Some(m),
        Verdict::Denied(_) | Verdict::Allowed { .. } => None,
    }
}

/// Probes of a strict branch pod leave by the node's primary ENI, hairpin through the VPC
/// and come back on the VLAN: the pod's groups must admit the node. In standard mode they
/// stay on the node and no group sees them.
pub fn kubelet_probe(node: &Node, topo: &Topology) -> Vec<Finding> {
    let (Some(catalog), Some(cluster), Some(node_ip)) =
        (fresh(node), node.cluster.as_deref(), node_ip(node, topo))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (pod, ip) in branch_pods(cluster, catalog) {
        let mode = topo
            .paths
            .iter()
            .find(|p| p.pod_ip == Some(ip))
            .and_then(|p| p.mode);
        if mode == Some(EnforcingMode::Standard) {
            continue;
        }
        let mut f = Finding::new(
            FindingId::SgBlocksKubeletProbe,
            Severity::Error,
            ip.to_string(),
        );
        let mut fix = None;
        let mut ports: Vec<u16> = Vec::new();
        for probe in &pod.probes {
            if ports.contains(&probe.port) {
                continue;
            }
            ports.push(probe.port);
            if let Some(m) = denied(catalog.judge(&Flow::tcp(node_ip, ip, probe.port))) {
                f = f.evidence(format!(
                    "pod {} has a {} probe ({}) of container {} on tcp/{}, which kubelet opens \
                     from the node ({node_ip}): {}",
                    pod.key(),
                    probe.probe,
                    probe.handler,
                    probe.container,
                    probe.port,
                    m.summary()
                ));
                fix.get_or_insert_with(|| m.remediation());
            }
        }
        if let Some(fix) = fix {
            out.push(f.fix(format!(
                "{fix} (the node's security group as the source admits every node's probes)"
            )));
        }
    }
    out
}

pub fn dns(node: &Node, _: &Topology) -> Vec<Finding> {
    let (Some(catalog), Some(cluster)) = (fresh(node), node.cluster.as_deref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (pod, ip) in branch_pods(cluster, catalog) {
        let mut f = Finding::new(FindingId::SgBlocksDns, Severity::Warning, ip.to_string());
        let mut fixes: Vec<String> = Vec::new();
        for dns in cluster
            .coredns
            .iter()
            .filter(|d| d.is_ipv4() == ip.is_ipv4())
        {
            for flow in [Flow::udp(ip, *dns, 53), Flow::tcp(ip, *dns, 53)] {
                if let Some(m) = denied(catalog.judge(&flow)) {
                    f = f.evidence(format!(
                        "pod {}'s DNS to CoreDNS {dns} ({flow}): {}",
                        pod.key(),
                        m.summary()
                    ));
                    let fix = m.remediation();
                    if !fixes.contains(&fix) {
                        fixes.push(fix);
                    }
                }
            }
        }
        if !fixes.is_empty() {
            out.push(f.fix(fixes.join("; ")));
        }
    }
    out
}

/// NodePort and load balancer traffic reaches a Service's pods from the node (kube-proxy's
/// DNAT) or from the VPC (a load balancer with IP targets): the pod's groups must admit one
/// of them on every `targetPort`.
pub fn service(node: &Node, topo: &Topology) -> Vec<Finding> {
    let (Some(rules), Some(cluster)) = (node.security_groups.as_deref(), node.cluster.as_deref())
    else {
        return Vec::new();
    };
    let Rules::Fresh { catalog } = rules else {
        return Vec::new();
    };
    let vpc_cidrs = &catalog.vpc_cidrs;
    let node_ip = node_ip(node, topo);
    let mut out = Vec::new();
    for (pod, ip) in branch_pods(cluster, catalog) {
        let mut f = Finding::new(
            FindingId::SgBlocksService,
            Severity::Warning,
            ip.to_string(),
        );
        let mut fix = None;
        for svc in cluster.services.iter().filter(|s| s.selects(pod)) {
            for sp in &svc.ports {
                let Some(port) = sp.resolve(pod) else {
                    continue;
                };
                let from = |src: IpAddr| match sp.protocol.as_str() {
                    "UDP" => Some(Flow::udp(src, ip, port)),
                    "TCP" => Some(Flow::tcp(src, ip, port)),
                    _ => None,
                };
                let Some(from_node) = node_ip.and_then(from) else {
                    continue;
                };
                let Some(m) = denied(catalog.judge(&from_node)) else {
                    continue;
                };
                let groups = catalog.groups_of(ip).unwrap_or_default();
                let from_vpc = vpc_cidrs
                    .iter()
                    .filter(|c| c.addr().is_ipv4() == ip.is_ipv4())
                    .find(|c| catalog.admits_whole(groups, &from_node, **c).is_some());
                if from_vpc.is_some() {
                    continue;
                }
                f = f.evidence(format!(
                    "{} Service {}/{} sends {}/{port} to pod {}: {}{}",
                    svc.type_,
                    svc.namespace,
                    svc.name,
                    sp.protocol.to_ascii_lowercase(),
                    pod.key(),
                    m.summary(),
                    if vpc_cidrs.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", nor from the whole VPC ({})",
                            vpc_cidrs
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ));
                fix.get_or_insert_with(|| m.remediation());
            }
        }
        if let Some(fix) = fix {
            out.push(f.fix(format!(
                "{fix} (or the VPC CIDR as the source, for load balancers with IP targets)"
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        k8s::{ProbePort, Service, ServicePort, TargetPort},
        sg::{Peer, Ports, Protocol, SecurityGroup, SgRule},
    };
    use std::sync::Arc;

    const POD: &str = "192.168.3.219";
    const NODE: &str = "192.168.1.10";
    const DNS: &str = "192.168.50.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(proto: Protocol, port: Option<u16>, peer: &str) -> SgRule {
        let peer = if peer.starts_with("sg-") {
            Peer::Group { id: peer.into() }
        } else {
            Peer::Cidr {
                cidr: peer.parse().unwrap(),
            }
        };
        SgRule::new(proto, port.map_or(Ports::Any, Ports::port), peer)
    }

    /// A healthy strict node: sg-pod admits everything from sg-node, CoreDNS (sg-node)
    /// admits the VPC, the web pod probes 8080 and backs a NodePort Service on 8080.
    fn healthy() -> (Catalog, Cluster) {
        let mut c = Catalog::default();
        let mut node = SecurityGroup::new("sg-node");
        node.ingress = vec![rule(Protocol::All, None, "192.168.0.0/16")];
        let mut pod = SecurityGroup::new("sg-pod");
        pod.ingress = vec![
            rule(Protocol::Tcp, Some(80), "0.0.0.0/0"),
            rule(Protocol::All, None, "sg-node"),
        ];
        c.insert_group(node);
        c.insert_group(pod);
        c.insert_eni(ip(NODE), "eni-node", &["sg-node"]);
        c.insert_eni(ip(DNS), "eni-dns", &["sg-node"]);
        c.insert_eni(ip(POD), "eni-branch", &["sg-pod"]);
        let web = Pod {
            namespace: "sg-test".into(),
            name: "web".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ips: vec![ip(POD)],
            pod_eni: Some(format!(
                r#"[{{"eniId":"eni-branch","ifAddress":"0a:00:00:00:00:01","privateIp":"{POD}","vlanId":1}}]"#
            )),
            probes: vec![ProbePort {
                container: "web".into(),
                probe: "readiness",
                handler: "httpGet",
                port: 8080,
            }],
            ..Default::default()
        };
        let svc = Service {
            namespace: "sg-test".into(),
            name: "web".into(),
            type_: "NodePort".into(),
            external_local: false,
            selector: [("app".to_owned(), "web".to_owned())].into(),
            ports: vec![ServicePort {
                protocol: "TCP".into(),
                target: TargetPort::Number(8080),
            }],
        };
        let cluster = Cluster {
            pods: vec![web],
            services: vec![svc],
            coredns: vec![ip(DNS)],
            ..Default::default()
        };
        (c, cluster)
    }

    fn node(c: Catalog, cluster: Cluster) -> (Node, Topology) {
        let mut n = crate::checks::tests::strict_node();
        n.links
            .iter_mut()
            .find(|l| l.name == "eth0")
            .unwrap()
            .addresses
            .push("192.168.1.10/16".parse().unwrap());
        let mut c = c;
        c.vpc_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
        n.security_groups = Some(Arc::new(Rules::Fresh { catalog: c }));
        n.cluster = Some(Arc::new(cluster));
        let topo = Topology::from_node(&n);
        (n, topo)
    }

    fn all(n: &Node, t: &Topology) -> Vec<Finding> {
        [
            kubelet_probe(n, t),
            dns(n, t),
            service(n, t),
            ec2_unavailable(n, t),
        ]
        .concat()
    }

    #[test]
    fn a_healthy_node_raises_nothing() {
        let (c, cl) = healthy();
        let (n, t) = node(c, cl);
        assert_eq!(
            node_ip(&n, &t),
            Some(ip(NODE)),
            "fixture's primary ENI address"
        );
        assert_eq!(all(&n, &t), []);
    }

    /// The whole registry on the healthy node with current rules: none of the rule-based
    /// findings, and nothing the same node without rules does not raise either.
    #[test]
    fn the_whole_registry_on_a_healthy_node_with_rules() {
        let (c, cl) = healthy();
        let (n, t) = node(c, cl);
        let with: Vec<_> = crate::checks::run(&n, &t)
            .into_iter()
            .map(|f| (f.id, f.subject))
            .collect();
        let mut bare = n.clone();
        bare.security_groups = None;
        let without: Vec<_> = crate::checks::run(&bare, &Topology::from_node(&bare))
            .into_iter()
            .map(|f| (f.id, f.subject))
            .collect();
        assert_eq!(with, without);
        for id in [
            FindingId::SgBlocksKubeletProbe,
            FindingId::SgBlocksDns,
            FindingId::SgBlocksService,
            FindingId::Ec2Unavailable,
        ] {
            assert!(!with.iter().any(|(i, _)| *i == id), "{id:?} in {with:?}");
        }
    }

    #[test]
    fn kubelet_probe_port_not_admitted_from_the_node_then_cleared() {
        let (mut c, cl) = healthy();
        // The pod's group only admits port 80 from anywhere: the seed's pitfall.
        c.groups.get_mut("sg-pod").unwrap().ingress.truncate(1);
        let (n, t) = node(c.clone(), cl.clone());
        let f = kubelet_probe(&n, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(
            (f[0].id, f[0].severity),
            (FindingId::SgBlocksKubeletProbe, Severity::Error)
        );
        assert_eq!(
            f[0].evidence,
            [
                "pod sg-test/web has a readiness probe (httpGet) of container web on tcp/8080, \
              which kubelet opens from the node (192.168.1.10): sg-pod admits no tcp/8080 from \
              members of sg-node"
            ]
        );
        assert!(
            f[0].remediation.starts_with(
                "aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol tcp \
                 --port 8080 --source-group sg-node"
            ),
            "{}",
            f[0].remediation
        );
        // The rule added: the finding clears.
        c.groups.get_mut("sg-pod").unwrap().ingress.push(rule(
            Protocol::Tcp,
            Some(8080),
            "192.168.1.10/32",
        ));
        let (n, t) = node(c, cl);
        assert_eq!(kubelet_probe(&n, &t), []);
    }

    #[test]
    fn standard_mode_probes_stay_on_the_node() {
        let (mut c, cl) = healthy();
        c.groups.get_mut("sg-pod").unwrap().ingress.truncate(1);
        let (n, mut t) = node(c, cl);
        for p in &mut t.paths {
            p.mode = Some(EnforcingMode::Standard);
        }
        assert_eq!(kubelet_probe(&n, &t), []);
    }

    #[test]
    fn dns_blocked_by_the_pods_egress_or_corednss_ingress() {
        let (mut c, cl) = healthy();
        c.groups.get_mut("sg-pod").unwrap().egress =
            vec![rule(Protocol::Tcp, Some(443), "0.0.0.0/0")];
        let (n, t) = node(c.clone(), cl.clone());
        let f = dns(&n, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].evidence.len(), 2, "UDP and TCP: {:#?}", f[0].evidence);
        assert!(f[0].evidence[0].contains("sg-pod lets out no udp/53 to members of sg-node"));
        assert!(
            f[0].remediation
                .contains("authorize-security-group-egress --group-id sg-pod")
        );
        // The pod may send; CoreDNS's group admits only UDP.
        let mut c = healthy().0;
        c.groups.get_mut("sg-node").unwrap().ingress =
            vec![rule(Protocol::Udp, Some(53), "192.168.0.0/16")];
        let (n, t) = node(c, cl);
        let f = dns(&n, &t);
        assert_eq!(f[0].evidence.len(), 1, "{:#?}", f[0].evidence);
        assert!(f[0].evidence[0].contains("sg-node admits no tcp/53 from members of sg-pod"));
    }

    /// Issue 29: with prefix delegation CoreDNS's address is in a /28 of a node ENI; AWS's
    /// recommended rule (pod group egress to the cluster group on 53) admits it once the
    /// prefix is known, and without it the denial is unverified: no `sg-blocks-dns` either
    /// way on a healthy node.
    #[test]
    fn dns_to_a_prefix_delegated_coredns_is_judged_by_its_enis_groups() {
        let (mut c, mut cl) = healthy();
        let dns_ip = ip("192.168.7.37");
        cl.coredns = vec![dns_ip];
        c.insert_group(SecurityGroup::new("sg-cluster"));
        c.groups.get_mut("sg-cluster").unwrap().ingress = vec![rule(Protocol::All, None, "sg-pod")];
        c.groups.get_mut("sg-pod").unwrap().egress = vec![
            rule(Protocol::Udp, Some(53), "sg-cluster"),
            rule(Protocol::Tcp, Some(53), "sg-cluster"),
        ];
        // Not looked up: unverified, nothing raised.
        let (n, t) = node(c.clone(), cl.clone());
        assert!(dns(&n, &t).is_empty(), "{:#?}", dns(&n, &t));
        // The prefix read (EC2's ipv4PrefixSet or instance metadata's ipv4-prefix).
        c.insert_prefix(
            "192.168.7.32/28".parse().unwrap(),
            "eni-node2",
            &["sg-cluster"],
        );
        let (n, t) = node(c.clone(), cl.clone());
        assert!(dns(&n, &t).is_empty(), "{:#?}", dns(&n, &t));
        // ... and a real block is still found: the cluster group no longer admits the pod.
        c.groups.get_mut("sg-cluster").unwrap().ingress.clear();
        let (n, t) = node(c, cl);
        let f = dns(&n, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].evidence[0].contains("sg-cluster admits no udp/53 from members of sg-pod"),
            "{:#?}",
            f[0].evidence
        );
    }

    #[test]
    fn service_target_port_needs_the_node_or_the_whole_vpc() {
        let (mut c, mut cl) = healthy();
        cl.services[0].ports[0].target = TargetPort::Name("http".into());
        cl.pods[0].container_ports = vec![crate::model::k8s::ContainerPort {
            name: Some("http".into()),
            port: 9090,
            protocol: "TCP".into(),
        }];
        cl.pods[0].probes.clear();
        // Only 80 from anywhere: 9090 (the named port) is admitted from neither.
        c.groups.get_mut("sg-pod").unwrap().ingress.truncate(1);
        let (n, t) = node(c.clone(), cl.clone());
        let f = service(&n, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].evidence[0].contains("NodePort Service sg-test/web sends tcp/9090"));
        assert!(f[0].evidence[0].contains("nor from the whole VPC (192.168.0.0/16)"));
        // A rule for the VPC CIDR (load balancers with IP targets) is enough.
        c.groups.get_mut("sg-pod").unwrap().ingress.push(rule(
            Protocol::Tcp,
            Some(9090),
            "192.168.0.0/16",
        ));
        let (n, t) = node(c, cl);
        assert_eq!(service(&n, &t), []);
    }

    #[test]
    fn without_rules_one_info_finding_and_no_verdicts() {
        let (c, cl) = healthy();
        let (mut n, t) = node(c, cl);
        n.security_groups = Some(Arc::new(Rules::Unavailable {
            reason: "DescribeSecurityGroups: UnauthorizedOperation".into(),
        }));
        let f = all(&n, &t);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(
            (f[0].id, f[0].severity),
            (FindingId::Ec2Unavailable, Severity::Info)
        );
        assert_eq!(
            f[0].evidence[0],
            "DescribeSecurityGroups: UnauthorizedOperation"
        );
        n.security_groups = None;
        assert_eq!(all(&n, &t), []);
    }
}
