//! Reaching the agents through nothing but the API server: the kubeconfig's user lists the
//! agent pods (by the DaemonSet's label selector) and GETs each one through the pods proxy
//! subresource (`/api/v1/namespaces/<ns>/pods/https:<name>:<port>/proxy/<path>`: the agent
//! serves HTTPS, which the API server's proxy speaks without verifying the agent's
//! self-signed certificate; RBAC `get` on `pods/proxy`), so a bastion that cannot reach
//! node IPs still gets every answer.
//!
//! The API server removes the caller's `Authorization` header once it has authenticated
//! the caller, so the agent never sees the user's credentials. What the agent checks (its
//! `--auth kubernetes`) is a 10-minute token of the `sgpath-client` ServiceAccount for the
//! audience `sgpath` (the API server itself refuses it), asked for with a TokenRequest (RBAC
//! `create` on `serviceaccounts/token` for that name only) and sent in
//! `X-Sgpath-Authorization`, which the proxy passes on.
//!
//! Side effects: reads the kubeconfig; GETs and one TokenRequest on the API server.

use std::path::PathBuf;

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Node, Pod, ServiceAccount},
};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use super::fleet::{AgentPod, FetchError, Transport};

/// The header the agent reads a bearer token from when the request came through the pods
/// proxy (which drops `Authorization`).
pub const TOKEN_HEADER: &str = "x-sgpath-authorization";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}", path.as_ref().map_or("(KUBECONFIG or ~/.kube/config)".into(), |p| p.display().to_string()))]
    Config {
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build the Kubernetes client")]
    Client {
        #[source]
        source: kube::Error,
    },
    #[error("listing the agent pods (namespace {namespace}, selector {selector})")]
    ListAgents {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {namespace}/{name}")]
    Pod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The clients of `kubeconfig` (else `KUBECONFIG`, else `~/.kube/config`) in `context`
/// (else the current one): one for the API (kube's retries on 429, 503, 504) and one for
/// the pods proxy without them (a 503 there is the agent not answering: retrying it only
/// spends the node's timeout); and that context's namespace.
///
/// # Errors
/// [`KubeError`] when the kubeconfig cannot be read or names no usable cluster.
pub async fn connect(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<(Client, Client, String), KubeError> {
    let opts = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let err = |source| KubeError::Config {
        path: kubeconfig.clone(),
        source,
    };
    let config = match &kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(err)?
        }
        None => Config::from_kubeconfig(&opts).await.map_err(err)?,
    };
    let namespace = config.default_namespace.clone();
    let mut once = config.clone();
    once.default_retry = false;
    let client = Client::try_from(config).map_err(|source| KubeError::Client { source })?;
    let proxy = Client::try_from(once).map_err(|source| KubeError::Client { source })?;
    Ok((client, proxy, namespace))
}

/// The agent pods: those `selector` selects in `namespace`, with the node each runs on.
///
/// # Errors
/// [`KubeError::ListAgents`] (e.g. 403: the user lacks `list pods` there).
pub async fn agents(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<AgentPod>, KubeError> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| KubeError::ListAgents {
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            source,
        })?;
    let mut agents: Vec<AgentPod> = pods
        .items
        .into_iter()
        .filter_map(|p| {
            Some(AgentPod {
                namespace: p.metadata.namespace.unwrap_or_else(|| namespace.to_owned()),
                name: p.metadata.name?,
                node: p.spec?.node_name?,
                address: p.status.and_then(|s| s.pod_ip),
            })
        })
        .collect();
    agents.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(agents)
}

/// Every node's name, or why they cannot be listed (`nodes` then shows the agents' nodes
/// only).
pub async fn nodes(client: &Client) -> Result<Vec<String>, kube::Error> {
    let list = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect())
}

/// A pod's node and IP.
///
/// # Errors
/// [`KubeError::Pod`]: not found, forbidden.
pub async fn pod(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Option<String>, Option<String>), KubeError> {
    let p = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| KubeError::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    let node = p.spec.and_then(|s| s.node_name);
    let ip = p.status.and_then(|s| s.pod_ip);
    Ok((node, ip))
}

/// A token of ServiceAccount `namespace/name` for the agents: audience `sgpath`, 10 min
/// (the shortest the API server issues).
///
/// # Errors
/// The API server's refusal (403 without `create serviceaccounts/token`, 404 without the
/// ServiceAccount).
pub async fn client_token(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, kube::Error> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![crate::auth::AUDIENCE.to_owned()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &req)
        .await?;
    Ok(answer.status.and_then(|s| s.token).unwrap_or_default())
}

/// GETs through the API server's pods proxy.
pub struct PodsProxy {
    pub client: Client,
    /// The agent's port (the DaemonSet's `--listen`).
    pub port: u16,
    /// Sent as `X-Sgpath-Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Transport for PodsProxy {
    fn get<'a>(
        &'a self,
        agent: &'a AgentPod,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, FetchError>> {
        Box::pin(async move {
            let uri = format!(
                "/api/v1/namespaces/{}/pods/https:{}:{}/proxy{path}",
                agent.namespace, agent.name, self.port
            );
            let mut req = http::Request::get(uri);
            if let Some(t) = &self.token {
                req = req.header(TOKEN_HEADER, format!("Bearer {t}"));
            }
            let req = req
                .body(Vec::new())
                .map_err(|e| FetchError::Transport(e.to_string()))?;
            self.client.request_text(req).await.map_err(|e| match e {
                kube::Error::Api(s) => FetchError::Status {
                    code: s.code,
                    message: s.message.trim().to_owned(),
                },
                e => FetchError::Transport(format!("{e}")),
            })
        })
    }
}

/// GETs through the API server's services proxy to `sgpath hub`, which asks the agents
/// itself: `/api/v1/namespaces/<ns>/services/<scheme>:<service>:<port>/proxy/...` (RBAC
/// `get` on `services/proxy`, for that one Service). A fleet query is one request.
pub struct HubProxy {
    pub client: Client,
    pub namespace: String,
    pub service: String,
    /// `http` or `https`: how the API server talks to the hub.
    pub scheme: String,
    pub port: u16,
    /// Sent as `X-Sgpath-Authorization: Bearer <token>` (the proxy drops `Authorization`).
    pub token: Option<String>,
}

impl HubProxy {
    /// The services proxy's name segment, `https:sgpath-hub:9465`: what RBAC's
    /// `resourceNames` must list for `services/proxy`.
    pub fn proxy_name(&self) -> String {
        format!("{}:{}:{}", self.scheme, self.service, self.port)
    }

    async fn get_hub(&self, path: &str) -> Result<String, FetchError> {
        let uri = format!(
            "/api/v1/namespaces/{}/services/{}/proxy{path}",
            self.namespace,
            self.proxy_name()
        );
        let mut req = http::Request::get(uri);
        if let Some(t) = &self.token {
            req = req.header(TOKEN_HEADER, format!("Bearer {t}"));
        }
        let req = req
            .body(Vec::new())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        self.client.request_text(req).await.map_err(|e| match e {
            kube::Error::Api(s) => FetchError::Status {
                code: s.code,
                message: format!("sgpath hub: {}", s.message.trim()),
            },
            e => FetchError::Transport(format!("sgpath hub: {e}")),
        })
    }

    /// Every agent's answer to `path` (`/v1/report`), from the hub's one fan-out.
    ///
    /// # Errors
    /// The hub's (or the API server's) refusal, or an answer that is not the hub's JSON.
    pub async fn fleet(&self, path: &str) -> Result<Vec<super::fleet::Answer>, FetchError> {
        let what = path.trim_start_matches("/v1/");
        let body = self.get_hub(&format!("/v1/fleet/{what}")).await?;
        let answer: crate::hub::front::FleetAnswer = serde_json::from_str(&body)
            .map_err(|e| FetchError::Garbage(format!("sgpath hub's fleet answer: {e}")))?;
        Ok(answer
            .agents
            .into_iter()
            .map(|a| super::fleet::Answer {
                report: outcome_body(a.outcome).and_then(|b| super::doc::AgentReport::parse(&b)),
                agent: AgentPod {
                    namespace: a.namespace,
                    name: a.name,
                    node: a.node,
                    address: None,
                },
            })
            .collect())
    }
}

fn outcome_body(o: crate::hub::front::Outcome) -> Result<String, FetchError> {
    match o {
        crate::hub::front::Outcome::Body(v) => Ok(v.to_string()),
        crate::hub::front::Outcome::Error(e) => Err(e),
    }
}

/// One agent, asked by the hub: `agent.node` names it (`/v1/agents/<node>/report`).
impl Transport for HubProxy {
    fn get<'a>(
        &'a self,
        agent: &'a AgentPod,
        path: &'a str,
    ) -> BoxFuture<'a, Result<String, FetchError>> {
        Box::pin(async move {
            let what = path.trim_start_matches("/v1/");
            let body = self
                .get_hub(&format!("/v1/agents/{}/{what}", agent.node))
                .await?;
            let answer: crate::hub::front::AgentAnswer = serde_json::from_str(&body)
                .map_err(|e| FetchError::Garbage(format!("sgpath hub's answer: {e}")))?;
            outcome_body(answer.outcome)
        })
    }
}
