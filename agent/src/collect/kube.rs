//! The node's Kubernetes context from the API server: kube-rs watchers feeding reflectors,
//! turned into a [`Cluster`] snapshot whenever one of them changes.
//!
//! What is read, and nothing else (the RBAC in deploy/ grants exactly this):
//! `kubectl get pods -A --field-selector spec.nodeName=$NODE_NAME`,
//! `kubectl get securitygrouppolicies -A` (vpcresources.k8s.aws/v1beta1),
//! `kubectl get serviceaccounts -A`, `kubectl get services -A`,
//! `kubectl get node $NODE_NAME`, `kubectl get daemonset aws-node -n kube-system` and
//! `kubectl get pods -A -l k8s-app=kube-dns` (CoreDNS's addresses, on any node), each
//! listed then watched (bookmarks on; a `410 Gone` or a broken watch relists, and the
//! reflector swaps in the new list only when it is complete, so a pod deleted while the
//! API server was away is gone after the relist).
//!
//! Side effects: HTTP(S) requests to the API server, for as long as [`watch`] runs. An
//! unreachable API server is retried with kube's default backoff (800 ms doubling to 30 s,
//! with jitter), logged once when it fails and once when it answers again.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node as K8sNode, Pod as K8sPod, Service as K8sService, ServiceAccount as K8sSa},
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch as channel;
use tracing::{info, warn};

use k8s_openapi::{api::core::v1::Container, apimachinery::pkg::util::intstr::IntOrString};

use crate::model::k8s::{
    AwsNode, Cluster, ContainerPort, KubeNode, POD_ENI_ANNOTATION, Pod, PolicySpec, ProbePort,
    SecurityGroupPolicy, Service, ServiceAccount, ServicePort, TargetPort,
};

/// The VPC CNI's DaemonSet and its containers.
const AWS_NODE: &str = "aws-node";
const AWS_NODE_INIT: &str = "aws-vpc-cni-init";
const KUBE_SYSTEM: &str = "kube-system";

/// How often, at most, a new [`Cluster`] snapshot is built while events arrive (a list of
/// a few thousand Services is that many events).
const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);

/// Why there is no client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("the in-cluster config (KUBERNETES_SERVICE_HOST is set)")]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("cannot build the Kubernetes client")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// The client: from `kubeconfig` when given, else the in-cluster config when
/// `KUBERNETES_SERVICE_HOST` is set (a pod's service account), else `None`: no cluster.
///
/// # Errors
/// [`KubeError`] when the kubeconfig cannot be read or the in-cluster config is incomplete.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Option<Client>, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(err)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(|source| KubeError::InCluster { source })?
        }
        None => return Ok(None),
    };
    Client::try_from(config)
        .map(Some)
        .map_err(|source| KubeError::Client { source })
}

/// The reflectors' stores.
struct Stores {
    pods: Store<K8sPod>,
    policies: Store<DynamicObject>,
    service_accounts: Store<K8sSa>,
    services: Store<K8sService>,
    nodes: Store<K8sNode>,
    daemonsets: Store<DaemonSet>,
    coredns: Store<K8sPod>,
}

/// What a watch stream yields: which resource, and whether it failed.
type Item = (&'static str, Result<(), String>);

fn reflect<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
) -> (Store<K>, BoxStream<'static, Item>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .map(move |r| (what, r.map(|_| ()).map_err(|e| e.to_string())))
        .boxed();
    (store, stream)
}

/// The SecurityGroupPolicy resource (vpcresources.k8s.aws/v1beta1): read as a dynamic
/// object so that one malformed policy is a finding, not a failed list.
pub fn security_group_policy() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy"),
        "securitygrouppolicies",
    )
}

/// Watches the node's context until the task is dropped, sending a new [`Cluster`] on `tx`
/// whenever it changed (at most every 200 ms).
pub async fn watch(client: Client, node_name: String, tx: channel::Sender<Option<Arc<Cluster>>>) {
    let all = watcher::Config::default();
    let sgp = security_group_policy();
    let (pods, s1) = reflect(
        "pods",
        Api::<K8sPod>::all(client.clone()),
        all.clone().fields(&format!("spec.nodeName={node_name}")),
        (),
    );
    let (policies, s2) = reflect(
        "securitygrouppolicies",
        Api::<DynamicObject>::all_with(client.clone(), &sgp),
        all.clone(),
        sgp.clone(),
    );
    let (service_accounts, s3) = reflect(
        "serviceaccounts",
        Api::<K8sSa>::all(client.clone()),
        all.clone(),
        (),
    );
    let (services, s4) = reflect(
        "services",
        Api::<K8sService>::all(client.clone()),
        all.clone(),
        (),
    );
    let (nodes, s5) = reflect(
        "nodes",
        Api::<K8sNode>::all(client.clone()),
        all.clone().fields(&format!("metadata.name={node_name}")),
        (),
    );
    let (daemonsets, s6) = reflect(
        "daemonsets",
        Api::<DaemonSet>::namespaced(client.clone(), KUBE_SYSTEM),
        all.clone().fields(&format!("metadata.name={AWS_NODE}")),
        (),
    );
    let (coredns, s7) = reflect(
        "coredns pods",
        Api::<K8sPod>::all(client),
        all.labels(&format!("{COREDNS_LABEL}={COREDNS_APP}")),
        (),
    );
    let stores = Stores {
        pods,
        policies,
        service_accounts,
        services,
        nodes,
        daemonsets,
        coredns,
    };
    let mut events = futures::stream::select_all([s1, s2, s3, s4, s5, s6, s7]);
    let mut failing: BTreeSet<&'static str> = BTreeSet::new();
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    let mut dirty = false;
    loop {
        tokio::select! {
            item = events.next() => {
                let Some((what, result)) = item else { return };
                match result {
                    Ok(()) => {
                        if failing.remove(what) {
                            info!(event = "kube-watch-resumed", resource = what, "watching {what} again");
                        }
                        dirty = true;
                    }
                    Err(e) => {
                        if failing.insert(what) {
                            warn!(event = "kube-watch-failed", resource = what, error = %e,
                                "watching {what} failed; retrying with backoff");
                        }
                    }
                }
            }
            _ = tick.tick(), if dirty => {
                dirty = false;
                let next = Arc::new(snapshot(&stores, &node_name));
                tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&*next) {
                        return false;
                    }
                    *cur = Some(next);
                    true
                });
            }
        }
    }
}

/// The stores' contents as a [`Cluster`], sorted for stable reports.
fn snapshot(s: &Stores, node_name: &str) -> Cluster {
    let mut pods: Vec<Pod> = s.pods.state().iter().map(|p| pod(p)).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut policies: Vec<SecurityGroupPolicy> =
        s.policies.state().iter().map(|p| policy(p)).collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut service_accounts: Vec<ServiceAccount> = s
        .service_accounts
        .state()
        .iter()
        .map(|sa| ServiceAccount {
            namespace: sa.metadata.namespace.clone().unwrap_or_default(),
            name: sa.metadata.name.clone().unwrap_or_default(),
            labels: sa.metadata.labels.clone().unwrap_or_default(),
        })
        .collect();
    service_accounts.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut services: Vec<Service> = s
        .services
        .state()
        .iter()
        .filter_map(|x| service(x))
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let node = s
        .nodes
        .state()
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
        .map(|n| KubeNode {
            name: node_name.to_owned(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
        });
    let aws_node = s
        .daemonsets
        .state()
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(AWS_NODE))
        .map(|d| aws_node(d));
    let mut coredns: Vec<std::net::IpAddr> = s
        .coredns
        .state()
        .iter()
        .filter(|p| is_coredns(p))
        .flat_map(|p| pod(p).ips)
        .collect();
    coredns.sort();
    coredns.dedup();
    Cluster {
        coredns,
        node,
        aws_node,
        pods,
        policies,
        service_accounts,
        services,
    }
}

/// The label CoreDNS's pods carry (the kube-dns name stayed when EKS moved to CoreDNS).
const COREDNS_LABEL: &str = "k8s-app";
const COREDNS_APP: &str = "kube-dns";

fn is_coredns(p: &K8sPod) -> bool {
    p.metadata.namespace.as_deref() == Some(KUBE_SYSTEM)
        && p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(COREDNS_LABEL))
            .is_some_and(|v| v == COREDNS_APP)
}

/// The TCP ports a container's probes connect to; a named port resolves against the
/// container's own ports (kubelet's rule), an unresolvable name is skipped.
fn probes(c: &Container) -> Vec<ProbePort> {
    let resolve = |port: &IntOrString| match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    };
    let mut out = Vec::new();
    for (kind, probe) in [
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
        ("startup", &c.startup_probe),
    ] {
        let Some(probe) = probe else { continue };
        let target = if let Some(t) = &probe.tcp_socket {
            Some(("tcpSocket", resolve(&t.port)))
        } else if let Some(h) = &probe.http_get {
            Some(("httpGet", resolve(&h.port)))
        } else {
            probe
                .grpc
                .as_ref()
                .map(|g| ("grpc", u16::try_from(g.port).ok()))
        };
        if let Some((handler, Some(port))) = target {
            out.push(ProbePort {
                container: c.name.clone(),
                probe: kind,
                handler,
                port,
            });
        }
    }
    out
}

fn pod(p: &K8sPod) -> Pod {
    let spec = p.spec.as_ref();
    let ips = p
        .status
        .as_ref()
        .map(|s| {
            let mut v: Vec<std::net::IpAddr> = s
                .pod_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.ip.parse().ok())
                .collect();
            if v.is_empty()
                && let Some(ip) = s.pod_ip.as_ref().and_then(|ip| ip.parse().ok())
            {
                v.push(ip);
            }
            v
        })
        .unwrap_or_default();
    Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        pod_eni: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ENI_ANNOTATION).cloned()),
        containers: spec
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
        probes: spec
            .map(|s| s.containers.iter().flat_map(probes).collect())
            .unwrap_or_default(),
        container_ports: spec
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|p| {
                        Some(ContainerPort {
                            name: p.name.clone(),
                            port: u16::try_from(p.container_port).ok()?,
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn policy(o: &DynamicObject) -> SecurityGroupPolicy {
    let spec = o
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    SecurityGroupPolicy {
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
        spec: PolicySpec::parse(&spec),
    }
}

fn service(s: &K8sService) -> Option<Service> {
    let spec = s.spec.as_ref()?;
    let type_ = spec.type_.clone().unwrap_or_default();
    if type_ != "NodePort" && type_ != "LoadBalancer" {
        return None;
    }
    Some(Service {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
        type_,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        selector: spec.selector.clone().unwrap_or_default(),
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| ServicePort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                target: match &p.target_port {
                    Some(IntOrString::Int(n)) => {
                        TargetPort::Number(u16::try_from(*n).unwrap_or_default())
                    }
                    Some(IntOrString::String(name)) => TargetPort::Name(name.clone()),
                    None => TargetPort::Number(u16::try_from(p.port).unwrap_or_default()),
                },
            })
            .collect(),
    })
}

fn aws_node(d: &DaemonSet) -> AwsNode {
    let pod_spec = d.spec.template.spec.as_ref();
    let env_of = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    };
    let main = pod_spec.and_then(|s| s.containers.iter().find(|c| c.name == AWS_NODE));
    let init = pod_spec.and_then(|s| {
        s.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == AWS_NODE_INIT)
    });
    let env = main.map(env_of).unwrap_or_default();
    let init_env = init.map(env_of).unwrap_or_default();
    AwsNode {
        enable_pod_eni: env.get("ENABLE_POD_ENI").cloned(),
        enforcing_mode: env.get("POD_SECURITY_GROUP_ENFORCING_MODE").cloned(),
        disable_tcp_early_demux: init_env.get("DISABLE_TCP_EARLY_DEMUX").cloned(),
        image: main.and_then(|c| c.image.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_from_the_apis_json() {
        let p: K8sPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "sg-test", "labels": {"app": "web"},
                "annotations": {"vpc.amazonaws.com/pod-eni": "[{\"eniId\":\"eni-1\",\"ifAddress\":\"06:00:00:00:00:01\",\"vlanId\":3}]"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "runner", "containers": [{"name": "web"}]},
            "status": {"podIP": "192.168.3.4", "podIPs": [{"ip": "192.168.3.4"}, {"ip": "2600::4"}]}
        }))
        .unwrap();
        let m = pod(&p);
        assert_eq!(m.key(), "sg-test/web-1");
        assert_eq!(m.service_account, "runner");
        assert_eq!(m.ips.len(), 2);
        assert_eq!(m.branch_enis().unwrap()[0].vlan_id, 3);
        assert_eq!(m.containers, ["web"]);
    }

    #[test]
    fn probe_ports_and_service_target_ports() {
        let p: K8sPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "sg-test"},
            "spec": {"containers": [{
                "name": "web",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/"}},
                "livenessProbe": {"tcpSocket": {"port": 9000}},
                "startupProbe": {"grpc": {"port": 9001}}
            }, {
                "name": "side",
                "livenessProbe": {"httpGet": {"port": "nope"}},
                "readinessProbe": {"exec": {"command": ["true"]}}
            }]}
        }))
        .unwrap();
        let m = pod(&p);
        let got: Vec<(&str, &str, &str, u16)> = m
            .probes
            .iter()
            .map(|p| (p.container.as_str(), p.probe, p.handler, p.port))
            .collect();
        // The unresolvable named port and the exec probe give no port.
        assert_eq!(
            got,
            [
                ("web", "liveness", "tcpSocket", 9000),
                ("web", "readiness", "httpGet", 8080),
                ("web", "startup", "grpc", 9001),
            ]
        );
        let s: K8sService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "sg-test"},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [
                {"port": 80, "targetPort": "http"}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}, {"port": 443}
            ]}
        }))
        .unwrap();
        let svc = service(&s).unwrap();
        let ports: Vec<Option<u16>> = svc.ports.iter().map(|sp| sp.resolve(&m)).collect();
        assert_eq!(ports, [Some(8080), Some(53), Some(443)]);
        let k: K8sPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
        }))
        .unwrap();
        assert!(is_coredns(&k) && !is_coredns(&p));
    }

    #[test]
    fn aws_node_daemonset_settings() {
        let d: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "aws-node", "namespace": "kube-system"},
            "spec": {"selector": {}, "template": {"spec": {
                "initContainers": [{"name": "aws-vpc-cni-init", "env": [{"name": "DISABLE_TCP_EARLY_DEMUX", "value": "true"}]}],
                "containers": [{"name": "aws-node", "image": "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.10.4-eksbuild.1",
                    "env": [{"name": "ENABLE_POD_ENI", "value": "true"},
                            {"name": "MY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]
            }}}
        }))
        .unwrap();
        let a = aws_node(&d);
        assert!(a.pod_eni_enabled());
        assert_eq!(a.enforcing_mode, None);
        assert_eq!(a.disable_tcp_early_demux.as_deref(), Some("true"));
        assert_eq!(a.version(), Some(crate::model::k8s::CniVersion(1, 10, 4)));
    }

    #[test]
    fn only_node_port_and_load_balancer_services() {
        let s = |t: &str| -> K8sService {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s", "namespace": "n"},
                "spec": {"type": t, "externalTrafficPolicy": "Local", "selector": {"app": "x"}}
            }))
            .unwrap()
        };
        assert!(service(&s("ClusterIP")).is_none());
        let lb = service(&s("LoadBalancer")).unwrap();
        assert!(lb.external_local && lb.selector.len() == 1);
    }

    #[test]
    fn malformed_policies_are_kept_with_their_error() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "vpcresources.k8s.aws/v1beta1", "kind": "SecurityGroupPolicy",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "securityGroups": {"groupIds": 7}}
        }))
        .unwrap();
        assert!(policy(&o).spec.is_err());
    }
}
