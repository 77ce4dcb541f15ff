//! The hub's HTTPS server (HTTP/1.1 over [`crate::tls`], hyper): `POST /v1/catalog` (a JSON body
//! `{"addresses": [...]}`, at most [`MAX_BODY`] bytes) and `GET /v1/catalog?address=...`
//! answer the [`Rules`](crate::model::sg::Rules) JSON for those addresses; `/metrics`
//! (Prometheus text: EC2 calls per action, answers cached, addresses queued, groups,
//! catalog requests), `/healthz` and `/readyz` (200 while the process serves; a hub that
//! cannot read EC2 says so in every catalog it answers).
//!
//! `/v1/catalog` only for the agents' tokens ([`super::CatalogGate`]).
//!
//! `GET /v1/fleet/report` and `GET /v1/agents/<node>/{report,trace}`: the front door for
//! people ([`super::front`]), behind the hub's gate.
//!
//! Bounds: [`MAX_CONNECTIONS`] at once (more wait in the kernel's backlog), the TLS handshake
//! and a request head within 10 s each. Answering never calls EC2: it reads the cache and queues.
//!
//! Side effects: accepts connections on the listener it is given.

use std::{
    collections::BTreeSet, convert::Infallible, fmt::Write as _, net::IpAddr, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::{Hub, cache::MAX_ASKED};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A catalog request's body, bytes (4,096 IPv6 addresses fit).
pub const MAX_BODY: usize = 256 * 1024;

/// `POST /v1/catalog`'s body.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CatalogRequest {
    pub addresses: BTreeSet<IpAddr>,
}

/// Serves until the task is aborted, each connection wrapped by `transport`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: crate::tls::Transport,
    hub: Arc<Hub>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(event = "accept-failed", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (hub, transport) = (hub.clone(), transport.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), transport.accept(stream)).await
            else {
                return;
            };
            let service = service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(handle(&hub, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(120), conn).await;
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into() + "\n")
}

async fn handle(hub: &Hub, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/v1/catalog"
        && let Err((code, why)) = hub
            .catalog_gate
            .check(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
            .await
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
        return text(status, why);
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(hub).await,
        ),
        (&Method::GET, "/v1/catalog") => {
            let mut asked = BTreeSet::new();
            for pair in req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k != "address" {
                    return text(StatusCode::BAD_REQUEST, format!("unknown parameter {k:?}"));
                }
                for a in v.split(',').filter(|a| !a.is_empty()) {
                    match a.replace("%3A", ":").replace("%3a", ":").parse() {
                        Ok(a) => {
                            asked.insert(a);
                        }
                        Err(_) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("{a:?} is not an address"),
                            );
                        }
                    }
                }
            }
            catalog(hub, &asked)
        }
        (&Method::POST, "/v1/catalog") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the body: {e}")),
            };
            match serde_json::from_slice::<CatalogRequest>(&body) {
                Ok(r) => catalog(hub, &r.addresses),
                Err(e) => text(
                    StatusCode::BAD_REQUEST,
                    format!("not {{\"addresses\": [...]}}: {e}"),
                ),
            }
        }
        (&Method::GET, p) if p == "/v1/fleet/report" || p.starts_with("/v1/agents/") => {
            fleet(hub, &req).await
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/v1/catalog" | "/v1/fleet/report") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The front door ([`super::front`]): the gate first, then the fleet's answer or one
/// agent's (`/v1/agents/<node>/report`, `/v1/agents/<node>/trace?...`).
async fn fleet(hub: &Hub, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .or_else(|| req.headers().get("x-sgpath-authorization"))
        .map(|v| v.as_bytes());
    if let Err((code, why)) = hub.gate.check(authorization, path).await {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
        return text(status, why);
    }
    let Some(front) = &hub.front else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hub cannot list the agents (no Kubernetes client: see its log)",
        );
    };
    if path == "/v1/fleet/report" {
        return match front.fleet_report().await {
            Ok(a) => json(&*a),
            Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
        };
    }
    let rest = path.trim_start_matches("/v1/agents/");
    let (node, what) = rest.split_once('/').unwrap_or((rest, ""));
    let agent_path = match what {
        "report" => "/v1/report".to_owned(),
        "trace" => format!("/v1/trace?{}", req.uri().query().unwrap_or("")),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: /v1/agents/<node>/report or /trace",
            );
        }
    };
    if node.is_empty() {
        return text(StatusCode::NOT_FOUND, "no node named");
    }
    match front.agent(node, &agent_path).await {
        Ok(a) => json(&a),
        Err(e @ super::front::FrontError::NoAgent(_)) => text(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).expect("the answer serializes");
    reply(StatusCode::OK, "application/json", body)
}

fn catalog(hub: &Hub, asked: &BTreeSet<IpAddr>) -> Response<Full<Bytes>> {
    if asked.len() > MAX_ASKED {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_ASKED} addresses per request"),
        );
    }
    let rules = hub.ask(asked);
    let json = serde_json::to_vec(&rules).expect("the catalog serializes");
    reply(StatusCode::OK, "application/json", json)
}

async fn metrics(hub: &Hub) -> String {
    let calls = hub.aws.lock().await.calls().clone();
    let (cached, queued, groups) = hub.cache().sizes();
    let mut out = String::new();
    out.push_str(
        "# HELP sgpath_hub_ec2_calls_total EC2 calls made, per API action (retries included).\n",
    );
    out.push_str("# TYPE sgpath_hub_ec2_calls_total counter\n");
    for action in [
        "DescribeNetworkInterfaces",
        "DescribeSecurityGroups",
        "DescribeVpcs",
        "GetManagedPrefixListEntries",
    ] {
        let n = calls.get(action).copied().unwrap_or(0);
        let _ = writeln!(out, "sgpath_hub_ec2_calls_total{{action=\"{action}\"}} {n}");
    }
    for (name, help, v) in [
        (
            "sgpath_hub_addresses_cached",
            "Addresses with an answer (an ENI, or none).",
            cached,
        ),
        (
            "sgpath_hub_addresses_queued",
            "Addresses asked about, waiting for the next read.",
            queued,
        ),
        (
            "sgpath_hub_groups",
            "Security groups whose rules are known.",
            groups,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let requests = hub.requests.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sgpath_hub_catalog_requests_total Catalog requests answered.\n\
         # TYPE sgpath_hub_catalog_requests_total counter\nsgpath_hub_catalog_requests_total {requests}"
    );
    out
}
