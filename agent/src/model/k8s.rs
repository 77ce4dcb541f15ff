//! The Kubernetes side of the node, as plain data: the pods scheduled here, the
//! SecurityGroupPolicies, ServiceAccounts and Services that decide their groups, the node
//! object and the `aws-node` DaemonSet ([`Cluster`]), and the pure parts of reading them:
//! the `vpc.amazonaws.com/pod-eni` annotation ([`parse_pod_eni`]), label selectors
//! ([`LabelSelector`]), and the CNI's host veth name ([`veth_name`]). No I/O: `collect::kube`
//! fills a [`Cluster`] from the API server's watches.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::cni::STRICT_VETH_PREFIX;

/// The annotation the VPC resource controller puts on a pod that got a branch ENI.
pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";
/// Node label the VPC CNI (<= 1.14) sets: `true`, `false` or `not-supported`.
pub const HAS_TRUNK_LABEL: &str = "vpc.amazonaws.com/has-trunk-attached";
/// Well-known node labels.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
pub const OS_LABEL: &str = "kubernetes.io/os";

/// What the API server said about this node's pods and what decides their groups. A
/// snapshot of the agent's watches: every list is what the last (re)list and the watch
/// events since gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// This node's Node object, once seen.
    pub node: Option<KubeNode>,
    /// The `aws-node` DaemonSet in kube-system, once seen.
    pub aws_node: Option<AwsNode>,
    /// Pods scheduled on this node (`spec.nodeName`).
    pub pods: Vec<Pod>,
    pub policies: Vec<SecurityGroupPolicy>,
    pub service_accounts: Vec<ServiceAccount>,
    pub services: Vec<Service>,
    /// Addresses of the cluster's CoreDNS pods (`k8s-app=kube-dns` in kube-system), on any
    /// node: the far end of every pod's DNS.
    pub coredns: Vec<IpAddr>,
}

/// The node object: name and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl KubeNode {
    /// `node.kubernetes.io/instance-type`, e.g. `m5.large`.
    pub fn instance_type(&self) -> Option<&str> {
        self.labels.get(INSTANCE_TYPE_LABEL).map(String::as_str)
    }

    /// `kubernetes.io/os`: `linux`, `windows`.
    pub fn os(&self) -> Option<&str> {
        self.labels.get(OS_LABEL).map(String::as_str)
    }

    /// `vpc.amazonaws.com/has-trunk-attached`.
    pub fn has_trunk_attached(&self) -> Option<&str> {
        self.labels.get(HAS_TRUNK_LABEL).map(String::as_str)
    }
}

/// Whether an EC2 instance type can have a trunk ENI. The resource controller's limits
/// (`pkg/aws/vpc/limits.go`, `IsTrunkingCompatible`) say no for every burstable `t*` type
/// (and the older generations without Nitro): this knows the families, not the table.
pub fn trunking_compatible(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or_default();
    let old = [
        "t1", "t2", "t3", "t3a", "t4g", "m1", "m2", "m3", "m4", "c1", "c3", "c4", "r3", "r4", "i2",
        "i3", "d2", "g2", "g3", "p2", "x1", "x1e", "h1", "f1", "cc2", "cr1", "hs1",
    ];
    !family.starts_with('t') && !old.contains(&family)
}

/// The `aws-node` DaemonSet: the settings of its `aws-node` container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsNode {
    /// `ENABLE_POD_ENI` as set (`None` when unset).
    pub enable_pod_eni: Option<String>,
    /// `POD_SECURITY_GROUP_ENFORCING_MODE` as set (`None` when unset: the CNI's default is
    /// strict).
    pub enforcing_mode: Option<String>,
    /// `DISABLE_TCP_EARLY_DEMUX` of the init container, as set.
    pub disable_tcp_early_demux: Option<String>,
    /// The container's image (`.../amazon-k8s-cni:v1.19.2-eksbuild.1`).
    pub image: Option<String>,
}

impl AwsNode {
    /// Whether `ENABLE_POD_ENI` is `true`.
    pub fn pod_eni_enabled(&self) -> bool {
        self.enable_pod_eni
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The CNI version from the image tag (`v1.19.2-eksbuild.1` -> 1.19.2).
    pub fn version(&self) -> Option<CniVersion> {
        let image = self.image.as_deref()?;
        let tag = image.rsplit('/').next()?.split_once(':')?.1;
        CniVersion::parse(tag)
    }
}

/// A VPC CNI version, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CniVersion(pub u32, pub u32, pub u32);

impl CniVersion {
    /// `v1.10.4`, `1.19.2-eksbuild.1`, `v1.7`.
    pub fn parse(tag: &str) -> Option<CniVersion> {
        let core = tag.strip_prefix('v').unwrap_or(tag);
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(CniVersion(major, minor, patch))
    }
}

impl std::fmt::Display for CniVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A pod scheduled on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: such a pod has no path of its own.
    pub host_network: bool,
    /// The raw `vpc.amazonaws.com/pod-eni` annotation, when present.
    pub pod_eni: Option<String>,
    /// The names of its containers (`calico-node`).
    pub containers: Vec<String>,
    /// The TCP ports its containers' liveness, readiness and startup probes connect to
    /// (`tcpSocket`, `httpGet`, `grpc`; named ports resolved against the container's
    /// ports). kubelet opens them from the node.
    pub probes: Vec<ProbePort>,
    /// Its containers' declared ports, by name (for a Service's named `targetPort`).
    pub container_ports: Vec<ContainerPort>,
}

/// A port a kubelet probe connects to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProbePort {
    pub container: String,
    /// `liveness`, `readiness`, `startup`.
    pub probe: &'static str,
    /// `tcpSocket`, `httpGet`, `grpc`.
    pub handler: &'static str,
    pub port: u16,
}

/// A container port (`spec.containers[].ports[]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
}

/// A Service port's `targetPort`: a number, or a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One of a Service's ports, as it reaches the pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    pub target: TargetPort,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The branch ENIs of its annotation; empty without the annotation.
    ///
    /// # Errors
    /// [`AnnotationError`] when the annotation is not the resource controller's JSON.
    pub fn branch_enis(&self) -> Result<Vec<PodEni>, AnnotationError> {
        match &self.pod_eni {
            Some(raw) => parse_pod_eni(raw),
            None => Ok(Vec::new()),
        }
    }
}

/// One entry of the `vpc.amazonaws.com/pod-eni` annotation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEni {
    /// `eni-05fea37c9708913d7`.
    pub eni_id: String,
    /// The branch ENI's MAC, which the CNI gives `vlan.eth.N`.
    pub if_address: String,
    #[serde(default)]
    pub private_ip: Option<IpAddr>,
    #[serde(default)]
    pub ipv6_addr: Option<IpAddr>,
    pub vlan_id: u16,
    #[serde(default)]
    pub subnet_cidr: Option<String>,
}

/// Why the `vpc.amazonaws.com/pod-eni` annotation cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AnnotationError {
    #[error("vpc.amazonaws.com/pod-eni is not a JSON array of branch ENIs: {message}")]
    Json { message: String },
    #[error("vpc.amazonaws.com/pod-eni names VLAN {vlan_id} of {eni_id}: VLAN ids are 1..=4094")]
    VlanId { eni_id: String, vlan_id: u16 },
}

/// Parses `[{"eniId":"eni-...","ifAddress":"06:...","privateIp":"10.0.0.1","vlanId":2,...}]`.
///
/// # Errors
/// [`AnnotationError`] for anything else (truncated JSON, a missing `eniId` or `vlanId`,
/// a VLAN id of 0 or above 4094).
pub fn parse_pod_eni(raw: &str) -> Result<Vec<PodEni>, AnnotationError> {
    let enis: Vec<PodEni> = serde_json::from_str(raw).map_err(|e| AnnotationError::Json {
        message: e.to_string(),
    })?;
    if let Some(e) = enis.iter().find(|e| e.vlan_id == 0 || e.vlan_id > 4094) {
        return Err(AnnotationError::VlanId {
            eni_id: e.eni_id.clone(),
            vlan_id: e.vlan_id,
        });
    }
    Ok(enis)
}

/// The host veth name the VPC CNI gives a pod: `prefix` + the first 11 hex digits of
/// sha1(`<namespace>.<pod>`) (CNI `pkg/networkutils/names.go`; `prefix` is `eni` or
/// `AWS_VPC_K8S_CNI_VETHPREFIX`, `vlan` for strict branch pods).
pub fn veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let hex = sha1_smol::Sha1::from(format!("{namespace}.{pod}"))
        .digest()
        .to_string();
    format!("{prefix}{}", &hex[..11])
}

/// The host veth names a pod may have: `<vethPrefix><hash>` and `vlan<hash>`.
pub fn veth_names(veth_prefix: &str, namespace: &str, pod: &str) -> [String; 2] {
    [
        veth_name(veth_prefix, namespace, pod),
        veth_name(STRICT_VETH_PREFIX, namespace, pod),
    ]
}

/// A label selector (`metav1.LabelSelector`): every `matchLabels` pair and every
/// requirement must hold. An empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a selector or a policy cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PolicyError {
    #[error("{field} is not a label selector: {message}")]
    Selector {
        field: &'static str,
        message: String,
    },
    #[error("{field}: unknown operator {operator:?} (In, NotIn, Exists, DoesNotExist)")]
    Operator {
        field: &'static str,
        operator: String,
    },
    #[error("{field}: operator {operator} needs {needs}")]
    Values {
        field: &'static str,
        operator: &'static str,
        needs: &'static str,
    },
    #[error("spec.securityGroups.groupIds is missing or not a list of sg-... ids")]
    GroupIds,
    #[error("spec has neither podSelector nor serviceAccountSelector")]
    NoSelector,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
struct RawRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Option<Vec<String>>,
}

impl LabelSelector {
    /// Reads a selector from its JSON, checking operators and values as the API server's
    /// validation does.
    ///
    /// # Errors
    /// [`PolicyError`] naming `field`.
    pub fn parse(
        field: &'static str,
        value: &serde_json::Value,
    ) -> Result<LabelSelector, PolicyError> {
        let raw: RawSelector =
            serde_json::from_value(value.clone()).map_err(|e| PolicyError::Selector {
                field,
                message: e.to_string(),
            })?;
        let mut match_expressions = Vec::new();
        for r in raw.match_expressions.unwrap_or_default() {
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(PolicyError::Operator {
                        field,
                        operator: other.to_owned(),
                    });
                }
            };
            let values = r.values.unwrap_or_default();
            match (operator, values.is_empty()) {
                (Operator::In | Operator::NotIn, true) => {
                    return Err(PolicyError::Values {
                        field,
                        operator: if operator == Operator::In {
                            "In"
                        } else {
                            "NotIn"
                        },
                        needs: "at least one value",
                    });
                }
                (Operator::Exists | Operator::DoesNotExist, false) => {
                    return Err(PolicyError::Values {
                        field,
                        operator: if operator == Operator::Exists {
                            "Exists"
                        } else {
                            "DoesNotExist"
                        },
                        needs: "no values",
                    });
                }
                _ => {}
            }
            match_expressions.push(Requirement {
                key: r.key,
                operator,
                values,
            });
        }
        Ok(LabelSelector {
            match_labels: raw.match_labels.unwrap_or_default(),
            match_expressions,
        })
    }

    /// Whether `labels` satisfy every pair and requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => !got.is_some_and(|v| r.values.contains(v)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// A SecurityGroupPolicy (vpcresources.k8s.aws/v1beta1), namespaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroupPolicy {
    pub namespace: String,
    pub name: String,
    /// The spec, or why it cannot be read.
    pub spec: Result<PolicySpec, PolicyError>,
}

/// What a policy's spec says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub pod_selector: Option<LabelSelector>,
    pub service_account_selector: Option<LabelSelector>,
    /// `spec.securityGroups.groupIds`.
    pub group_ids: Vec<String>,
}

impl PolicySpec {
    /// Reads `spec` of a policy object.
    ///
    /// # Errors
    /// [`PolicyError`] when a selector is malformed, the group ids are missing, or neither
    /// selector is given.
    pub fn parse(spec: &serde_json::Value) -> Result<PolicySpec, PolicyError> {
        let selector = |key: &str, field: &'static str| match spec.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => LabelSelector::parse(field, v).map(Some),
        };
        let pod_selector = selector("podSelector", "spec.podSelector")?;
        let service_account_selector =
            selector("serviceAccountSelector", "spec.serviceAccountSelector")?;
        if pod_selector.is_none() && service_account_selector.is_none() {
            return Err(PolicyError::NoSelector);
        }
        let group_ids: Vec<String> = spec
            .pointer("/securityGroups/groupIds")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .filter(|ids: &Vec<String>| !ids.is_empty())
            .ok_or(PolicyError::GroupIds)?;
        Ok(PolicySpec {
            pod_selector,
            service_account_selector,
            group_ids,
        })
    }
}

/// A ServiceAccount: its labels select it in `serviceAccountSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A Service of type NodePort or LoadBalancer (the only ones that matter here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `NodePort`, `LoadBalancer`.
    pub type_: String,
    /// `spec.externalTrafficPolicy` is `Local`.
    pub external_local: bool,
    /// `spec.selector`; an empty one selects no pod (a Service without selector).
    pub selector: BTreeMap<String, String>,
    /// `spec.ports[]`: protocol and `targetPort` (the port when unset).
    pub ports: Vec<ServicePort>,
}

impl ServicePort {
    /// The pod's port this Service port reaches: a number, or the named container port.
    pub fn resolve(&self, pod: &Pod) -> Option<u16> {
        match &self.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod
                .container_ports
                .iter()
                .find(|c| c.name.as_deref() == Some(name) && c.protocol == self.protocol)
                .map(|c| c.port),
        }
    }
}

impl Service {
    /// Whether the Service sends traffic to `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        self.namespace == pod.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

impl Cluster {
    /// The policies whose selectors select `pod`, as the resource controller decides it:
    /// same namespace; with both selectors, both must match; an unreadable policy selects
    /// nothing.
    pub fn policies_for<'a>(
        &'a self,
        pod: &'a Pod,
    ) -> impl Iterator<Item = (&'a SecurityGroupPolicy, &'a PolicySpec)> + 'a {
        let sa_labels = self
            .service_accounts
            .iter()
            .find(|sa| sa.namespace == pod.namespace && sa.name == pod.service_account)
            .map(|sa| &sa.labels);
        self.policies.iter().filter_map(move |p| {
            let spec = p.spec.as_ref().ok()?;
            if p.namespace != pod.namespace || pod.host_network {
                return None;
            }
            let by_pod = spec.pod_selector.as_ref().map(|s| s.matches(&pod.labels));
            let by_sa = spec
                .service_account_selector
                .as_ref()
                .map(|s| sa_labels.is_some_and(|l| s.matches(l)));
            let selected = match (by_pod, by_sa) {
                (Some(a), Some(b)) => a && b,
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => false,
            };
            selected.then_some((p, spec))
        })
    }

    /// The security group ids the policies selecting `pod` give it, in order, deduplicated.
    pub fn security_groups(&self, pod: &Pod) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, spec) in self.policies_for(pod) {
            for g in &spec.group_ids {
                if !out.contains(g) {
                    out.push(g.clone());
                }
            }
        }
        out
    }

    /// The pod behind a path: by pod IP first, then by the CNI's veth name.
    pub fn pod_of(
        &self,
        pod_ip: Option<IpAddr>,
        host_veth: &str,
        veth_prefix: &str,
    ) -> Option<(&Pod, MatchedBy)> {
        let live = || self.pods.iter().filter(|p| !p.host_network);
        if let Some(ip) = pod_ip
            && let Some(p) = live().find(|p| p.ips.contains(&ip))
        {
            return Some((p, MatchedBy::PodIp));
        }
        live()
            .find(|p| {
                veth_names(veth_prefix, &p.namespace, &p.name).contains(&host_veth.to_owned())
            })
            .map(|p| (p, MatchedBy::VethName))
    }
}

/// How a path was matched to its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchedBy {
    /// The path's pod IP is one of `status.podIPs`.
    PodIp,
    /// The host veth is the CNI's hash of `<namespace>.<pod>`.
    VethName,
}

/// The pod behind a path, as the report and the metrics label it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub matched_by: MatchedBy,
    /// The branch ENI id of the pod's annotation.
    pub branch_eni: Option<String>,
    /// The VLAN id of the pod's annotation.
    pub branch_vlan: Option<u16>,
    /// The security groups of the policies selecting the pod.
    pub security_groups: Vec<String>,
}

/// Labels `pod` for a path.
pub fn pod_ref(cluster: &Cluster, pod: &Pod, matched_by: MatchedBy) -> PodRef {
    let eni = pod.branch_enis().ok().and_then(|v| v.into_iter().next());
    PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        matched_by,
        branch_eni: eni.as_ref().map(|e| e.eni_id.clone()),
        branch_vlan: eni.map(|e| e.vlan_id),
        security_groups: cluster.security_groups(pod),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pod_eni_annotation_of_the_resource_controller() {
        let raw = r#"[{"eniId":"eni-05fea37c9708913d7","ifAddress":"06:74:5b:7b:54:3a","privateIp":"10.105.49.186","vlanId":2,"subnetCidr":"10.105.49.128/26"}]"#;
        let enis = parse_pod_eni(raw).unwrap();
        assert_eq!(enis.len(), 1);
        assert_eq!(enis[0].eni_id, "eni-05fea37c9708913d7");
        assert_eq!(enis[0].if_address, "06:74:5b:7b:54:3a");
        assert_eq!(enis[0].vlan_id, 2);
        assert_eq!(enis[0].private_ip, Some("10.105.49.186".parse().unwrap()));
        // IPv6 and association fields, unknown fields ignored.
        let v6 = r#"[{"eniId":"eni-1","ifAddress":"06:00:00:00:00:01","ipv6Addr":"2600::1","vlanId":7,"associationID":"x"}]"#;
        assert_eq!(
            parse_pod_eni(v6).unwrap()[0].ipv6_addr,
            Some("2600::1".parse().unwrap())
        );
    }

    #[test]
    fn malformed_pod_eni_annotations_are_typed_errors() {
        for raw in [
            "",
            "[",
            "{}",
            r#"[{"eniId":"eni-1"}]"#,
            r#"[{"eniId":"eni-1","ifAddress":"06:00:00:00:00:01","vlanId":"two"}]"#,
            r#"[{"eniId":"eni-1","ifAddress":"06:00:00:00:00:01","vlanId":-1}]"#,
        ] {
            assert!(
                matches!(parse_pod_eni(raw), Err(AnnotationError::Json { .. })),
                "{raw:?}"
            );
        }
        assert_eq!(
            parse_pod_eni(r#"[{"eniId":"eni-1","ifAddress":"a","vlanId":0}]"#),
            Err(AnnotationError::VlanId {
                eni_id: "eni-1".into(),
                vlan_id: 0
            })
        );
        assert_eq!(parse_pod_eni("[]"), Ok(Vec::new()));
    }

    #[test]
    fn veth_name_is_the_cnis_sha1_of_namespace_dot_pod() {
        // `printf %s default.nginx | sha1sum | cut -c1-11` (coreutils, not this code).
        assert_eq!(veth_name("eni", "default", "nginx"), "enic440f455693");
        assert_eq!(veth_name("vlan", "default", "nginx"), "vlanc440f455693");
        assert_eq!(veth_name("eni", "default", "ordinary-a"), "enifc495a367e1");
        // The kernel's IFNAMSIZ: 15 characters at most, whatever the names' lengths.
        assert!(
            veth_names("eni", "a-long-namespace-name", "a-long-pod-name-0123456789")
                .iter()
                .all(|n| n.len() <= 15)
        );
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel = LabelSelector::parse(
            "spec.podSelector",
            &json!({
                "matchLabels": {"role": "db"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                    {"key": "tier", "operator": "NotIn", "values": ["cache"]},
                    {"key": "team", "operator": "Exists"},
                    {"key": "legacy", "operator": "DoesNotExist"}
                ]
            }),
        )
        .unwrap();
        let base = [("role", "db"), ("env", "prod"), ("team", "a")];
        assert!(sel.matches(&labels(&base)));
        assert!(!sel.matches(&labels(&[("role", "web"), ("env", "prod"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[("role", "db"), ("env", "dev"), ("team", "a")])));
        assert!(
            !sel.matches(&labels(&[("role", "db"), ("team", "a")])),
            "In needs the key"
        );
        assert!(!sel.matches(&labels(&[
            ("role", "db"),
            ("env", "prod"),
            ("team", "a"),
            ("tier", "cache")
        ])));
        assert!(sel.matches(&labels(&[
            ("role", "db"),
            ("env", "prod"),
            ("team", "a"),
            ("tier", "web")
        ])));
        assert!(
            !sel.matches(&labels(&[("role", "db"), ("env", "prod")])),
            "Exists"
        );
        assert!(!sel.matches(&labels(&[
            ("role", "db"),
            ("env", "prod"),
            ("team", "a"),
            ("legacy", "")
        ])));
        // An empty selector selects everything.
        let all = LabelSelector::parse("spec.podSelector", &json!({})).unwrap();
        assert!(all.matches(&labels(&[])) && all.matches(&labels(&base)));
    }

    #[test]
    fn malformed_selectors_are_typed_errors() {
        let f = "spec.podSelector";
        assert!(matches!(
            LabelSelector::parse(
                f,
                &json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]})
            ),
            Err(PolicyError::Operator { .. })
        ));
        assert!(matches!(
            LabelSelector::parse(
                f,
                &json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            ),
            Err(PolicyError::Values { .. })
        ));
        assert!(matches!(
            LabelSelector::parse(
                f,
                &json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            Err(PolicyError::Values { .. })
        ));
        assert!(matches!(
            LabelSelector::parse(f, &json!({"matchLabels": ["role"]})),
            Err(PolicyError::Selector { .. })
        ));
        assert!(matches!(
            LabelSelector::parse(f, &json!("role=db")),
            Err(PolicyError::Selector { .. })
        ));
    }

    #[test]
    fn policy_specs() {
        let ok = PolicySpec::parse(&json!({
            "podSelector": {"matchLabels": {"app": "x"}},
            "securityGroups": {"groupIds": ["sg-1", "sg-2"]}
        }))
        .unwrap();
        assert_eq!(ok.group_ids, ["sg-1", "sg-2"]);
        assert!(ok.service_account_selector.is_none());
        assert_eq!(
            PolicySpec::parse(&json!({"podSelector": {}})),
            Err(PolicyError::GroupIds)
        );
        assert_eq!(
            PolicySpec::parse(&json!({"podSelector": {}, "securityGroups": {"groupIds": "sg-1"}})),
            Err(PolicyError::GroupIds)
        );
        assert_eq!(
            PolicySpec::parse(&json!({"securityGroups": {"groupIds": ["sg-1"]}})),
            Err(PolicyError::NoSelector)
        );
        assert!(matches!(
            PolicySpec::parse(
                &json!({"serviceAccountSelector": 3, "securityGroups": {"groupIds": ["sg-1"]}})
            ),
            Err(PolicyError::Selector {
                field: "spec.serviceAccountSelector",
                ..
            })
        ));
    }

    fn pod(ns: &str, name: &str, ip: &str, l: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(l),
            service_account: "default".into(),
            ips: vec![ip.parse().unwrap()],
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

    #[test]
    fn policies_select_by_pod_labels_service_account_and_namespace() {
        let mut c = Cluster::default();
        let mut p = pod("sg-test", "a", "192.168.1.5", &[("app", "x")]);
        p.service_account = "runner".into();
        c.service_accounts.push(ServiceAccount {
            namespace: "sg-test".into(),
            name: "runner".into(),
            labels: labels(&[("sg", "yes")]),
        });
        c.policies = vec![
            policy(
                "sg-test",
                "by-pod",
                json!({"podSelector": {"matchLabels": {"app": "x"}}, "securityGroups": {"groupIds": ["sg-1"]}}),
            ),
            policy(
                "sg-test",
                "by-sa",
                json!({"serviceAccountSelector": {"matchLabels": {"sg": "yes"}}, "securityGroups": {"groupIds": ["sg-2", "sg-1"]}}),
            ),
            policy(
                "sg-test",
                "both-one-fails",
                json!({"podSelector": {"matchLabels": {"app": "x"}}, "serviceAccountSelector": {"matchLabels": {"sg": "no"}}, "securityGroups": {"groupIds": ["sg-3"]}}),
            ),
            policy(
                "other",
                "elsewhere",
                json!({"podSelector": {}, "securityGroups": {"groupIds": ["sg-4"]}}),
            ),
            policy(
                "sg-test",
                "broken",
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}, "securityGroups": {"groupIds": ["sg-5"]}}),
            ),
        ];
        assert_eq!(c.security_groups(&p), ["sg-1", "sg-2"]);
        let names: Vec<&str> = c.policies_for(&p).map(|(p, _)| p.name.as_str()).collect();
        assert_eq!(names, ["by-pod", "by-sa"]);
        // A service account that does not exist selects nothing by its labels.
        p.service_account = "missing".into();
        assert_eq!(c.security_groups(&p), ["sg-1"]);
        // hostNetwork pods get no branch ENI.
        p.host_network = true;
        assert!(c.security_groups(&p).is_empty());
    }

    #[test]
    fn paths_find_their_pod_by_ip_then_by_veth_name() {
        let mut c = Cluster::default();
        c.pods.push(pod("default", "a", "192.168.7.31", &[]));
        let mut host = pod("kube-system", "aws-node-x", "192.168.1.10", &[]);
        host.host_network = true;
        c.pods.push(host);
        let (p, by) = c
            .pod_of(Some("192.168.7.31".parse().unwrap()), "whatever", "eni")
            .unwrap();
        assert_eq!((p.name.as_str(), by), ("a", MatchedBy::PodIp));
        let veth = veth_name("eni", "default", "a");
        let (p, by) = c.pod_of(None, &veth, "eni").unwrap();
        assert_eq!((p.name.as_str(), by), ("a", MatchedBy::VethName));
        let strict = veth_name("vlan", "default", "a");
        assert!(c.pod_of(None, &strict, "eni").is_some());
        assert!(
            c.pod_of(
                Some("192.168.1.10".parse().unwrap()),
                "eni00000000000",
                "eni"
            )
            .is_none()
        );
    }

    #[test]
    fn aws_node_version_and_flags() {
        let a = AwsNode {
            enable_pod_eni: Some("TRUE".into()),
            image: Some(
                "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.2-eksbuild.1"
                    .into(),
            ),
            ..Default::default()
        };
        assert!(a.pod_eni_enabled());
        assert_eq!(a.version(), Some(CniVersion(1, 19, 2)));
        assert!(a.version().unwrap() >= CniVersion(1, 11, 0));
        assert_eq!(CniVersion::parse("v1.10"), Some(CniVersion(1, 10, 0)));
        assert_eq!(CniVersion::parse("latest"), None);
        let local = AwsNode {
            image: Some("localhost:5000/amazon-k8s-cni:v1.7.5".into()),
            ..Default::default()
        };
        assert_eq!(local.version(), Some(CniVersion(1, 7, 5)));
        let untagged = AwsNode {
            image: Some("localhost:5000/amazon-k8s-cni".into()),
            ..Default::default()
        };
        assert_eq!(untagged.version(), None);
        assert!(!AwsNode::default().pod_eni_enabled());
    }

    #[test]
    fn trunking_by_instance_family() {
        for t in [
            "m5.large",
            "c6g.xlarge",
            "m5.metal",
            "r6i.2xlarge",
            "m6g.medium",
        ] {
            assert!(trunking_compatible(t), "{t}");
        }
        for t in [
            "t3.medium",
            "t3a.large",
            "t4g.small",
            "m4.large",
            "c4.xlarge",
        ] {
            assert!(!trunking_compatible(t), "{t}");
        }
    }

    #[test]
    fn services_select_pods_of_their_namespace() {
        let p = pod("web", "a", "192.168.1.5", &[("app", "x"), ("v", "1")]);
        let mut s = Service {
            namespace: "web".into(),
            name: "lb".into(),
            type_: "LoadBalancer".into(),
            external_local: true,
            selector: labels(&[("app", "x")]),
            ports: Vec::new(),
        };
        assert!(s.selects(&p));
        s.namespace = "other".into();
        assert!(!s.selects(&p));
        s.namespace = "web".into();
        s.selector.clear();
        assert!(!s.selects(&p), "a Service without selector selects no pod");
    }
}
