//! `sgpath agent` with a Kubernetes context: against a real kube-apiserver
//! ([`agent_watches_a_real_api_server`], [`crate::apiserver::RealApi`]), and against a fake
//! API server for the two faults a real one cannot be made to produce on demand (every
//! request answered 500; requests accepted and never answered).
//!
//! [`FakeApi`] is a small hyper server that answers the list and watch requests kube-rs's
//! watcher makes for exactly the resources the agent reads (pods with a `spec.nodeName` field selector, nodes and the
//! aws-node DaemonSet by `metadata.name`, ServiceAccounts, Services, SecurityGroupPolicies),
//! with JSON in the API server's shapes: `<Kind>List` with `metadata.resourceVersion` and
//! items without `kind`; `?watch=true` as a chunked stream of `{"type": "ADDED" | "MODIFIED" |
//! "DELETED" | "BOOKMARK" | "ERROR", "object": ...}` lines, bookmarks when asked
//! (`allowWatchBookmarks`), and for a `resourceVersion` older than the last compaction the
//! `ERROR` event with a `410` `Expired` Status, which makes the client relist. It can be
//! stopped (connections reset, the port refused) and started again on the same port, told
//! to answer every request with an error status, or to hang (accept requests, answer none).
//!
//! For `--auth kubernetes` and `kubectl sgpath` it also answers, as the API documents them:
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: `status.authenticated` and
//!   `status.user` (username, uid, groups) for a token it issued or was given
//!   ([`FakeApi::add_user`]), `status: {user: {}, error}` otherwise; 201 Created.
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: `status.allowed` (and a
//!   `reason` naming the grant, as RBAC does) for `nonResourceAttributes` or
//!   `resourceAttributes` a grant ([`FakeApi::grant`]) of the user or one of its groups
//!   covers; `allowed: false` otherwise.
//! - `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token` (TokenRequest): a new
//!   token for `system:serviceaccount:<ns>:<name>`.
//! - `GET /api/v1/namespaces/<ns>/pods/<name>:<port>/proxy/<path>`: forwarded to the address
//!   [`FakeApi::proxy_to`] gave that pod and port, in its network namespace, with every
//!   header but `Authorization` (which the API server drops once it has authenticated the
//!   caller); the answer comes back as the pod gave it, and `503 ServiceUnavailable` when
//!   the pod does not accept the connection.
//!
//! Those four authenticate the caller (`Authorization: Bearer`, 401 `Unauthorized` Status
//! for an unknown token) and authorize it against the grants (403 `Forbidden`): reviews need
//! `create tokenreviews` / `create subjectaccessreviews`, the proxy `get pods/proxy`, a token
//! `create serviceaccounts/token`. Lists and watches stay open, as before.
//!
//! Side effects: binds 127.0.0.1:<port> in the lab's node namespace; runs one thread with
//! a tokio runtime until dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, body::Frame, server::conn::http1, service::service_fn};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use xtask::lab::Lab;

use crate::{
    agent::{Agent, sample},
    apiserver::RealApi,
    observe::in_netns,
};

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Node,
    Service,
    ServiceAccount,
    DaemonSet,
    SecurityGroupPolicy,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::DaemonSet => "apps/v1",
            Kind::SecurityGroupPolicy => "vpcresources.k8s.aws/v1beta1",
            _ => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::DaemonSet => "DaemonSet",
            Kind::SecurityGroupPolicy => "SecurityGroupPolicy",
        }
    }

    /// The kind a request path names: `/api/v1/pods`,
    /// `/apis/apps/v1/namespaces/kube-system/daemonsets`, `/apis/vpcresources.k8s.aws/v1beta1/securitygrouppolicies`.
    fn of_path(path: &str) -> Option<Kind> {
        Some(match path {
            "/api/v1/pods" => Kind::Pod,
            "/api/v1/nodes" => Kind::Node,
            "/api/v1/services" => Kind::Service,
            "/api/v1/serviceaccounts" => Kind::ServiceAccount,
            "/apis/apps/v1/namespaces/kube-system/daemonsets" => Kind::DaemonSet,
            "/apis/vpcresources.k8s.aws/v1beta1/securitygrouppolicies" => Kind::SecurityGroupPolicy,
            _ => return None,
        })
    }
}

/// An open watch: its kind, its field selector, where its lines go.
struct Watcher {
    kind: Kind,
    selector: Option<(String, String)>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    /// (kind, namespace/name) -> object (with metadata.resourceVersion).
    objects: BTreeMap<(Kind, String), Value>,
    /// The cluster's resource version: bumped by every change.
    rv: u64,
    /// Watches from a resource version below this answer 410 Gone.
    compacted: u64,
    /// Changes since `compacted`: (rv, kind, event line).
    history: Vec<(u64, Kind, Value)>,
    watchers: Vec<Watcher>,
    /// Requests served, by kind and verb, for the test's own checks.
    requests: BTreeMap<String, u64>,
    /// Answer every request with this status (an overloaded or misconfigured server).
    fail: Option<u16>,
    /// Accept requests but answer none until this clears (a hung server).
    hang: bool,
    /// Requests that waited on `hang`.
    hung: u64,
    /// Bearer token -> (username, groups).
    users: BTreeMap<String, (String, Vec<String>)>,
    /// (user or group, what): `get /metrics`, `create tokenreviews`, `get pods/proxy`...
    grants: std::collections::BTreeSet<(String, String)>,
    /// (namespace/pod, port) -> (network namespace, port on its 127.0.0.1).
    proxies: BTreeMap<(String, u16), (String, u16)>,
    /// Tokens issued by TokenRequest.
    issued: u64,
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The value of a `fieldSelector` `a.b=c` on an object.
fn field(obj: &Value, path: &str) -> Option<String> {
    let mut v = obj;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    v.as_str().map(str::to_owned)
}

fn selects(selector: &Option<(String, String)>, obj: &Value) -> bool {
    selector
        .as_ref()
        .is_none_or(|(path, want)| field(obj, path).as_deref() == Some(want.as_str()))
}

fn with_type(kind: Kind, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["kind"] = json!(kind.name());
    o["apiVersion"] = json!(kind.api_version());
    o
}

impl State {
    fn change(&mut self, kind: Kind, event: &str, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let k = (kind, key(&obj));
        match event {
            "DELETED" => {
                self.objects.remove(&k);
            }
            _ => {
                self.objects.insert(k, obj.clone());
            }
        }
        let line = json!({"type": event, "object": with_type(kind, &obj)});
        self.history.push((self.rv, kind, line.clone()));
        let bytes = Bytes::from(format!("{line}\n"));
        self.watchers.retain(|w| {
            w.kind != kind || !selects(&w.selector, &obj) || w.tx.send(bytes.clone()).is_ok()
        });
    }
}

/// The fake API server. Cloned handles share the state; it runs until [`FakeApi::stop`]
/// (or the test process ends).
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    ns: String,
    pub port: u16,
    stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

impl FakeApi {
    /// Starts the server on a free port of 127.0.0.1 in namespace `ns`.
    pub fn start(ns: &str) -> FakeApi {
        let api = FakeApi {
            state: Arc::default(),
            ns: ns.to_owned(),
            port: 0,
            stop: Arc::default(),
        };
        api.listen(0)
    }

    fn listen(mut self, port: u16) -> FakeApi {
        let listener = in_netns(&self.ns, || {
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port} in the lab: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        *self.stop.lock().unwrap() = Some(stop_tx);
        let state = self.state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, state, stop_rx));
            // Dropping the runtime resets every open connection.
        });
        self
    }

    /// The server goes away: the port refuses connections and every watch is cut.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let mut s = self.state.lock().unwrap();
        s.watchers.clear();
        drop(s);
        // The listener closes when the server's runtime is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let refused = in_netns(&self.ns, || {
                std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err()
            });
            if refused {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the fake API server still accepts after stop");
    }

    /// The server comes back on the same port, its history compacted: every watch from
    /// before gets `410 Gone` and relists.
    pub fn restart(&self) -> FakeApi {
        {
            let mut s = self.state.lock().unwrap();
            s.compacted = s.rv;
            s.history.clear();
        }
        self.clone().listen(self.port)
    }

    /// From now on every request is answered `code`, and every open watch is cut.
    pub fn fail(&self, code: Option<u16>) {
        let mut s = self.state.lock().unwrap();
        s.fail = code;
        s.watchers.clear();
    }

    /// From now on requests are accepted and left unanswered (open watches are cut), until
    /// `hang(false)`: then the waiting ones are answered with the state of that moment.
    pub fn hang(&self, on: bool) {
        let mut s = self.state.lock().unwrap();
        s.hang = on;
        s.watchers.clear();
    }

    /// How many requests were left waiting by [`FakeApi::hang`].
    pub fn hung(&self) -> u64 {
        self.state.lock().unwrap().hung
    }

    /// Adds or replaces an object (`ADDED` or `MODIFIED` to the watches).
    pub fn put(&self, kind: Kind, obj: Value) {
        let mut s = self.state.lock().unwrap();
        let exists = s.objects.contains_key(&(kind, key(&obj)));
        s.change(kind, if exists { "MODIFIED" } else { "ADDED" }, obj);
    }

    /// Deletes an object (`DELETED` to the watches).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let obj = s
            .objects
            .get(&(kind, format!("{namespace}/{name}")))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to delete"));
        s.change(kind, "DELETED", obj);
    }

    /// How many requests of `verb` (`list`, `watch`, `watch-410`) were served for `kind`.
    pub fn requests(&self, kind: Kind, verb: &str) -> u64 {
        let s = self.state.lock().unwrap();
        s.requests
            .get(&format!("{kind:?} {verb}"))
            .copied()
            .unwrap_or(0)
    }

    /// `token` authenticates as `user` in `groups` (plus `system:authenticated`).
    pub fn add_user(&self, token: &str, user: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        groups.push("system:authenticated".into());
        self.state
            .lock()
            .unwrap()
            .users
            .insert(token.to_owned(), (user.to_owned(), groups));
    }

    /// `who` (a user or a group) may `what`: `get /v1/report` (a non-resource URL; `/v1/*`
    /// covers the prefix), `get pods/proxy`, `create tokenreviews`...
    pub fn grant(&self, who: &str, what: &str) {
        self.state
            .lock()
            .unwrap()
            .grants
            .insert((who.to_owned(), what.to_owned()));
    }

    /// The pods proxy to `<namespace>/<pod>:<port>` reaches 127.0.0.1:`to` in network
    /// namespace `netns`.
    pub fn proxy_to(&self, namespace: &str, pod: &str, port: u16, netns: &str, to: u16) {
        self.state
            .lock()
            .unwrap()
            .proxies
            .insert((format!("{namespace}/{pod}"), port), (netns.to_owned(), to));
    }

    /// How many of `what` were served: `TokenReview create`, `SubjectAccessReview create`,
    /// `proxy`.
    pub fn served(&self, what: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(what)
            .copied()
            .unwrap_or(0)
    }

    /// The same server (same objects, users and grants) also listening in namespace `ns`,
    /// for agents in other node namespaces.
    pub fn also_in(&self, ns: &str) -> FakeApi {
        FakeApi {
            state: self.state.clone(),
            ns: ns.to_owned(),
            port: 0,
            stop: Arc::default(),
        }
        .listen(0)
    }

    /// A kubeconfig naming this server, written to `path`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        self.kubeconfig_as(path, "not-a-real-token");
    }

    /// A kubeconfig naming this server with the user's bearer `token`, written to `path`.
    pub fn kubeconfig_as(&self, path: &std::path::Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: {token}\n",
            self.port
        );
        std::fs::write(path, text).unwrap();
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            if state.lock().unwrap().hang {
                                state.lock().unwrap().hung += 1;
                            }
                            while state.lock().unwrap().hang {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Ok::<_, Infallible>(route(&state, req).await)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        }
    }
}

/// The API server's 404 for a path it does not serve.
fn not_found(path: &str) -> Response<Body> {
    full(
        404,
        &status(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        ),
    )
}

fn full(status: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `a%3Db` -> `a=b` (what kube-rs escapes in field selectors).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let h: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&h, 16).map(char::from).unwrap_or('?'));
            }
            b'+' => out.push(' '),
            _ => out.push(char::from(b)),
        }
    }
    out
}

/// The requests that need the caller's identity (reviews, TokenRequest, pods proxy) or a
/// body; the rest go to [`handle`].
async fn route(state: &Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let is_proxy = path.starts_with("/api/v1/namespaces/") && path.contains("/proxy");
    if req.method() != hyper::Method::POST && !is_proxy {
        return handle(state, req);
    }
    if let Some(code) = state.lock().unwrap().fail {
        return full(
            code,
            &status(code, "InternalError", "the fake was told to fail"),
        );
    }
    let caller = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.lock().unwrap().users.get(t).cloned());
    let Some((user, groups)) = caller else {
        return full(401, &status(401, "Unauthorized", "Unauthorized"));
    };
    let may = |what: &str| allowed(&state.lock().unwrap(), &user, &groups, what);
    if is_proxy {
        let Some((ns, pod, port, mut rest)) = proxy_target(&path) else {
            return not_found(&path);
        };
        if let Some(q) = req.uri().query() {
            rest = format!("{rest}?{q}");
        }
        if !may("get pods/proxy") {
            return forbidden(&user, "get", "pods/proxy", &ns);
        }
        *state
            .lock()
            .unwrap()
            .requests
            .entry("proxy".into())
            .or_default() += 1;
        let target = state
            .lock()
            .unwrap()
            .proxies
            .get(&(format!("{ns}/{pod}"), port))
            .cloned();
        let Some((netns, to)) = target else {
            return full(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    &format!(
                        "error trying to reach service: dial tcp {pod}:{port}: connect: connection refused"
                    ),
                ),
            );
        };
        let mut head =
            format!("GET {rest} HTTP/1.1\r\nHost: 127.0.0.1:{to}\r\nConnection: close\r\n");
        for (k, v) in req.headers() {
            // Dropped once the caller is authenticated; hop-by-hop headers are the proxy's.
            if ["authorization", "host", "connection", "content-length"].contains(&k.as_str()) {
                continue;
            }
            head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or_default()));
        }
        head.push_str("\r\n");
        let answer = tokio::task::spawn_blocking(move || forward(&netns, to, &head))
            .await
            .unwrap();
        return match answer {
            Ok((code, content_type, body)) => Response::builder()
                .status(code)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)).boxed_unsync())
                .unwrap(),
            Err(e) => full(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    &format!("error trying to reach service: {e}"),
                ),
            ),
        };
    }
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return full(
                400,
                &status(400, "BadRequest", &format!("reading the body: {e}")),
            );
        }
    };
    let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
        return full(400, &status(400, "BadRequest", "the body is not JSON"));
    };
    let mut s = state.lock().unwrap();
    match path.as_str() {
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            if !allowed(&s, &user, &groups, "create tokenreviews") {
                return forbidden(&user, "create", "tokenreviews", "");
            }
            *s.requests.entry("TokenReview create".into()).or_default() += 1;
            let token = obj["spec"]["token"].as_str().unwrap_or_default();
            // The audiences both asked for and in the token (a static token is the API
            // server's own): an audience-aware authenticator's answer.
            let token_aud = fake_jwt_audiences(token);
            let asked: Vec<String> = obj["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_else(|| vec![API_AUDIENCE.to_owned()]);
            let audiences: Vec<&String> = asked.iter().filter(|a| token_aud.contains(a)).collect();
            obj["status"] = match s.users.get(token) {
                Some((name, groups)) if !audiences.is_empty() => json!({"authenticated": true,
                    "user": {"username": name, "uid": format!("uid-{name}"), "groups": groups},
                    "audiences": audiences}),
                Some(_) => {
                    json!({"user": {}, "error": "[invalid bearer token, token audiences is invalid]"})
                }
                None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
            };
            obj["kind"] = json!("TokenReview");
            obj["apiVersion"] = json!("authentication.k8s.io/v1");
            obj["metadata"] = json!({"creationTimestamp": null});
            full(201, &obj)
        }
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
            if !allowed(&s, &user, &groups, "create subjectaccessreviews") {
                return forbidden(&user, "create", "subjectaccessreviews", "");
            }
            *s.requests
                .entry("SubjectAccessReview create".into())
                .or_default() += 1;
            let spec = &obj["spec"];
            let who = spec["user"].as_str().unwrap_or_default().to_owned();
            let their: Vec<String> = spec["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let what = if let Some(nr) = spec.get("nonResourceAttributes") {
                format!(
                    "{} {}",
                    nr["verb"].as_str().unwrap_or_default(),
                    nr["path"].as_str().unwrap_or_default()
                )
            } else {
                let ra = &spec["resourceAttributes"];
                let sub = ra["subresource"].as_str().filter(|s| !s.is_empty());
                format!(
                    "{} {}{}",
                    ra["verb"].as_str().unwrap_or_default(),
                    ra["resource"].as_str().unwrap_or_default(),
                    sub.map(|s| format!("/{s}")).unwrap_or_default()
                )
            };
            obj["status"] = if allowed(&s, &who, &their, &what) {
                json!({"allowed": true, "reason": format!("RBAC: allowed by ClusterRoleBinding \"fake\" of ClusterRole \"fake\" to User \"{who}\"")})
            } else {
                json!({"allowed": false})
            };
            obj["kind"] = json!("SubjectAccessReview");
            obj["apiVersion"] = json!("authorization.k8s.io/v1");
            obj["metadata"] = json!({"creationTimestamp": null});
            full(201, &obj)
        }
        p if p.starts_with("/api/v1/namespaces/") && p.ends_with("/token") => {
            let parts: Vec<&str> = p.split('/').collect();
            // ["", "api", "v1", "namespaces", ns, "serviceaccounts", name, "token"]
            if parts.len() != 8 || parts[5] != "serviceaccounts" {
                return full(
                    404,
                    &status(404, "NotFound", &format!("the server could not find {p}")),
                );
            }
            if !allowed(&s, &user, &groups, "create serviceaccounts/token") {
                return forbidden(&user, "create", "serviceaccounts/token", parts[4]);
            }
            s.issued += 1;
            let sa = format!("system:serviceaccount:{}:{}", parts[4], parts[6]);
            let audiences = obj["spec"]["audiences"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned()
                .unwrap_or_else(|| vec![json!(API_AUDIENCE)]);
            let life = obj["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
            let token = fake_jwt(&sa, &audiences, life, s.issued);
            let groups = vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", parts[4]),
                "system:authenticated".to_owned(),
            ];
            s.users.insert(token.clone(), (sa, groups));
            obj["kind"] = json!("TokenRequest");
            obj["apiVersion"] = json!("authentication.k8s.io/v1");
            obj["metadata"] = json!({"name": parts[6], "namespace": parts[4]});
            obj["status"] = json!({"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"});
            full(201, &obj)
        }
        _ => full(
            405,
            &status(
                405,
                "MethodNotAllowed",
                "the fake creates only reviews and tokens",
            ),
        ),
    }
}

/// Whether a grant of `user` or one of `groups` covers `what` (`get /v1/*` covers
/// `get /v1/report`).
fn allowed(s: &State, user: &str, groups: &[String], what: &str) -> bool {
    std::iter::once(user)
        .chain(groups.iter().map(String::as_str))
        .any(|who| {
            s.grants.iter().any(|(w, g)| {
                w == who
                    && (g == what
                        || g.strip_suffix('*')
                            .is_some_and(|prefix| what.starts_with(prefix)))
            })
        })
}

fn forbidden(user: &str, verb: &str, resource: &str, ns: &str) -> Response<Body> {
    let scope = if ns.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{ns}\"")
    };
    full(
        403,
        &status(
            403,
            "Forbidden",
            &format!(
                "{resource} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" {scope}"
            ),
        ),
    )
}

/// The audience of the fake's own API (a static or kubeconfig token).
const API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// A token shaped as the API server's (a JWT; the signature is not one): `sub`, `aud`,
/// `iat` now and `exp` `life` seconds later.
pub fn fake_jwt(sub: &str, audiences: &[Value], life: u64, serial: u64) -> String {
    use base64::Engine as _;
    let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.ZmFrZS1zaWduYXR1cmU",
        e(&json!({"alg": "RS256", "kid": "fake"})),
        e(
            &json!({"sub": sub, "aud": audiences, "iat": now, "exp": now + life,
                  "jti": format!("fake-{serial}")})
        )
    )
}

/// The `aud` of a token made by [`fake_jwt`]; the API's own audience for any other.
fn fake_jwt_audiences(token: &str) -> Vec<String> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    match payload {
        Some(p) => p["aud"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![API_AUDIENCE.to_owned()],
    }
}

/// `/api/v1/namespaces/<ns>/pods/<name>:<port>/proxy/<rest>` -> (ns, name, port, /rest?query).
fn proxy_target(path: &str) -> Option<(String, String, u16, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let (pod, rest) = rest.split_once("/proxy")?;
    // `https:<name>:<port>`: the fake speaks plain HTTP to the agent whatever the scheme.
    let pod = pod.strip_prefix("https:").unwrap_or(pod);
    let (name, port) = pod.split_once(':')?;
    let port = port.parse().ok()?;
    let rest = if rest.is_empty() { "/" } else { rest };
    Some((ns.to_owned(), name.to_owned(), port, rest.to_owned()))
}

/// One HTTP/1.1 exchange with 127.0.0.1:`port` in `netns`: (status, content type, body).
fn forward(netns: &str, port: u16, head: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = in_netns(netns, || {
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
    })?;
    // A pod that never answers is the caller's timeout to see; this only bounds the thread.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        })
        .map_or_else(|| "text/plain".to_owned(), |(_, v)| v.trim().to_owned());
    Ok((code, content_type, raw[split + 4..].to_vec()))
}

fn handle(state: &Mutex<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), unescape(v)))
        .collect();
    if req.method() != hyper::Method::GET {
        return full(405, &status(405, "MethodNotAllowed", "the fake only reads"));
    }
    if let Some(code) = state.lock().unwrap().fail {
        return full(
            code,
            &status(code, "InternalError", "the fake was told to fail"),
        );
    }
    // Namespaced pods, as `kubectl sgpath` asks: `/api/v1/namespaces/<ns>/pods` (a list,
    // with an equality `labelSelector`) and `/api/v1/namespaces/<ns>/pods/<name>`.
    if let Some((ns, tail)) = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|r| r.split_once("/pods"))
    {
        let s = state.lock().unwrap();
        if let Some(name) = tail.strip_prefix('/') {
            return match s.objects.get(&(Kind::Pod, format!("{ns}/{name}"))) {
                Some(o) => full(200, &with_type(Kind::Pod, o)),
                None => full(
                    404,
                    &status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            };
        }
        if tail.is_empty() {
            let wanted: Vec<(&str, &str)> = query
                .get("labelSelector")
                .map(|l| l.split(',').filter_map(|kv| kv.split_once('=')).collect())
                .unwrap_or_default();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((k, key), o)| {
                    *k == Kind::Pod
                        && key.starts_with(&format!("{ns}/"))
                        && wanted
                            .iter()
                            .all(|(l, v)| o["metadata"]["labels"][*l].as_str() == Some(*v))
                })
                .map(|(_, o)| o.clone())
                .collect();
            return full(
                200,
                &json!({"kind": "PodList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            );
        }
    }
    let Some(kind) = Kind::of_path(&path) else {
        return not_found(&path);
    };
    let selector = query
        .get("fieldSelector")
        .and_then(|f| f.split_once('='))
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    let mut s = state.lock().unwrap();
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(s.rv);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        if from < s.compacted {
            *s.requests.entry(format!("{kind:?} watch-410")).or_default() += 1;
            let e = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {from} ({})", s.compacted))});
            let _ = tx.send(Bytes::from(format!("{e}\n")));
            drop(tx);
        } else {
            *s.requests.entry(format!("{kind:?} watch")).or_default() += 1;
            for (rv, k, line) in &s.history {
                if *k == kind && *rv > from && selects(&selector, &line["object"]) {
                    let _ = tx.send(Bytes::from(format!("{line}\n")));
                }
            }
            if query.get("allowWatchBookmarks").map(String::as_str) == Some("true") {
                let b = json!({"type": "BOOKMARK", "object": {"kind": kind.name(),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": s.rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}});
                let _ = tx.send(Bytes::from(format!("{b}\n")));
            }
            s.watchers.push(Watcher { kind, selector, tx });
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .unwrap();
    }
    *s.requests.entry(format!("{kind:?} list")).or_default() += 1;
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|((k, _), o)| *k == kind && selects(&selector, o))
        .map(|(_, o)| o.clone())
        .collect();
    full(
        200,
        &json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
    )
}

/// The node's name in the fake cluster.
pub const NODE: &str = "ip-192-168-1-10.ec2.internal";

pub(crate) fn pod(
    ns: &str,
    name: &str,
    node: &str,
    ip: &str,
    labels: Value,
    annotations: Value,
) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "labels": labels, "annotations": annotations},
        "spec": {"nodeName": node, "serviceAccountName": "default",
                 "containers": [{"name": "app", "image": "public.ecr.aws/nginx/nginx:1.27"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The host lab's pods as the API server would have them, a pod of another node, the node,
/// aws-node, the default ServiceAccounts and three policies (one malformed).
pub(crate) fn objects(lab: &Lab) -> Vec<(Kind, Value)> {
    let mut out = Vec::new();
    let ip = |name: &str| {
        lab.spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .ip
            .to_string()
    };
    out.push((
        Kind::Pod,
        pod(
            "default",
            "ordinary-a",
            NODE,
            &ip("ordinary-a"),
            json!({"app": "a"}),
            json!({}),
        ),
    ));
    out.push((
        Kind::Pod,
        pod(
            "default",
            "ordinary-b",
            NODE,
            &ip("ordinary-b"),
            json!({"app": "b"}),
            json!({"vpc.amazonaws.com/pod-eni": "[{\"eniId\":\"eni-0bbb\",\"ifAddress\":"}),
        ),
    ));
    out.push((
        Kind::Pod,
        pod("sg-test", "standard-c", NODE, &ip("standard-c"), json!({"app": "c"}),
            json!({"vpc.amazonaws.com/pod-eni": "[{\"eniId\":\"eni-0c5\",\"ifAddress\":\"02:00:00:00:00:c5\",\"privateIp\":\"192.168.41.23\",\"vlanId\":5,\"subnetCidr\":\"192.168.0.0/16\"}]"})),
    ));
    out.push((
        Kind::Pod,
        pod(
            "default",
            "secondary-d",
            NODE,
            &ip("secondary-d"),
            json!({"role": "db"}),
            json!({}),
        ),
    ));
    // Same IP as ordinary-a, on another node: the field selector keeps it out.
    out.push((
        Kind::Pod,
        pod(
            "default",
            "elsewhere",
            "ip-10-0-0-1.ec2.internal",
            &ip("ordinary-a"),
            json!({}),
            json!({}),
        ),
    ));
    out.push((
        Kind::Node,
        json!({"metadata": {"name": NODE, "labels": {
        "node.kubernetes.io/instance-type": "m5.large", "kubernetes.io/os": "linux",
        "vpc.amazonaws.com/has-trunk-attached": "false"}}}),
    ));
    out.push((Kind::DaemonSet, json!({"metadata": {"name": "aws-node", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"k8s-app": "aws-node"}}, "template": {"metadata": {"labels": {"k8s-app": "aws-node"}}, "spec": {
            "containers": [{"name": "aws-node", "image": "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.2-eksbuild.1",
                "env": [{"name": "ENABLE_POD_ENI", "value": "true"},
                        {"name": "POD_SECURITY_GROUP_ENFORCING_MODE", "value": "standard"}]}]}}}})));
    for ns in ["default", "sg-test"] {
        out.push((
            Kind::ServiceAccount,
            json!({"metadata": {"name": "default", "namespace": ns}}),
        ));
    }
    out.push((
        Kind::Service,
        json!({"metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.100.0.1", "ports": [{"port": 443}]}}),
    ));
    out.push((
        Kind::SecurityGroupPolicy,
        policy(
            "sg-test",
            "c",
            json!({
        "podSelector": {"matchLabels": {"app": "c"}}, "securityGroups": {"groupIds": ["sg-0c5"]}}),
        ),
    ));
    out.push((
        Kind::SecurityGroupPolicy,
        policy(
            "default",
            "db",
            json!({
        "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["db"]}]},
        "securityGroups": {"groupIds": ["sg-0db"]}}),
        ),
    ));
    out.push((Kind::SecurityGroupPolicy, policy("default", "broken", json!({
        "podSelector": {"matchExpressions": [{"key": "role", "operator": "Equals", "values": ["x"]}]},
        "securityGroups": {"groupIds": ["sg-0bad"]}}))));
    out
}

/// [`objects`] put into the fake.
pub(crate) fn populate(api: &FakeApi, lab: &Lab) {
    for (kind, obj) in objects(lab) {
        api.put(kind, obj);
    }
}

/// The report's path of `ip`.
fn path_of(doc: &Value, ip: &str) -> Value {
    doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == ip)
        .cloned()
        .unwrap_or_else(|| panic!("no path of {ip} in {doc}"))
}

pub(crate) fn findings(doc: &Value) -> Vec<(String, String)> {
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Polls the agent's report until `ok` holds (or panics after `timeout` with the last one).
pub(crate) fn wait_report(
    agent: &Agent,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let doc = agent.report(&[]);
        if ok(&doc) {
            return doc;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}:\n{}\n{}",
            serde_json::to_string_pretty(&doc["paths"]).unwrap(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many times the agent logged `event`.
pub(crate) fn count_events(agent: &Agent, event: &str) -> usize {
    agent
        .log_events()
        .iter()
        .filter(|e| e["event"] == event)
        .count()
}

fn labelled(doc: &Value, ip: &str, ns: &str, name: &str) -> bool {
    let p = path_of(doc, ip);
    p["pod"]["namespace"] == ns && p["pod"]["name"] == name
}

/// The two API server faults a real kube-apiserver cannot be made to produce on demand,
/// on the fake: answering `500` to every request (an overloaded or broken server; a real one
/// answers 500 only for its own bugs, 429 under priority-and-fairness, which it decides) and
/// accepting connections but answering nothing (a hung server, or a load balancer in front
/// of a dead one; a stopped real process refuses or resets instead). Each failure is told
/// once, the agent stays ready and prompt with its last known context, and when the server
/// answers again the agent relists (a pod deleted meanwhile loses its labels). Everything
/// else about the agent's watches runs against the real API server
/// ([`agent_watches_a_real_api_server`]).
pub fn agent_survives_a_failing_and_a_hanging_api_server(lab: &Lab) {
    let node = lab.layout.node();
    let api = FakeApi::start(&node);
    populate(&api, lab);
    let dir = std::env::temp_dir().join(format!("sgpath-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let cni = lab.cni_config();
    let agent = Agent::start(
        &node,
        &[
            "--cni-config",
            cni.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            NODE,
            "--summary-interval",
            "1s",
        ],
    );
    let ip = |name: &str| {
        lab.spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .ip
            .to_string()
    };
    let (a, b, c, d) = (
        ip("ordinary-a"),
        ip("ordinary-b"),
        ip("standard-c"),
        ip("secondary-d"),
    );

    let doc = wait_report(
        &agent,
        Duration::from_secs(20),
        "paths named after their pods",
        |doc| {
            labelled(doc, &a, "default", "ordinary-a")
                && labelled(doc, &d, "default", "secondary-d")
        },
    );
    assert!(labelled(&doc, &b, "default", "ordinary-b"));
    assert_eq!(path_of(&doc, &c)["pod"]["name"], "standard-c");

    // It answers 500 to everything: each failure is told, the agent stays ready and keeps
    // what it knew.
    let failed_before = count_events(&agent, "kube-watch-failed");
    api.fail(Some(500));
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_events(&agent, "kube-watch-failed") == failed_before {
        assert!(
            Instant::now() < deadline,
            "500s not told:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(api.requests(Kind::Pod, "list") + api.requests(Kind::Pod, "watch") > 0);
    let (status, _) = agent.request("GET", "/readyz", &[]);
    assert_eq!(status, 200, "ready while the API server fails");
    assert!(labelled(&agent.report(&[]), &b, "default", "ordinary-b"));

    // It hangs: requests accepted, never answered. The agent's own server stays prompt and
    // its labels stay; ordinary-b is deleted meanwhile.
    api.hang(true);
    api.fail(None);
    api.delete(Kind::Pod, "default", "ordinary-b");
    for _ in 0..20 {
        let t = Instant::now();
        let (status, _) = agent.request("GET", "/healthz", &[]);
        assert_eq!(status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "/healthz took {:?} while the API server hangs",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while api.hung() == 0 {
        assert!(
            Instant::now() < deadline,
            "the agent sent nothing to the hung server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let doc = agent.report(&[]);
    assert!(
        labelled(&doc, &b, "default", "ordinary-b"),
        "last known labels kept"
    );
    assert_eq!(path_of(&doc, &c)["pod"]["name"], "standard-c");

    // It answers again: the waiting requests relist, ordinary-b's labels go, no stale set.
    api.hang(false);
    wait_report(
        &agent,
        Duration::from_secs(60),
        "ordinary-b unlabelled after the hang",
        |doc| path_of(doc, &b)["pod"].is_null() && path_of(doc, &c)["pod"]["name"] == "standard-c",
    );
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert!(
        !metrics.contains("pod=\"ordinary-b\""),
        "stale label in /metrics:\n{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(agent.terminate().success());
    api.stop();
}

/// [`objects`] created in a real API server as full objects: namespaces and their default
/// ServiceAccounts first (no controller-manager makes them), pods with their status patched
/// as their kubelet would, the `kubernetes` Service left to the API server (it makes its own
/// at 10.100.0.1).
pub(crate) fn populate_real(api: &RealApi, lab: &Lab) {
    api.namespace("default");
    api.namespace("sg-test");
    for (kind, mut obj) in objects(lab) {
        match kind {
            Kind::Pod => api.create_pod(&obj),
            Kind::ServiceAccount => {}
            Kind::Service if obj["metadata"]["name"] == "kubernetes" => {}
            _ => {
                obj["apiVersion"] = json!(kind.api_version());
                obj["kind"] = json!(kind.name());
                api.create(&obj);
            }
        }
    }
}

/// The agent's own identity on a real API server: deploy/agent applied (its ServiceAccount,
/// ClusterRole, Role and bindings), and a kubeconfig with a TokenRequest token of
/// `sgpath/sgpath`, so every read it makes is judged by deploy/'s RBAC.
pub(crate) fn agent_kubeconfig(api: &RealApi) -> std::path::PathBuf {
    let deploy = xtask::workspace_root().join("deploy/agent");
    api.kubectl(&["apply", "--server-side", "-k", deploy.to_str().unwrap()]);
    let token = api.token("sgpath", "sgpath");
    api.kubeconfig_for("agent", &token)
}

/// The agent with `--kubeconfig` against a real kube-apiserver (with the real
/// SecurityGroupPolicy CRD, and deploy/'s RBAC for the agent's ServiceAccount) in the lab's
/// node namespace: pods name their paths in `/v1/report` and `/metrics`; the malformed
/// annotation and policy and the selected pod without branch ENI are findings; a policy
/// deleted clears its finding; a pod created later is named. Then the API server is killed,
/// a pod deleted behind its back (straight from etcd, as another API server would) and etcd
/// compacted: the agent stays ready with what it knew, and when the API server comes back
/// its watches are `410 Gone`, it relists, and the deleted pod has lost its labels. Last,
/// every watch is cut mid-stream (its connections reset with `ss -K`) and a pod deleted
/// afterwards still loses its labels.
pub fn agent_watches_a_real_api_server(lab: &Lab) {
    let node = lab.layout.node();
    let mut api = RealApi::start(Some(&node), &[]);
    populate_real(&api, lab);
    let kubeconfig = agent_kubeconfig(&api);
    let cni = lab.cni_config();
    let agent = Agent::start(
        &node,
        &[
            "--cni-config",
            cni.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            NODE,
            "--summary-interval",
            "1s",
        ],
    );
    let ip = |name: &str| {
        lab.spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .ip
            .to_string()
    };
    let (a, b, c, d) = (
        ip("ordinary-a"),
        ip("ordinary-b"),
        ip("standard-c"),
        ip("secondary-d"),
    );
    let want = [
        ("malformed-pod-eni-annotation", "default/ordinary-b"),
        ("malformed-security-group-policy", "default/broken"),
        ("sgp-pod-without-branch-eni", "default/secondary-d"),
        ("trunk-unavailable", NODE),
    ];
    // Every watch has listed once: the pods name their paths and the node, the policies
    // and the annotations give their findings.
    let doc = wait_report(
        &agent,
        Duration::from_secs(30),
        "paths named after their pods, every finding of the cluster's objects",
        |doc| {
            let got = findings(doc);
            labelled(doc, &a, "default", "ordinary-a")
                && labelled(doc, &d, "default", "secondary-d")
                && want
                    .iter()
                    .all(|w| got.iter().any(|(i, s)| (i.as_str(), s.as_str()) == *w))
        },
    );
    assert!(labelled(&doc, &b, "default", "ordinary-b"));
    let pc = path_of(&doc, &c);
    assert_eq!(pc["pod"]["name"], "standard-c");
    assert_eq!(pc["pod"]["namespace"], "sg-test");
    assert_eq!(pc["pod"]["branch_eni"], "eni-0c5");
    assert_eq!(pc["pod"]["branch_vlan"], 5);
    assert_eq!(pc["pod"]["security_groups"], json!(["sg-0c5"]));
    assert!(
        !findings(&doc)
            .iter()
            .any(|(i, _)| i == "veth-name-mismatch"),
        "{doc}"
    );
    let (status, metrics) = agent.request("GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &metrics,
            "sgpath_path_info",
            &[
                ("pod_ip", c.as_str()),
                ("pod", "standard-c"),
                ("eni", "eni-0c5"),
                ("security_groups", "sg-0c5")
            ]
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(pc["eni_id"], "eni-0c5");
    // The lab names host veths as the CNI does: matched by IP, and the names agree.
    assert_eq!(path_of(&doc, &a)["pod"]["matched_by"], "pod-ip");
    assert!(
        findings(&doc)
            .iter()
            .any(|(i, s)| i == "vlan-parent-missing" && s == "vlan.eth.5"),
        "the lab's own finding is there too"
    );
    assert!(
        sample(
            &metrics,
            "sgpath_path_packets_total",
            &[
                ("pod_ip", a.as_str()),
                ("namespace", "default"),
                ("pod", "ordinary-a"),
                ("direction", "to_pod"),
                ("verdict", "forwarded"),
            ]
        )
        .is_some(),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sgpath_finding",
            &[
                ("id", "sgp-pod-without-branch-eni"),
                ("subject", "default/secondary-d")
            ]
        ),
        Some(1)
    );
    // The agent read only through deploy/'s RBAC: nothing it asked for was refused.
    let log = agent.log_text();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the agent was refused something deploy/'s RBAC should allow:\n{log}"
    );

    // A watch event: the policy goes, its finding clears.
    api.kubectl(&["delete", "securitygrouppolicy", "db", "-n", "default"]);
    wait_report(
        &agent,
        Duration::from_secs(15),
        "sgp-pod-without-branch-eni cleared",
        |doc| {
            !findings(doc)
                .iter()
                .any(|(i, _)| i == "sgp-pod-without-branch-eni")
        },
    );

    // The API server goes away; ordinary-a is deleted behind its back and etcd compacted.
    let pods: Value = serde_json::from_str(&api.get_raw("/api/v1/pods")).unwrap();
    let old_rv = pods["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
        .expect("the pod list's resourceVersion")
        .to_owned();
    api.cp.stop_apiserver();
    api.etcd_delete("pods/default/ordinary-a");
    api.compact_etcd();
    agent.wait_event("kube-watch-failed", Duration::from_secs(30));
    assert!(
        agent
            .log_events()
            .iter()
            .any(|e| e["event"] == "kube-watch-failed"),
        "no kube-watch-failed event:\n{}",
        agent.log_text()
    );
    let (status, _) = agent.request("GET", "/readyz", &[]);
    assert_eq!(status, 200, "the agent is ready without its API server");
    assert!(
        labelled(&agent.report(&[]), &a, "default", "ordinary-a"),
        "the last known context stays while the API server is away"
    );

    // It comes back: the agent's watches resume from a compacted revision, it relists, and
    // ordinary-a is gone with its labels.
    api.cp
        .start_apiserver()
        .unwrap_or_else(|e| panic!("kube-apiserver did not restart: {e:#}"));
    // The premise: a watch from before the compaction is `410 Gone` on the real server.
    let gone = api.get_raw(&format!(
        "/api/v1/pods?watch=1&resourceVersion={old_rv}&timeoutSeconds=2"
    ));
    assert!(
        gone.contains("\"code\":410"),
        "a watch from resourceVersion {old_rv} was not 410 Gone: {gone}"
    );
    let doc = wait_report(
        &agent,
        Duration::from_secs(90),
        "ordinary-a unlabelled after the relist",
        |doc| path_of(doc, &a)["pod"].is_null(),
    );
    assert!(
        labelled(&doc, &b, "default", "ordinary-b"),
        "the others keep their labels"
    );
    assert_eq!(path_of(&doc, &c)["pod"]["name"], "standard-c");
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    assert!(
        !metrics.contains("pod=\"ordinary-a\""),
        "stale label in /metrics:\n{metrics}"
    );
    agent.wait_event("kube-watch-resumed", Duration::from_secs(30));
    assert!(
        agent
            .log_events()
            .iter()
            .any(|e| e["event"] == "kube-watch-resumed"),
        "{}",
        agent.log_text()
    );
    // Every watch that failed comes back (a restarting API server answers 403 for a moment,
    // before its RBAC caches are synced, and the agent must not give up on those).
    let resumed_all = |agent: &Agent| {
        let events = agent.log_events();
        let of = |event: &str| -> BTreeSet<String> {
            events
                .iter()
                .filter(|e| e["event"] == event)
                .filter_map(|e| e["resource"].as_str().map(str::to_owned))
                .collect()
        };
        of("kube-watch-failed")
            .difference(&of("kube-watch-resumed"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !resumed_all(&agent).is_empty() {
        assert!(
            Instant::now() < deadline,
            "watches never resumed after the restart: {:?}\n{}",
            resumed_all(&agent),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The policies' watch works again: the malformed policy deleted, its finding clears.
    api.kubectl(&["delete", "securitygrouppolicy", "broken", "-n", "default"]);
    wait_report(
        &agent,
        Duration::from_secs(15),
        "malformed-security-group-policy cleared after the restart",
        |doc| {
            !findings(doc)
                .iter()
                .any(|(i, _)| i == "malformed-security-group-policy")
        },
    );

    // A pod scheduled to this node after the restart (ordinary-a's address reused, as a
    // recreated pod's would be) is named within the watch's latency.
    let mut again = pod(
        "default",
        "ordinary-a2",
        NODE,
        &a,
        json!({"app": "a"}),
        json!({}),
    );
    again["metadata"]["labels"]["generation"] = json!("2");
    api.create_pod(&again);
    wait_report(
        &agent,
        Duration::from_secs(15),
        "the recreated pod named",
        |doc| labelled(doc, &a, "default", "ordinary-a2"),
    );

    // Every watch cut mid-stream (the agent's connections to the API server reset, as a
    // load balancer or a node's conntrack would): a change made afterwards still arrives.
    let out = api
        .cp
        .command("ss")
        .args(["-K", "-t", "-n", "state", "established"])
        .arg(format!("( dport = :{} )", api.cp.port))
        .output()
        .expect("ss");
    let cut = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{}", api.cp.port)))
        .count();
    assert!(
        cut >= 1,
        "no connection of the agent's was cut: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No kubelet confirms a graceful deletion: delete at once, as its kubelet would end it.
    api.kubectl(&[
        "delete",
        "pod",
        "secondary-d",
        "-n",
        "default",
        "--grace-period=0",
        "--force",
    ]);
    wait_report(
        &agent,
        Duration::from_secs(30),
        "secondary-d unlabelled after the watches were cut",
        |doc| path_of(doc, &d)["pod"].is_null() && labelled(doc, &a, "default", "ordinary-a2"),
    );
    assert!(agent.terminate().success());
}
