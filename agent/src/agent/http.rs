//! The agent's HTTPS server (HTTP/1.1 over [`sgpath::tls`], hyper): `/metrics`,
//! `/v1/report`, `/v1/trace` ([`remote_trace`](super::remote_trace)), `/healthz`, `/readyz`.
//! GET and HEAD only (405 otherwise), unknown paths 404, no request body (413).
//! Every path but the health checks is checked by [`sgpath::auth`] (`--auth`): 401
//! without a known bearer token, 403 for a user without `get` on the path, 503 with
//! `Retry-After` when the review budget is spent; a refused request costs no report.
//!
//! `--probe-listen` serves `/healthz` and `/readyz` alone, plain HTTP, from a connection
//! table of its own ([`serve_probes`]): nothing sent to `--listen` can take a probe's slot.
//!
//! Reports are built once and served from [`ReportCache`] until `--report-max-age` passes;
//! requests arriving while one is built wait for it and share it, so a flood of requests
//! costs serving bytes, not reports. `sgpath_http_report_builds_total` and
//! `sgpath_http_requests_refused_total{reason}` (appended to `/metrics`) count both.
//!
//! Bounds: [`MAX_CONNECTIONS`] at once, TLS handshake and request head within
//! [`HEAD_TIMEOUT`], the head within [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] headers, and a
//! connection lives at most
//! [`CONNECTION_TIME`]. A new connection beyond the limit closes the oldest one that is not
//! in the middle of a request (one still sending its head, or idle between requests): a
//! slow-loris client cannot hold the port, and the kubelet's probes, which send their head
//! at once, still get through. When every connection is serving, the new one is closed.
//!
//! Side effects: accepts connections on the listener it is given.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use sgpath::report::prometheus;
use tokio::sync::{Notify, mpsc, watch};
use tracing::warn;

use sgpath::{
    auth::{Auth, RETRY_AFTER_SECS, Verdict},
    tls::Transport,
};

use super::{ReportRequest, remote_trace::RemoteTrace};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Request line and headers, bytes (hyper's smallest read buffer).
pub const MAX_HEAD_BYTES: usize = 8192;
/// Headers per request.
pub const MAX_HEADERS: usize = 32;
/// Time to read a request's head (also how long an idle keep-alive connection stays).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may live, however busy.
pub const CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Time the loop has to answer a report request.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share with the agent's loop.
pub struct Shared {
    pub auth: Auth,
    /// Asks the loop for a fresh report.
    pub requests: mpsc::Sender<ReportRequest>,
    /// `None` when ready, else why not.
    pub ready: watch::Receiver<Option<String>>,
    pub cache: ReportCache,
    /// Requests refused: 401, 403, 503 for want of review budget.
    pub refused: [AtomicU64; 3],
    pub trace: RemoteTrace,
}

/// One report, rendered in every format the server speaks.
pub struct Rendered {
    json: Bytes,
    text: Bytes,
    openmetrics: Bytes,
}

/// The last report built, reused until it is older than `max_age`. The lock is held while
/// a report is built: requests that come meanwhile wait and get that one.
pub struct ReportCache {
    max_age: Duration,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Rendered>)>>,
    builds: AtomicU64,
}

impl ReportCache {
    pub fn new(max_age: Duration) -> ReportCache {
        ReportCache {
            max_age,
            last: tokio::sync::Mutex::new(None),
            builds: AtomicU64::new(0),
        }
    }

    /// A report built after this request came, or within `max_age`.
    async fn get(&self, shared: &Shared) -> Result<Arc<Rendered>, String> {
        let came = tokio::time::Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, r)) = &*last
            && (*started >= came || started.elapsed() <= self.max_age)
        {
            return Ok(r.clone());
        }
        let started = tokio::time::Instant::now();
        let report = fresh_report(shared).await?;
        let version = env!("CARGO_PKG_VERSION");
        let rendered = Arc::new(Rendered {
            json: Bytes::from(report.to_json() + "\n"),
            text: Bytes::from(prometheus::render_text(&report, version)),
            openmetrics: Bytes::from(prometheus::render_openmetrics(&report, version)),
        });
        self.builds.fetch_add(1, Ordering::Relaxed);
        *last = Some((started, rendered.clone()));
        Ok(rendered)
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    id: u64,
    /// Between a request's head and its response.
    busy: AtomicBool,
    /// Tells the connection's task to close it.
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: VecDeque<Arc<Conn>>,
}

impl Conns {
    /// Makes room for a new connection (evicting the oldest one not serving a request if
    /// the table is full) and registers it; `None` when every connection is serving.
    fn admit(&mut self) -> Option<Arc<Conn>> {
        if self.open.len() >= MAX_CONNECTIONS {
            let idle = self
                .open
                .iter()
                .position(|c| !c.busy.load(Ordering::Relaxed))?;
            let evicted = self.open.remove(idle).expect("in range");
            evicted.evict.notify_one();
        }
        self.next_id += 1;
        let conn = Arc::new(Conn {
            id: self.next_id,
            busy: AtomicBool::new(false),
            evict: Notify::new(),
        });
        self.open.push_back(conn.clone());
        Some(conn)
    }

    fn close(&mut self, id: u64) {
        self.open.retain(|c| c.id != id);
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serves {
    All,
    /// `--probe-listen`: `/healthz` and `/readyz`.
    Probes,
}

/// Accepts and serves connections until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, transport: Transport, shared: Arc<Shared>) {
    accept_loop(listener, transport, shared, Serves::All).await
}

/// Serves `/healthz` and `/readyz` (plain HTTP) until the task is aborted.
pub async fn serve_probes(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    accept_loop(listener, Transport::Plain, shared, Serves::Probes).await
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    serves: Serves,
) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(event = "accept-failed", error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(conn) = conns.lock().expect("not poisoned").admit() else {
            // Every slot is answering a request: this one is closed unanswered.
            continue;
        };
        let (shared, conns, transport) = (shared.clone(), conns.clone(), transport.clone());
        tokio::spawn(async move {
            let state = conn.clone();
            let service = service_fn(move |req| {
                let (shared, state) = (shared.clone(), state.clone());
                async move {
                    state.busy.store(true, Ordering::Relaxed);
                    let response = handle(req, &shared, serves).await;
                    state.busy.store(false, Ordering::Relaxed);
                    Ok::<_, Infallible>(response)
                }
            });
            // The handshake is part of the head: bounded by the same timeout, and a
            // connection still in it is idle (evictable).
            let served = async {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(HEAD_TIMEOUT, transport.accept(stream)).await
                else {
                    return;
                };
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .max_headers(MAX_HEADERS)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            };
            tokio::select! {
                _ = served => {}
                _ = conn.evict.notified() => {}
                _ = tokio::time::sleep(CONNECTION_TIME) => {}
            }
            conns.lock().expect("not poisoned").close(conn.id);
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    respond(status, "text/plain; charset=utf-8", body)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Report,
    Trace,
}

async fn handle(req: Request<Incoming>, shared: &Shared, serves: Serves) -> Response<Full<Bytes>> {
    let endpoint = match (req.uri().path(), serves) {
        ("/healthz", _) => Endpoint::Healthz,
        ("/readyz", _) => Endpoint::Readyz,
        ("/metrics", Serves::All) => Endpoint::Metrics,
        ("/v1/report", Serves::All) => Endpoint::Report,
        ("/v1/trace", Serves::All) => Endpoint::Trace,
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "no request body is accepted");
    }
    // Everything but the kubelet's probes is checked (a new endpoint too, by default).
    if !matches!(endpoint, Endpoint::Healthz | Endpoint::Readyz) {
        // Through the API server's pods proxy `Authorization` never arrives (the API server
        // drops it once it has authenticated the caller): `kubectl sgpath` sends its token
        // in X-Sgpath-Authorization.
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .or_else(|| req.headers().get("x-sgpath-authorization"))
            .map(HeaderValue::as_bytes);
        match shared.auth.check(authorization, req.uri().path()).await {
            Verdict::Allowed => {}
            Verdict::Unauthenticated(why) => {
                shared.refused[0].fetch_add(1, Ordering::Relaxed);
                let mut r = plain(StatusCode::UNAUTHORIZED, why);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            Verdict::Forbidden(why) => {
                shared.refused[1].fetch_add(1, Ordering::Relaxed);
                return plain(StatusCode::FORBIDDEN, why);
            }
            Verdict::Unavailable(why) => return plain(StatusCode::SERVICE_UNAVAILABLE, why),
            Verdict::Throttled => {
                shared.refused[2].fetch_add(1, Ordering::Relaxed);
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many new tokens to review: retry later",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                return r;
            }
        }
    }
    match endpoint {
        Endpoint::Healthz => plain(StatusCode::OK, "ok"),
        Endpoint::Readyz => match shared.ready.borrow().clone() {
            None => plain(StatusCode::OK, "ready"),
            Some(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        Endpoint::Trace => {
            let (status, body) = shared.trace.answer(req.uri().query().unwrap_or("")).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status == StatusCode::OK {
                respond(status, "application/json", body)
            } else {
                plain(status, body)
            }
        }
        Endpoint::Metrics | Endpoint::Report => {
            let report = match shared.cache.get(shared).await {
                Ok(r) => r,
                Err(reason) => return plain(StatusCode::SERVICE_UNAVAILABLE, reason),
            };
            if endpoint == Endpoint::Report {
                return respond(StatusCode::OK, "application/json", report.json.clone());
            }
            let openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let (content_type, body) = if openmetrics {
                (prometheus::OPENMETRICS, &report.openmetrics)
            } else {
                (prometheus::TEXT, &report.text)
            };
            respond(
                StatusCode::OK,
                content_type,
                server_metrics(shared, body, openmetrics),
            )
        }
    }
}

/// The report's metrics, with the server's own counters before OpenMetrics' `# EOF`.
fn server_metrics(shared: &Shared, report: &Bytes, openmetrics: bool) -> Bytes {
    let (head, eof) = match report.strip_suffix(b"# EOF\n") {
        Some(head) if openmetrics => (head, "# EOF\n"),
        _ => (&report[..], ""),
    };
    let builds = shared.cache.builds.load(Ordering::Relaxed);
    let [unauthenticated, forbidden, throttled] =
        shared.refused.each_ref().map(|c| c.load(Ordering::Relaxed));
    // OpenMetrics names a counter's family without `_total`; the 0.0.4 format with it.
    let family = |name: &str| {
        if openmetrics {
            name.to_owned()
        } else {
            format!("{name}_total")
        }
    };
    let (builds_family, refused_family) = (
        family("sgpath_http_report_builds"),
        family("sgpath_http_requests_refused"),
    );
    let own = format!(
        "# HELP {builds_family} Reports built for /metrics and /v1/report (the rest were served from the cache).\n\
         # TYPE {builds_family} counter\n\
         sgpath_http_report_builds_total {builds}\n\
         # HELP {refused_family} Requests refused: 401 unauthenticated, 403 forbidden, 503 throttled (review budget spent).\n\
         # TYPE {refused_family} counter\n\
         sgpath_http_requests_refused_total{{reason=\"unauthenticated\"}} {unauthenticated}\n\
         sgpath_http_requests_refused_total{{reason=\"forbidden\"}} {forbidden}\n\
         sgpath_http_requests_refused_total{{reason=\"throttled\"}} {throttled}\n{eof}"
    );
    let mut out = Vec::with_capacity(report.len() + own.len());
    out.extend_from_slice(head);
    out.extend_from_slice(own.as_bytes());
    Bytes::from(out)
}

async fn fresh_report(shared: &Shared) -> Result<Arc<sgpath::report::Report>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared
        .requests
        .send(tx)
        .await
        .map_err(|_| "the agent is stopping".to_owned())?;
    match tokio::time::timeout(REPORT_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("the agent is stopping".to_owned()),
        Err(_) => Err("the agent did not answer in time".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_or_refuses() {
        let mut conns = Conns::default();
        let first: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| conns.admit().unwrap())
            .collect();
        first[0].busy.store(true, Ordering::Relaxed);
        // Full: the oldest idle one (the second) makes room.
        let new = conns.admit().unwrap();
        assert_eq!(conns.open.len(), MAX_CONNECTIONS);
        assert!(!conns.open.iter().any(|c| c.id == first[1].id));
        assert!(conns.open.iter().any(|c| c.id == first[0].id));
        assert_eq!(conns.open.back().unwrap().id, new.id);
        // All serving: nothing is evicted, the newcomer is refused.
        for c in &conns.open {
            c.busy.store(true, Ordering::Relaxed);
        }
        assert!(conns.admit().is_none());
        conns.close(new.id);
        assert_eq!(conns.open.len(), MAX_CONNECTIONS - 1);
        assert!(conns.admit().is_some());
    }
}
