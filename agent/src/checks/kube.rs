//! Findings that need the Kubernetes context (`sgpath agent` with a cluster): what the API
//! server says about the node's pods against what the node shows. Without a cluster none
//! of them fires.
//!
//! | finding | fires when |
//! |---|---|
//! | `malformed-pod-eni-annotation` | a pod's `vpc.amazonaws.com/pod-eni` is not the resource controller's JSON |
//! | `malformed-security-group-policy` | a policy's selectors or group ids cannot be read |
//! | `pod-eni-mismatch` | the annotation's VLAN or MAC is not the `vlan.eth.N` the pod's path uses |
//! | `veth-name-mismatch` | the host veth carrying a pod's IP is not the CNI's sha1 name of `<namespace>.<pod>` |
//! | `sgp-pod-without-branch-eni` | a policy selects a pod that has no branch ENI |
//! | `trunk-unavailable` | branch pods are wanted and the node has no trunk (and why) |
//! | `old-cni-tcp-early-demux` | VPC CNI < 1.11 with `ENABLE_POD_ENI` and `tcp_early_demux` = 1 |
//! | `enforcing-mode-env-mismatch` | `POD_SECURITY_GROUP_ENFORCING_MODE` is not the mode the node's branch pods show |
//! | `strict-mode-unsupported` | strict mode with `calico-node` on the node, or a NodePort/LoadBalancer Service with `externalTrafficPolicy: Local` selecting a branch pod |

use super::{Finding, FindingId, Severity};
use crate::model::{
    CniConfig, EnforcingMode, Node, PathKind, Sysctls, Topology,
    k8s::{self, Cluster, CniVersion, Pod},
};

/// The first VPC CNI that no longer needs `tcp_early_demux` off for strict pods' probes,
/// and that has the standard mode.
const CNI_1_11: CniVersion = CniVersion(1, 11, 0);

const ENABLE_POD_ENI: &str =
    "kubectl set env daemonset aws-node -n kube-system ENABLE_POD_ENI=true";
const ATTACH_RC_POLICY: &str = "aws iam attach-role-policy --role-name <the cluster's IAM role> \
     --policy-arn arn:aws:iam::aws:policy/AmazonEKSVPCResourceController";
const STANDARD_MODE: &str =
    "kubectl set env daemonset aws-node -n kube-system POD_SECURITY_GROUP_ENFORCING_MODE=standard";

fn cluster(node: &Node) -> Option<&Cluster> {
    node.cluster.as_deref()
}

/// Pods that can have a path of their own (not `hostNetwork`).
fn pods(c: &Cluster) -> impl Iterator<Item = &Pod> {
    c.pods.iter().filter(|p| !p.host_network)
}

fn quote(raw: &str) -> String {
    const MAX: usize = 200;
    match raw.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}...", &raw[..i]),
        None => format!("{raw:?}"),
    }
}

pub fn malformed_annotation(node: &Node, _: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    pods(c)
        .filter_map(|p| {
            let e = p.branch_enis().err()?;
            Some(
                Finding::new(FindingId::MalformedPodEniAnnotation, Severity::Warning, p.key())
                    .evidence(e.to_string())
                    .evidence(format!(
                        "{}: {}",
                        k8s::POD_ENI_ANNOTATION,
                        quote(p.pod_eni.as_deref().unwrap_or_default())
                    ))
                    .fix(format!(
                        "the VPC resource controller writes this annotation when it gives the pod its \
                         branch ENI; nothing else should edit it: recreate the pod (kubectl delete pod \
                         -n {} {}) and check admission webhooks or tools that rewrite annotations",
                        p.namespace, p.name
                    )),
            )
        })
        .collect()
}

pub fn malformed_policy(node: &Node, _: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    c.policies
        .iter()
        .filter_map(|p| {
            let e = p.spec.as_ref().err()?;
            Some(
                Finding::new(
                    FindingId::MalformedSecurityGroupPolicy,
                    Severity::Warning,
                    format!("{}/{}", p.namespace, p.name),
                )
                .evidence(format!("SecurityGroupPolicy {}/{}: {e}", p.namespace, p.name))
                .fix(format!(
                    "the resource controller cannot apply it, so the pods it should select get no \
                     branch ENI: fix it (kubectl edit securitygrouppolicy -n {} {}; selectors as in a \
                     Deployment's, operators In, NotIn, Exists, DoesNotExist; spec.securityGroups.groupIds \
                     a list of sg- ids), then recreate the pods it selects",
                    p.namespace, p.name
                )),
            )
        })
        .collect()
}

pub fn pod_eni_mismatch(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in &topo.paths {
        let Some(r) = &path.pod else { continue };
        let Some(pod) = c
            .pods
            .iter()
            .find(|p| p.namespace == r.namespace && p.name == r.name)
        else {
            continue;
        };
        let Some(eni) = pod.branch_enis().ok().and_then(|v| v.into_iter().next()) else {
            continue;
        };
        let mut f = Finding::new(FindingId::PodEniMismatch, Severity::Error, pod.key());
        let said = format!(
            "{} gives {} VLAN {} and MAC {}",
            k8s::POD_ENI_ANNOTATION,
            eni.eni_id,
            eni.vlan_id,
            eni.if_address
        );
        match (path.kind, path.vlan_id) {
            (PathKind::NodeEni, _) => {
                f = f.evidence(said).evidence(format!(
                    "the pod's path ({}, {}) is a node ENI's: its traffic is judged by the node's \
                     security groups, not {}'s",
                    path.host_veth,
                    ip(path.pod_ip),
                    eni.eni_id
                ));
            }
            (PathKind::BranchEni, Some(v)) if v != eni.vlan_id => {
                f = f.evidence(said).evidence(format!(
                    "the node routes the pod through VLAN {v} (table {}, {})",
                    path.route_table, path.host_veth
                ));
            }
            (PathKind::BranchEni, Some(v)) => {
                let mac = topo.vlan_link(v).and_then(|l| l.mac.as_deref());
                match mac {
                    Some(m) if !m.eq_ignore_ascii_case(&eni.if_address) => {
                        f = f
                            .evidence(said)
                            .evidence(format!("vlan.eth.{v} has MAC {m}"));
                    }
                    _ => continue,
                }
            }
            (PathKind::BranchEni, None) => continue,
        }
        out.push(f.fix(format!(
            "the node set the pod up for another branch ENI (a pod recreated with the same name, \
             VPC CNI #1375): recreate it (kubectl delete pod -n {} {}) so the CNI sets up the \
             annotated VLAN, and remove leftover `ip rule` entries of the old VLAN",
            pod.namespace, pod.name
        )));
    }
    out
}

fn ip(ip: Option<std::net::IpAddr>) -> String {
    ip.map_or_else(|| "no address".to_owned(), |i| i.to_string())
}

pub fn veth_name_mismatch(node: &Node, topo: &Topology) -> Vec<Finding> {
    if cluster(node).is_none() {
        return Vec::new();
    }
    let prefix = CniConfig::veth_prefix(node.cni.as_ref());
    topo.paths
        .iter()
        .filter_map(|path| {
            let r = path.pod.as_ref()?;
            if r.matched_by != k8s::MatchedBy::PodIp {
                return None;
            }
            let names = k8s::veth_names(prefix, &r.namespace, &r.name);
            if names.contains(&path.host_veth) {
                return None;
            }
            let want = if path.host_veth.starts_with("vlan") { &names[1] } else { &names[0] };
            Some(
                Finding::new(
                    FindingId::VethNameMismatch,
                    Severity::Warning,
                    path.host_veth.clone(),
                )
                .evidence(format!(
                    "{} carries {} of pod {}/{}, whose host veth the CNI names {want} \
                     (sha1 of \"{}.{}\")",
                    path.host_veth,
                    ip(path.pod_ip),
                    r.namespace,
                    r.name,
                    r.namespace,
                    r.name
                ))
                .fix(format!(
                    "a veth the VPC CNI did not set up for this pod: a leftover of an earlier pod that \
                     had the address, or another CNI; check `ip link show {0}` and its routes and \
                     rules, delete it (ip link delete {0}) if no pod uses it, and recreate the pod",
                    path.host_veth
                )),
            )
        })
        .collect()
}

/// Pods selected by a readable policy that have no branch ENI annotation.
fn selected_without_branch(c: &Cluster) -> Vec<(&Pod, Vec<String>)> {
    pods(c)
        .filter(|p| p.branch_enis().map(|v| v.is_empty()).unwrap_or(false))
        .filter_map(|p| {
            let by: Vec<String> = c
                .policies_for(p)
                .map(|(sgp, spec)| {
                    format!(
                        "{}/{} ({})",
                        sgp.namespace,
                        sgp.name,
                        spec.group_ids.join(", ")
                    )
                })
                .collect();
            (!by.is_empty()).then_some((p, by))
        })
        .collect()
}

pub fn policy_without_branch(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    selected_without_branch(c)
        .into_iter()
        .map(|(p, by)| {
            let mut f = Finding::new(FindingId::SgpPodWithoutBranchEni, Severity::Warning, p.key())
                .evidence(format!("selected by SecurityGroupPolicy {}", by.join(", ")))
                .evidence(format!("no {} annotation: the pod has no branch ENI", k8s::POD_ENI_ANNOTATION));
            if let Some(path) = topo
                .paths
                .iter()
                .find(|x| x.pod.as_ref().is_some_and(|r| r.namespace == p.namespace && r.name == p.name))
            {
                f = f.evidence(format!(
                    "its path {} ({}) is a node ENI's: the node's security groups decide its traffic",
                    path.host_veth,
                    ip(path.pod_ip)
                ));
            }
            if topo.trunks.is_empty() {
                f = f.evidence("the node has no trunk ENI (see trunk-unavailable)");
            }
            f.fix(format!(
                "a policy applies only to pods created after it: recreate the pod (kubectl delete pod \
                 -n {} {}, or kubectl rollout restart its deployment); if it comes back without the \
                 annotation, the node cannot have branch ENIs (trunk-unavailable)",
                p.namespace, p.name
            ))
        })
        .collect()
}

pub fn trunk_unavailable(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    if !topo.trunks.is_empty() || !topo.vlan_links.is_empty() {
        return Vec::new();
    }
    let wanted = selected_without_branch(c);
    if wanted.is_empty() {
        return Vec::new();
    }
    let subject = c
        .node
        .as_ref()
        .map_or_else(|| "node".to_owned(), |n| n.name.clone());
    let mut f =
        Finding::new(FindingId::TrunkUnavailable, Severity::Warning, subject).evidence(format!(
            "{} pod(s) on this node are selected by a SecurityGroupPolicy ({}) and no vlan.eth.* \
             link or trunk ENI exists",
            wanted.len(),
            wanted
                .iter()
                .map(|(p, _)| p.key())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    let mut fixes = Vec::new();
    if let Some(a) = &c.aws_node
        && !a.pod_eni_enabled()
    {
        f = f.evidence(format!(
            "the aws-node DaemonSet's ENABLE_POD_ENI is {}",
            a.enable_pod_eni
                .as_deref()
                .map_or("unset".to_owned(), |v| format!("{v:?}"))
        ));
        fixes.push(ENABLE_POD_ENI.to_owned());
    }
    if let Some(n) = &c.node {
        if let Some(v) = n.has_trunk_attached()
            && v != "true"
        {
            f = f.evidence(format!("node label {}={v}", k8s::HAS_TRUNK_LABEL));
        }
        if let Some(t) = n.instance_type()
            && !k8s::trunking_compatible(t)
        {
            f = f.evidence(format!(
                "instance type {t} ({}) cannot have a trunk ENI",
                k8s::INSTANCE_TYPE_LABEL
            ));
            fixes.push(
                "run these pods on a Nitro instance type that supports trunking (m5, c5, r5, m6i, \
                 ...; not t*): a node selector or a new node group"
                    .to_owned(),
            );
        }
        if n.os() == Some("windows") {
            f = f
                .evidence("a Windows node (kubernetes.io/os=windows): no branch ENIs for its pods");
            fixes.push("schedule these pods on Linux nodes".to_owned());
        }
    }
    fixes.push(ATTACH_RC_POLICY.to_owned());
    vec![f.fix(fixes.join("; "))]
}

pub fn old_cni_early_demux(node: &Node, _: &Topology) -> Vec<Finding> {
    let Some(a) = cluster(node).and_then(|c| c.aws_node.as_ref()) else {
        return Vec::new();
    };
    let (Some(v), true) = (a.version(), a.pod_eni_enabled()) else {
        return Vec::new();
    };
    if v >= CNI_1_11 || node.sysctls.get(Sysctls::TCP_EARLY_DEMUX) != Some(1) {
        return Vec::new();
    }
    vec![Finding::new(
        FindingId::OldCniTcpEarlyDemux,
        Severity::Warning,
        Sysctls::TCP_EARLY_DEMUX,
    )
    .evidence(format!(
        "aws-node runs VPC CNI {v} ({}) with ENABLE_POD_ENI=true",
        a.image.as_deref().unwrap_or_default()
    ))
    .evidence(format!("{} = 1", Sysctls::TCP_EARLY_DEMUX))
    .fix(
        "before VPC CNI 1.11, kubelet probes to branch pods need tcp_early_demux off: kubectl set \
         env daemonset aws-node -n kube-system -c aws-vpc-cni-init DISABLE_TCP_EARLY_DEMUX=true \
         (or upgrade the VPC CNI to 1.11 or later)",
    )]
}

/// The mode the `aws-node` DaemonSet asks for (unset: strict, the CNI's default).
fn env_mode(c: &Cluster) -> Option<(EnforcingMode, bool)> {
    let a = c.aws_node.as_ref()?;
    match a.enforcing_mode.as_deref() {
        None => Some((EnforcingMode::Strict, false)),
        Some(m) => m.parse().ok().map(|m| (m, true)),
    }
}

pub fn enforcing_mode_env(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    let (Some((wanted, set)), Some(seen)) = (env_mode(c), topo.mode) else {
        return Vec::new();
    };
    if wanted == seen {
        return Vec::new();
    }
    let odd: Vec<&str> = topo
        .paths
        .iter()
        .filter(|p| p.mode == Some(seen))
        .map(|p| p.host_veth.as_str())
        .collect();
    vec![
        Finding::new(
            FindingId::EnforcingModeEnvMismatch,
            Severity::Info,
            "aws-node",
        )
        .evidence(format!(
            "aws-node's POD_SECURITY_GROUP_ENFORCING_MODE is {}",
            if set {
                wanted.as_str().to_owned()
            } else {
                "unset (strict)".to_owned()
            }
        ))
        .evidence(format!(
            "branch pods set up in {} mode: {}",
            seen.as_str(),
            odd.join(", ")
        ))
        .fix(
            "pods keep the mode they were set up in: recreate them (kubectl rollout restart \
             deployment/...) after changing the mode, or set the mode the node needs on aws-node",
        ),
    ]
}

pub fn strict_unsupported(node: &Node, topo: &Topology) -> Vec<Finding> {
    let Some(c) = cluster(node) else {
        return Vec::new();
    };
    let strict = match topo.mode {
        Some(m) => m == EnforcingMode::Strict,
        None => {
            c.aws_node.as_ref().is_some_and(|a| a.pod_eni_enabled())
                && env_mode(c).is_some_and(|(m, _)| m == EnforcingMode::Strict)
        }
    };
    if !strict {
        return Vec::new();
    }
    let mut evidence = Vec::new();
    for p in pods(c).chain(c.pods.iter().filter(|p| p.host_network)) {
        if p.name.starts_with("calico-node") || p.containers.iter().any(|n| n == "calico-node") {
            evidence.push(format!(
                "Calico's policy engine runs on the node ({}): strict mode bypasses it for branch pods",
                p.key()
            ));
        }
    }
    let branch_pods: Vec<&Pod> = pods(c)
        .filter(|p| {
            p.branch_enis().is_ok_and(|v| !v.is_empty())
                || topo.paths.iter().any(|x| {
                    x.kind == PathKind::BranchEni
                        && x.pod
                            .as_ref()
                            .is_some_and(|r| r.namespace == p.namespace && r.name == p.name)
                })
        })
        .collect();
    for s in c.services.iter().filter(|s| s.external_local) {
        for p in branch_pods.iter().filter(|p| s.selects(p)) {
            evidence.push(format!(
                "{} Service {}/{} with externalTrafficPolicy: Local selects branch pod {}",
                s.type_,
                s.namespace,
                s.name,
                p.key()
            ));
        }
    }
    if evidence.is_empty() {
        return Vec::new();
    }
    let version = c.aws_node.as_ref().and_then(|a| a.version());
    let precondition = match version {
        Some(v) if v < CNI_1_11 => format!(
            "; the standard mode needs VPC CNI 1.11 or later and this node runs {v}: upgrade first"
        ),
        Some(v) => format!(" (this node runs VPC CNI {v}; the standard mode needs 1.11 or later)"),
        None => " (the standard mode needs VPC CNI 1.11 or later)".to_owned(),
    };
    let mut f = Finding::new(
        FindingId::StrictModeUnsupported,
        Severity::Warning,
        "aws-node",
    );
    for e in evidence {
        f = f.evidence(e);
    }
    vec![f.fix(format!(
        "{STANDARD_MODE}{precondition}, then recreate the branch pods"
    ))]
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::model::k8s::{AwsNode, KubeNode, PolicySpec, SecurityGroupPolicy, Service};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(ns: &str, name: &str, ip: &str, l: &[(&str, &str)], eni: Option<&str>) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(l),
            service_account: "default".into(),
            ips: vec![ip.parse().unwrap()],
            pod_eni: eni.map(str::to_owned),
            ..Default::default()
        }
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> SecurityGroupPolicy {
        SecurityGroupPolicy {
            namespace: ns.into(),
            name: name.into(),
            spec: PolicySpec::parse(&spec),
        }
    }

    /// The eni.rs fixture: strict pods on VLANs 1 and 7, an ordinary pod in main.
    fn node_with(cluster: Cluster) -> (Node, Topology) {
        use crate::model::{LinkKind, fixtures::*};
        let mut n = Node {
            links: vec![
                link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
                link(3, "eth1", LinkKind::Device, None, &[]),
                link(10, "vlan.eth.1", LinkKind::Vlan, Some(3), &[]),
                link(12, "vlanaaaaaaaaaaa", LinkKind::Veth, None, &[]),
                link(14, "eni3bbf5fcab96", LinkKind::Veth, None, &[]),
            ],
            routes: vec![
                uni(254, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                uni(254, "192.168.7.31/32", None, "eni3bbf5fcab96"),
                uni(101, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.1"),
                uni(101, "192.168.3.219/32", None, "vlanaaaaaaaaaaa"),
            ],
            rules: vec![
                rule(10, None, None, Some("vlanaaaaaaaaaaa"), 101),
                rule(10, None, None, Some("vlan.eth.1"), 101),
            ],
            cluster: Some(Arc::new(cluster)),
            ..Default::default()
        };
        n.links[2].mac = Some("06:00:00:00:00:01".into());
        let t = Topology::from_node(&n);
        (n, t)
    }

    /// The findings of this file's checks.
    fn ids(node: &Node, topo: &Topology) -> Vec<(&'static str, String)> {
        let first = FindingId::ALL
            .iter()
            .position(|i| *i == FindingId::MalformedPodEniAnnotation)
            .unwrap();
        let kube = &FindingId::ALL[first..first + 9];
        super::super::run(node, topo)
            .into_iter()
            .filter(|f| kube.contains(&f.id))
            .map(|f| (f.id.as_str(), f.subject))
            .collect()
    }

    const ANN_VLAN1: &str = r#"[{"eniId":"eni-0b1","ifAddress":"06:00:00:00:00:01","privateIp":"192.168.3.219","vlanId":1}]"#;

    #[test]
    fn paths_are_labelled_and_a_consistent_cluster_raises_nothing() {
        let mut c = Cluster::default();
        c.pods.push(pod(
            "sg-test",
            "web",
            "192.168.3.219",
            &[("app", "web")],
            Some(ANN_VLAN1),
        ));
        c.pods
            .push(pod("default", "plain", "192.168.7.31", &[], None));
        c.policies.push(policy("sg-test", "p", serde_json::json!({"podSelector": {"matchLabels": {"app": "web"}}, "securityGroups": {"groupIds": ["sg-0pod"]}})));
        let (n, t) = node_with(c);
        let branch = t
            .paths
            .iter()
            .find(|p| p.kind == PathKind::BranchEni)
            .unwrap();
        let r = branch.pod.as_ref().unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("sg-test", "web"));
        assert_eq!(r.branch_eni.as_deref(), Some("eni-0b1"));
        assert_eq!(r.branch_vlan, Some(1));
        assert_eq!(r.security_groups, ["sg-0pod"]);
        assert_eq!(branch.eni_id.as_deref(), Some("eni-0b1"));
        assert_eq!(
            crate::model::eni::of_link(&t, "vlan.eth.1")
                .unwrap()
                .describe(),
            "the branch ENI eni-0b1 on VLAN 1 (vlan.eth.1)"
        );
        let plain = t
            .paths
            .iter()
            .find(|p| p.kind == PathKind::NodeEni)
            .unwrap();
        assert_eq!(plain.pod.as_ref().unwrap().name, "plain");
        // veths of the fixture are not the CNI's hashes of these names.
        let got = ids(&n, &t);
        assert!(
            got.iter().all(|(id, _)| *id == "veth-name-mismatch"),
            "{got:?}"
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn annotation_vlan_or_mac_that_the_node_does_not_use() {
        let mut c = Cluster::default();
        c.pods.push(pod(
            "sg-test",
            "web",
            "192.168.3.219",
            &[],
            Some(&ANN_VLAN1.replace("\"vlanId\":1", "\"vlanId\":4")),
        ));
        let (n, t) = node_with(c);
        let f = pod_eni_mismatch(&n, &t);
        assert_eq!(f.len(), 1);
        assert!(f[0].evidence[1].contains("VLAN 1"), "{:?}", f[0].evidence);
        let mut c = Cluster::default();
        c.pods.push(pod(
            "sg-test",
            "web",
            "192.168.3.219",
            &[],
            Some(&ANN_VLAN1.replace("06:00:00:00:00:01", "06:00:00:00:00:99")),
        ));
        let (n, t) = node_with(c);
        let f = pod_eni_mismatch(&n, &t);
        assert_eq!(f[0].evidence[1], "vlan.eth.1 has MAC 06:00:00:00:00:01");
        // An annotated pod on a node-ENI path.
        let mut c = Cluster::default();
        c.pods.push(pod(
            "default",
            "plain",
            "192.168.7.31",
            &[],
            Some(ANN_VLAN1),
        ));
        let (n, t) = node_with(c);
        assert_eq!(pod_eni_mismatch(&n, &t)[0].subject, "default/plain");
    }

    #[test]
    fn veth_named_as_the_cni_does_is_fine() {
        use crate::model::{LinkKind, fixtures::*};
        let veth = k8s::veth_name("eni", "default", "plain");
        let mut c = Cluster::default();
        c.pods
            .push(pod("default", "plain", "192.168.7.31", &[], None));
        let n = Node {
            links: vec![
                link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
                link(14, &veth, LinkKind::Veth, None, &[]),
                link(15, "eni00000000000", LinkKind::Veth, None, &[]),
            ],
            routes: vec![
                uni(254, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                uni(254, "192.168.7.31/32", None, &veth),
            ],
            cluster: Some(Arc::new(c)),
            ..Default::default()
        };
        let t = Topology::from_node(&n);
        assert!(veth_name_mismatch(&n, &t).is_empty());
        assert_eq!(
            t.path_of_veth(&veth)
                .unwrap()
                .pod
                .as_ref()
                .unwrap()
                .matched_by,
            k8s::MatchedBy::PodIp
        );
    }

    #[test]
    fn malformed_annotation_and_policy_are_findings() {
        let mut c = Cluster::default();
        c.pods.push(pod(
            "sg-test",
            "web",
            "192.168.3.219",
            &[],
            Some("[{\"eniId\": "),
        ));
        c.policies.push(policy("sg-test", "bad", serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}, "securityGroups": {"groupIds": ["sg-1"]}})));
        let (n, t) = node_with(c);
        let got = ids(&n, &t);
        assert!(
            got.contains(&("malformed-pod-eni-annotation", "sg-test/web".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&("malformed-security-group-policy", "sg-test/bad".into())),
            "{got:?}"
        );
        // The path is still labelled, without branch ENI.
        let p = t
            .paths
            .iter()
            .find(|p| p.pod_ip == Some("192.168.3.219".parse().unwrap()))
            .unwrap();
        assert_eq!(p.pod.as_ref().unwrap().branch_eni, None);
    }

    #[test]
    fn selected_pod_without_branch_eni_and_no_trunk() {
        use crate::model::{LinkKind, fixtures::*};
        let mut c = Cluster::default();
        c.pods.push(pod(
            "default",
            "plain",
            "192.168.7.31",
            &[("app", "db")],
            None,
        ));
        c.policies.push(policy("default", "db", serde_json::json!({"podSelector": {"matchLabels": {"app": "db"}}, "securityGroups": {"groupIds": ["sg-0db"]}})));
        c.aws_node = Some(AwsNode {
            image: Some("x/amazon-k8s-cni:v1.18.0".into()),
            ..Default::default()
        });
        c.node = Some(KubeNode {
            name: "ip-192-168-1-10".into(),
            labels: labels(&[
                (k8s::INSTANCE_TYPE_LABEL, "t3.medium"),
                (k8s::HAS_TRUNK_LABEL, "false"),
            ]),
        });
        let n = Node {
            links: vec![
                link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
                link(14, "eni3bbf5fcab96", LinkKind::Veth, None, &[]),
            ],
            routes: vec![
                uni(254, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                uni(254, "192.168.7.31/32", None, "eni3bbf5fcab96"),
            ],
            cluster: Some(Arc::new(c)),
            ..Default::default()
        };
        let t = Topology::from_node(&n);
        let f = policy_without_branch(&n, &t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "default/plain");
        assert!(f[0].evidence[0].contains("default/db (sg-0db)"));
        let f = trunk_unavailable(&n, &t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].subject, "ip-192-168-1-10");
        let ev = f[0].evidence.join("\n");
        assert!(ev.contains("ENABLE_POD_ENI is unset"), "{ev}");
        assert!(ev.contains("has-trunk-attached=false"), "{ev}");
        assert!(ev.contains("t3.medium"), "{ev}");
        assert!(f[0].remediation.contains(ENABLE_POD_ENI));
        assert!(f[0].remediation.contains("AmazonEKSVPCResourceController"));
    }

    #[test]
    fn old_cni_with_early_demux() {
        let c = Cluster {
            aws_node: Some(AwsNode {
                enable_pod_eni: Some("true".into()),
                image: Some("x/amazon-k8s-cni:v1.10.1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (mut n, t) = node_with(c);
        n.sysctls.0.insert(Sysctls::TCP_EARLY_DEMUX.into(), 1);
        assert_eq!(old_cni_early_demux(&n, &t).len(), 1);
        n.sysctls.0.insert(Sysctls::TCP_EARLY_DEMUX.into(), 0);
        assert!(old_cni_early_demux(&n, &t).is_empty());
    }

    #[test]
    fn mode_env_and_strict_where_standard_is_needed() {
        let mut c = Cluster {
            aws_node: Some(AwsNode {
                enable_pod_eni: Some("true".into()),
                enforcing_mode: Some("standard".into()),
                image: Some("x/amazon-k8s-cni:v1.19.0".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.pods.push(pod(
            "sg-test",
            "web",
            "192.168.3.219",
            &[("app", "web")],
            Some(ANN_VLAN1),
        ));
        let mut calico = pod("calico-system", "calico-node-x7", "192.168.1.10", &[], None);
        calico.host_network = true;
        c.pods.push(calico);
        c.services.push(Service {
            namespace: "sg-test".into(),
            name: "web".into(),
            type_: "LoadBalancer".into(),
            external_local: true,
            selector: labels(&[("app", "web")]),
            ports: Vec::new(),
        });
        let (n, t) = node_with(c);
        let f = enforcing_mode_env(&n, &t);
        assert_eq!(f.len(), 1, "standard on aws-node, strict pods on the node");
        let f = strict_unsupported(&n, &t);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence.len(), 2, "{:?}", f[0].evidence);
        assert!(f[0].remediation.starts_with(STANDARD_MODE));
        assert!(f[0].remediation.contains("1.19.0"));
    }
}
