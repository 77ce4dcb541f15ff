//! `sgpath agent`: the node's daemon. One [`Session`] for the life of the process: re-read
//! on every netlink change (a lost notification is a change too: a full resync), swept on
//! its own timer, checked on every change and every summary. Events go to stdout as JSON
//! lines (or text); the HTTP server ([`http`]) asks the loop for a fresh report per request.
//!
//! Log events (`event` field, stable; other fields flat):
//! `listening` (`address`), `probes-attached` (`drop_source`, `paths`, `pod_namespaces`),
//! `probes-failed` / `snapshot-failed` / `resync-failed` / `sweep-failed` / `report-failed` /
//! `accept-failed` / `auth-review-failed` (`error`), `read-warning` (`subject`, `error`), `watch-closed`,
//! `capability-missing` (`capability`, `without`: once per missing one, at start),
//! `netlink-overrun` (notifications lost to ENOBUFS: a full re-read follows),
//! `paths-full` (`path`: no id left for it, see `session.rs`),
//! `path-appeared` / `path-gone` (`path` = host veth, `pod_ip`, `path_kind`, `vlan`),
//! `finding-raised` / `finding-cleared` (`finding`, `severity`, `subject`, `evidence`),
//! `ec2-read` (`source`: `ec2` or the hub's URL, `groups`, `enis`, `unknown`: addresses the
//! hub has not read yet), `ec2-unavailable` (`error`), `ec2-resumed`,
//! `kube-watching` (`node`, `source`), `kube-config-failed` (`error`), `kube-watch-failed` /
//! `kube-watch-resumed` (`resource`, `error`), `kube-context` (`pods`, `policies`: a new
//! context from the API server), `ipamd-absent` (`error`, once),
//! `summary` (one line per path kind: `path_kind`, `paths`, `to_pod_forwarded`,
//! `to_pod_dropped`, `from_pod_forwarded`, `from_pod_dropped`, `syn_unanswered`,
//! `dns_unanswered`, `findings`), `stopping`, `stopped`.
//!
//! Side effects: binds `--listen`; attaches the eBPF programs until SIGTERM or SIGINT, then
//! detaches them all and exits 0.

mod http;
mod remote_trace;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use sgpath::{
    auth,
    checks::{self, Severity},
    collect,
    collect::watch::Tick,
    ebpf::paths::DropSource,
    model::{Node, PathKind, Topology, k8s::Cluster, sg::Rules},
    report::Report,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    cli::{AgentArgs, AuthMode, LogFormat},
    session::{self, Session},
};

/// The first retry after a failed attach; doubles up to [`ATTACH_RETRY_MAX`].
const ATTACH_RETRY: Duration = Duration::from_secs(5);
/// How soon a failed re-read of the node is tried again.
const RESYNC_RETRY: Duration = Duration::from_secs(1);
const ATTACH_RETRY_MAX: Duration = Duration::from_secs(300);

/// A request of the HTTP server to the loop: a fresh report, or why there is none.
pub type ReportRequest = oneshot::Sender<Result<Arc<Report>, String>>;

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logs(args.log_format);
    // Said once, at start: what this process cannot do for want of a capability.
    for cap in collect::caps::missing(collect::caps::effective()) {
        warn!(
            event = "capability-missing",
            capability = cap.name(),
            without = cap.without(),
            "a capability is missing"
        );
    }
    let token = match &args.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(!t.is_empty(), "--token-file {} is empty", path.display());
            Some(t)
        }
        None => None,
    };
    let opts = session::Options {
        sources: collect::Sources {
            cni_config: args.cni_config.clone(),
            ipamd: args.ipamd_url.clone(),
            ..Default::default()
        },
        drop_source: args.drop_source,
        header_read: args.header_read,
        syn_timeout: args.syn_timeout,
        map_sizes: args.maps.sizes(),
        window: Some(args.window),
    };
    let rt = crate::runtime()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        // A mode that cannot work is refused before anything is bound.
        let auth = auth_of(&args, token).await?;
        let transport = sgpath::tls::Transport::new(&args.tls.source(), args.listen)?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        let probe_listener = match args.probe_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--probe-listen {addr}"))?,
            ),
            None => None,
        };
        info!(event = "listening", address = %args.listen, scheme = transport.scheme(),
            probes = ?args.probe_listen, "listening");
        let (requests, mut incoming) = mpsc::channel::<ReportRequest>(16);
        let (ready_tx, ready) = watch::channel(Some("taking the first snapshot".to_owned()));
        let shared = Arc::new(http::Shared {
            auth,
            requests,
            ready,
            cache: http::ReportCache::new(args.report_max_age),
            refused: Default::default(),
            trace: remote_trace::RemoteTrace::new(args.cni_config.clone()),
        });
        let probes = probe_listener.map(|l| tokio::spawn(http::serve_probes(l, shared.clone())));
        let server = tokio::spawn(http::serve(listener, transport, shared));
        let mut cluster = kube_context(&args).await?;
        let (far_ends_tx, far_ends) = watch::channel(BTreeSet::new());
        let mut rules = security_groups(&args, cluster.clone(), far_ends);
        let mut daemon = Daemon {
            far_ends: Some(far_ends_tx),
            node_addresses: args.hub.is_some(),
            ..Daemon::default()
        };
        let mut watch = collect::watch::Watch::new()?;
        let mut watching = true;
        let mut sweep = tokio::time::interval(session::SWEEP_INTERVAL);
        let start = tokio::time::Instant::now();
        let mut summary = tokio::time::interval_at(
            start + args.summary_interval,
            args.summary_interval,
        );
        // Findings from counts clear a window after their cause: the checks re-run every
        // tenth of it, so a cleared finding is logged without waiting for a request.
        let mut recheck = tokio::time::interval_at(start + args.window / 10, args.window / 10);
        let mut next_attach = start;
        let mut retry = ATTACH_RETRY;
        loop {
            tokio::select! {
                _ = term.recv() => { info!(event = "stopping", signal = "SIGTERM", "stopping"); break; }
                _ = interrupt.recv() => { info!(event = "stopping", signal = "SIGINT", "stopping"); break; }
                () = tokio::time::sleep_until(next_attach), if daemon.session.is_none() => {
                    match daemon.start(&opts).await {
                        Ok(()) => { let _ = ready_tx.send(None); }
                        Err(reason) => {
                            let _ = ready_tx.send(Some(reason));
                            next_attach = tokio::time::Instant::now() + retry;
                            retry = (retry * 2).min(ATTACH_RETRY_MAX);
                        }
                    }
                }
                _ = sweep.tick() => daemon.sweep(),
                _ = recheck.tick() => { daemon.recheck(); }
                tick = watch.changed(), if watching => {
                    match tick {
                        None => {
                            warn!(event = "watch-closed", "netlink notifications stopped; summaries still resync");
                            watching = false;
                            continue;
                        }
                        Some(Tick::Overrun) => warn!(
                            event = "netlink-overrun",
                            "netlink notifications were lost (ENOBUFS): re-reading the whole node"
                        ),
                        Some(Tick::Changed) => {}
                    }
                    daemon.resync(&opts.sources).await;
                }
                _ = tokio::time::sleep(RESYNC_RETRY), if daemon.resync_failed => {
                    daemon.resync(&opts.sources).await;
                }
                _ = summary.tick() => {
                    if !watching { daemon.resync(&opts.sources).await; }
                    daemon.summary();
                }
                Ok(()) = async { cluster.as_mut().expect("guarded").changed().await },
                    if cluster.is_some() =>
                {
                    let next = cluster.as_mut().expect("guarded").borrow_and_update().clone();
                    if let Some(c) = &next {
                        info!(event = "kube-context", pods = c.pods.len(), policies = c.policies.len(),
                            "new Kubernetes context");
                    }
                    daemon.set_cluster(next);
                }
                Ok(()) = async { rules.as_mut().expect("guarded").changed().await },
                    if rules.is_some() =>
                {
                    let next = rules.as_mut().expect("guarded").borrow_and_update().clone();
                    daemon.set_security_groups(next);
                }
                Some(reply) = incoming.recv() => {
                    let _ = reply.send(daemon.report().map(Arc::new));
                }
            }
        }
        server.abort();
        if let Some(p) = probes {
            p.abort();
        }
        // Detaches every program and closes every map.
        drop(daemon);
        info!(event = "stopped", "stopped: probes detached");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How the HTTP server checks who asks (`--auth`, `--token-file`).
///
/// # Errors
/// `--auth token` without `--token-file`, `--token-file` with another mode,
/// `--auth none` on an address other hosts reach, or `--auth kubernetes` without a cluster
/// to ask.
async fn auth_of(args: &AgentArgs, token: Option<String>) -> anyhow::Result<auth::Auth> {
    let mode = args.auth.unwrap_or(if token.is_some() {
        AuthMode::Token
    } else {
        AuthMode::None
    });
    Ok(match (mode, token) {
        (AuthMode::Token, Some(t)) => auth::Auth::Token(t),
        (AuthMode::Token, None) => anyhow::bail!("--auth token needs --token-file"),
        (AuthMode::None | AuthMode::Kubernetes, Some(_)) => {
            anyhow::bail!("--token-file is for --auth token (or no --auth)")
        }
        (AuthMode::None, None) if args.listen.ip().is_loopback() => auth::Auth::Open,
        (AuthMode::None, None) => anyhow::bail!(
            "--auth none would serve /metrics, /v1/report and /v1/trace to anyone who reaches \
             --listen {}: use --auth kubernetes (or --auth token with --token-file), or a \
             loopback --listen",
            args.listen
        ),
        (AuthMode::Kubernetes, None) => {
            let client = collect::kube::client(args.kubeconfig.as_deref())
                .await
                .context("--auth kubernetes")?
                .context(
                    "--auth kubernetes needs a cluster to ask: --kubeconfig, or run in a pod \
                     (KUBERNETES_SERVICE_HOST)",
                )?;
            auth::Auth::Kubernetes(auth::Reviewer::new(client))
        }
    })
}

/// With `--hub`, asks the hub for the rules (see [`read_from_hub`]); with `--ec2`, reads
/// them from EC2 now and again: every `--ec2-refresh`, and soon after the cluster's pods
/// change. The receiver of each read (or why it failed: no root certificates for TLS is one
/// more `ec2-unavailable` reason). Neither: no rules.
fn security_groups(
    args: &AgentArgs,
    cluster: Option<watch::Receiver<Option<Arc<Cluster>>>>,
    far_ends: watch::Receiver<BTreeSet<IpAddr>>,
) -> Option<watch::Receiver<Option<Arc<Rules>>>> {
    if let Some(url) = &args.hub {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(read_from_hub(
            sgpath::hub::Client::new(url).with_token_file(args.hub_token_file.clone()),
            args.ec2_refresh,
            cluster,
            far_ends,
            tx,
        ));
        return Some(rx);
    }
    if !args.ec2.ec2 {
        return None;
    }
    let aws = collect::aws::Aws::new(args.ec2.config());
    let (tx, rx) = watch::channel(None);
    tokio::spawn(read_security_groups(
        aws,
        args.ec2_refresh,
        cluster,
        far_ends,
        tx,
    ));
    Some(rx)
}

/// The far ends of the flows the counters hold unanswered (the destinations of a pod's own
/// requests, the sources of the node's requests to it): the addresses a verdict needs.
fn far_ends_of(report: &Report) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for c in report.paths.iter().filter_map(|p| p.judged()) {
        out.extend(c.from_pod.unanswered.iter().map(|u| u.destination));
        out.extend(c.to_pod.unanswered.iter().map(|u| u.source));
    }
    out
}

/// The addresses whose ENIs matter: this node's pods and CoreDNS's.
fn addresses_of_interest(
    cluster: Option<&Cluster>,
) -> std::collections::BTreeSet<std::net::IpAddr> {
    cluster
        .map(|c| {
            c.pods
                .iter()
                .filter(|p| !p.host_network)
                .flat_map(|p| p.ips.iter().copied())
                .chain(c.coredns.iter().copied())
                .collect()
        })
        .unwrap_or_default()
}

async fn read_security_groups(
    mut aws: collect::aws::Aws,
    refresh: std::time::Duration,
    mut cluster: Option<watch::Receiver<Option<Arc<Cluster>>>>,
    mut far_ends: watch::Receiver<BTreeSet<IpAddr>>,
    tx: watch::Sender<Option<Arc<Rules>>>,
) {
    // New far ends wait at least this long after the last read: a node losing flows to
    // many new addresses costs EC2 one batched read per gap, not one per address.
    const FAR_END_GAP: std::time::Duration = std::time::Duration::from_secs(30);
    let mut failing: Option<String> = None;
    let mut known: BTreeSet<IpAddr> = BTreeSet::new();
    loop {
        let mut addresses = addresses_of_interest(
            cluster
                .as_mut()
                .and_then(|c| c.borrow_and_update().clone())
                .as_deref(),
        );
        addresses.extend(far_ends.borrow_and_update().iter().copied());
        let last_read = tokio::time::Instant::now();
        known.clone_from(&addresses);
        let rules = match aws.read(&addresses).await {
            Ok(r) => {
                if failing.take().is_some() {
                    info!(event = "ec2-resumed", "reading the security groups again");
                }
                if let Rules::Fresh { catalog, .. } = &r {
                    info!(
                        event = "ec2-read",
                        groups = catalog.groups.len(),
                        enis = catalog.enis.len(),
                        "read the security groups' rules"
                    );
                }
                r
            }
            Err(e) => {
                let reason = e.to_string();
                if failing.as_ref() != Some(&reason) {
                    warn!(event = "ec2-unavailable", error = %reason,
                        "cannot read the security groups' rules; retrying every --ec2-refresh");
                    failing = Some(reason.clone());
                }
                Rules::Unavailable { reason }
            }
        };
        if tx.send(Some(Arc::new(rules))).is_err() {
            return;
        }
        next_read(
            refresh,
            &mut cluster,
            &mut far_ends,
            &known,
            last_read + FAR_END_GAP,
        )
        .await;
    }
}

/// `--hub`: asks the hub for the catalog of the addresses of interest (and, through
/// `far_ends`, the node's own addresses and the far ends of its unanswered flows) every
/// `--ec2-refresh`, soon after the cluster or the far ends change, and sooner while the
/// hub has not read some of them yet (it queued them: 2 s, doubling up to the refresh).
/// Asking costs the hub a cache lookup and EC2 nothing.
async fn read_from_hub(
    hub: sgpath::hub::Client,
    refresh: Duration,
    mut cluster: Option<watch::Receiver<Option<Arc<Cluster>>>>,
    mut far_ends: watch::Receiver<BTreeSet<IpAddr>>,
    tx: watch::Sender<Option<Arc<Rules>>>,
) {
    const SETTLE: Duration = Duration::from_secs(2);
    const SOON: Duration = Duration::from_secs(2);
    let mut failing: Option<String> = None;
    let mut known: BTreeSet<IpAddr> = BTreeSet::new();
    let mut soon = SOON;
    loop {
        let mut addresses = addresses_of_interest(
            cluster
                .as_mut()
                .and_then(|c| c.borrow_and_update().clone())
                .as_deref(),
        );
        addresses.extend(far_ends.borrow_and_update().iter().copied());
        known.clone_from(&addresses);
        let rules = match hub.catalog(&addresses).await {
            Ok(r) => r,
            Err(e) => Rules::Unavailable {
                reason: e.to_string(),
            },
        };
        let unknown = match &rules {
            Rules::Fresh { catalog } => {
                if failing.take().is_some() {
                    info!(
                        event = "ec2-resumed",
                        source = hub.url(),
                        "the hub answers again"
                    );
                }
                let unknown = addresses
                    .iter()
                    .filter(|a| matches!(catalog.locate(**a), sgpath::model::sg::Locus::Unknown))
                    .count();
                info!(
                    event = "ec2-read",
                    source = hub.url(),
                    groups = catalog.groups.len(),
                    enis = catalog.enis.len(),
                    unknown,
                    "read the security groups' rules from the hub"
                );
                unknown
            }
            Rules::Unavailable { reason } => {
                if failing.as_ref() != Some(reason) {
                    warn!(event = "ec2-unavailable", error = %reason,
                        "no security groups' rules from the hub; asking again");
                    failing = Some(reason.clone());
                }
                1
            }
        };
        let wait = if unknown > 0 {
            let w = soon;
            soon = (soon * 2).min(refresh);
            w
        } else {
            soon = SOON;
            refresh
        };
        if tx.send(Some(Arc::new(rules))).is_err() {
            return;
        }
        next_read(
            wait,
            &mut cluster,
            &mut far_ends,
            &known,
            tokio::time::Instant::now() + SETTLE,
        )
        .await;
    }
}

/// Waits for the next read of the rules: `wait` passes, the cluster gains an address of
/// interest not in `known` (and settles for 2 s: a burst of pod changes is read once), or a far end not in `known` appears (read
/// no earlier than `far_end_not_before`). Shared by the EC2 and the hub readers.
async fn next_read(
    wait: Duration,
    cluster: &mut Option<watch::Receiver<Option<Arc<Cluster>>>>,
    far_ends: &mut watch::Receiver<BTreeSet<IpAddr>>,
    known: &BTreeSet<IpAddr>,
    far_end_not_before: tokio::time::Instant,
) {
    const SETTLE: Duration = Duration::from_secs(2);
    // Only a snapshot with an address not read yet is worth a read: a namespace, a Service
    // or another node's pod changes nothing the rules are read for (at 5,000 nodes, a
    // namespace a second would otherwise be 5,000 reads a second).
    let changed = async {
        match cluster.as_mut() {
            Some(c) => {
                loop {
                    if c.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    let snapshot = c.borrow().clone();
                    if addresses_of_interest(snapshot.as_deref())
                        .iter()
                        .any(|a| !known.contains(a))
                    {
                        break;
                    }
                }
                tokio::time::sleep(SETTLE).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    // Only a far end not read yet is worth a read.
    let new_far_end = async {
        loop {
            if far_ends.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if far_ends.borrow().iter().any(|a| !known.contains(a)) {
                break;
            }
        }
        tokio::time::sleep_until(far_end_not_before).await;
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = changed => {}
        () = new_far_end => {}
    }
}

/// Starts watching the cluster when there is one (`--kubeconfig`, or in-cluster); the
/// receiver of its snapshots.
///
/// # Errors
/// When `--kubeconfig` cannot be read. An incomplete in-cluster config is logged and the
/// agent runs without a cluster.
async fn kube_context(
    args: &AgentArgs,
) -> anyhow::Result<Option<watch::Receiver<Option<Arc<Cluster>>>>> {
    watch_cluster(args.kubeconfig.as_deref(), args.node_name.clone()).await
}

/// Starts the Kubernetes watches (see [`kube_context`]) for `agent` and `observe`.
///
/// # Errors
/// When `kubeconfig` cannot be read.
pub(crate) async fn watch_cluster(
    kubeconfig: Option<&std::path::Path>,
    node_name: Option<String>,
) -> anyhow::Result<Option<watch::Receiver<Option<Arc<Cluster>>>>> {
    let client = match collect::kube::client(kubeconfig).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e @ collect::kube::KubeError::Kubeconfig { .. }) => return Err(e.into()),
        Err(e) => {
            let e = anyhow::Error::from(e);
            error!(event = "kube-config-failed", error = %format!("{e:#}"), "running without the cluster");
            return Ok(None);
        }
    };
    let node = node_name
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| {
            nix::sys::utsname::uname()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let source = kubeconfig.map_or_else(|| "in-cluster".to_owned(), |p| p.display().to_string());
    info!(event = "kube-watching", node = %node, source = %source, "watching the cluster");
    let (tx, rx) = watch::channel(None);
    tokio::spawn(collect::kube::watch(client, node, tx));
    Ok(Some(rx))
}

/// tracing to stdout: JSON lines with the event's fields at the top level, or text.
pub(crate) fn init_logs(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// A path as the logs name it: (host veth, pod IP, kind, VLAN).
type PathName = (String, String, PathKind, Option<u16>);

/// The loop's state: the session once attached, and what was last logged.
#[derive(Default)]
struct Daemon {
    session: Option<Session>,
    /// The Kubernetes context, kept across (re)attaches.
    cluster: Option<Arc<Cluster>>,
    /// The security groups' rules as last read (`--ec2`), kept across (re)attaches.
    security_groups: Option<Arc<Rules>>,
    /// Where the far ends of the unanswered flows go, for the EC2 reader to look up.
    far_ends: Option<watch::Sender<BTreeSet<IpAddr>>>,
    /// Also send the node's own ENI addresses there (`--hub`: the hub knows the node's ENIs
    /// only by being asked about their addresses; `--ec2` has them from instance metadata).
    node_addresses: bool,
    /// Degraded mode, while the probes are not attached (a missing capability, no BTF, a
    /// kernel that refuses the programs): the latest snapshot, re-read on every change, so
    /// the topology, the checks and their metrics still work.
    bare: Option<(Node, Topology)>,
    /// The last attach failure logged: a retry that fails the same way is not logged again.
    failure: Option<String>,
    paths: BTreeSet<PathName>,
    /// (id, subject) -> severity of the findings raised.
    findings: BTreeMap<(String, String), Severity>,
    /// The last re-read failed: try again soon, not at the next netlink change (there may
    /// be none, and the report would stay stale).
    resync_failed: bool,
}

impl Daemon {
    /// Takes the first snapshot and attaches; `Err` says why not, for `/readyz`. Without
    /// probes the snapshot is kept: the agent runs degraded (topology and checks only).
    async fn start(&mut self, opts: &session::Options) -> Result<(), String> {
        let (node, topo) = match collect::node_with_topology(&opts.sources).await {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("taking the first snapshot: {e}");
                error!(event = "snapshot-failed", error = %e, "{reason}");
                return Err(reason);
            }
        };
        for w in &node.read_warnings {
            warn!(event = "read-warning", subject = %w.subject, error = %w.message, "node read incomplete");
        }
        let snapshot = (node.clone(), topo.clone());
        match Session::attach(node, topo, opts).await {
            Ok(s) => {
                info!(
                    event = "probes-attached",
                    drop_source = match s.drop_source() {
                        DropSource::Reason => "reason",
                        DropSource::Location => "location",
                    },
                    header_read = s.header_read().as_str(),
                    programs = %s.programs().map(|(p, h)| format!("{p}={h}")).collect::<Vec<_>>().join(","),
                    paths = s.topology().paths.len(),
                    pod_namespaces = s.pod_namespaces(),
                    "probes attached"
                );
                self.session = Some(s);
                if let Some(s) = &mut self.session
                    && self.cluster.is_some()
                {
                    s.set_cluster(self.cluster.clone());
                }
                if let Some(s) = &mut self.session {
                    s.set_security_groups(self.security_groups.clone());
                }
                self.bare = None;
                self.paths_changed();
                self.recheck();
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "degraded: topology and checks only, no counters; attaching probes: {e:#}"
                );
                let error = format!("{e:#}");
                if self.failure.as_ref() != Some(&error) {
                    error!(event = "probes-failed", error = %error,
                        "probes failed: running degraded (topology and checks only)");
                    self.failure = Some(error);
                }
                let (mut node, _) = snapshot;
                node.cluster = self.cluster.clone();
                node.security_groups = self.security_groups.clone();
                let topo = Topology::from_node(&node);
                self.bare = Some((node, topo));
                self.paths_changed();
                self.recheck();
                Err(reason)
            }
        }
    }

    /// Newly read security-group rules (or why they could not be read): re-run the checks.
    fn set_security_groups(&mut self, rules: Option<Arc<Rules>>) {
        self.security_groups = rules;
        if let Some(s) = &mut self.session {
            s.set_security_groups(self.security_groups.clone());
            self.recheck();
        } else if let Some((node, _)) = &mut self.bare {
            node.security_groups = self.security_groups.clone();
            self.recheck();
        }
    }

    /// A new Kubernetes context: relabel the paths and re-run the checks.
    fn set_cluster(&mut self, cluster: Option<Arc<Cluster>>) {
        self.cluster = cluster;
        if let Some(s) = &mut self.session {
            s.set_cluster(self.cluster.clone());
            self.recheck();
        } else if let Some((node, topo)) = &mut self.bare {
            node.cluster = self.cluster.clone();
            *topo = Topology::from_node(node);
            self.recheck();
        }
    }

    fn sweep(&mut self) {
        if let Some(s) = &mut self.session
            && let Err(e) = s.sweep()
        {
            warn!(event = "sweep-failed", error = %format!("{e:#}"), "connection sweep failed");
        }
    }

    async fn resync(&mut self, sources: &collect::Sources) {
        let read = if let Some(s) = &mut self.session {
            s.resync().await
        } else if self.bare.is_some() {
            collect::node_with_topology(sources)
                .await
                .map(|(mut node, _)| {
                    node.cluster = self.cluster.clone();
                    node.security_groups = self.security_groups.clone();
                    let topo = Topology::from_node(&node);
                    self.bare = Some((node, topo));
                })
                .map_err(anyhow::Error::from)
        } else {
            return;
        };
        self.resync_failed = read.is_err();
        if let Err(e) = read {
            warn!(event = "resync-failed", error = %format!("{e:#}"), "re-reading the node failed");
            return;
        }
        self.paths_changed();
        self.recheck();
    }

    /// The latest snapshot's topology, attached or degraded.
    fn topology(&self) -> Option<&Topology> {
        match (&self.session, &self.bare) {
            (Some(s), _) => Some(s.topology()),
            (None, Some((_, topo))) => Some(topo),
            (None, None) => None,
        }
    }

    /// Logs the paths that appeared or went since the last call.
    fn paths_changed(&mut self) {
        let Some(topo) = self.topology() else { return };
        let now: BTreeSet<PathName> = topo
            .paths
            .iter()
            .map(|p| {
                (
                    p.host_veth.clone(),
                    p.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    p.kind,
                    p.vlan_id,
                )
            })
            .collect();
        for (veth, ip, kind, vlan) in now.difference(&self.paths) {
            info!(event = "path-appeared", path = %veth, pod_ip = %ip, path_kind = kind.as_str(),
                vlan = vlan.map(|v| v.to_string()).unwrap_or_default(), "path appeared");
        }
        for (veth, ip, kind, vlan) in self.paths.difference(&now) {
            info!(event = "path-gone", path = %veth, pod_ip = %ip, path_kind = kind.as_str(),
                vlan = vlan.map(|v| v.to_string()).unwrap_or_default(), "path gone");
        }
        self.paths = now;
    }

    /// A fresh report; logs the findings raised and cleared since the last one.
    fn report(&mut self) -> Result<Report, String> {
        let report = match (&mut self.session, &self.bare) {
            (Some(s), _) => s.report().map_err(|e| format!("{e:#}"))?,
            (None, Some((node, topo))) => Report::new(node, topo, checks::run(node, topo)),
            (None, None) => return Err("taking the first snapshot".to_owned()),
        };
        let mut now = far_ends_of(&report);
        if self.node_addresses
            && let Some(topo) = self.topology()
        {
            now.extend(topo.enis.iter().flat_map(|e| e.owns.iter().copied()));
        }
        if let Some(tx) = &self.far_ends {
            tx.send_if_modified(|s| {
                let changed = *s != now;
                *s = now;
                changed
            });
        }
        let now: BTreeMap<(String, String), Severity> = report
            .findings
            .iter()
            .map(|f| ((f.id.as_str().to_owned(), f.subject.clone()), f.severity))
            .collect();
        for f in &report.findings {
            let key = (f.id.as_str().to_owned(), f.subject.clone());
            if self.findings.contains_key(&key) {
                continue;
            }
            let evidence = f.evidence.join("; ");
            let (finding, subject) = (f.id.as_str(), f.subject.as_str());
            match f.severity {
                Severity::Error => error!(event = "finding-raised", finding, severity = "error",
                    subject, evidence, remediation = %f.remediation, "finding raised"),
                Severity::Warning => warn!(event = "finding-raised", finding, severity = "warning",
                    subject, evidence, remediation = %f.remediation, "finding raised"),
                Severity::Info => info!(event = "finding-raised", finding, severity = "info",
                    subject, evidence, remediation = %f.remediation, "finding raised"),
            }
        }
        for ((finding, subject), severity) in &self.findings {
            if !now.contains_key(&(finding.clone(), subject.clone())) {
                info!(event = "finding-cleared", finding = %finding, severity = severity_name(*severity),
                    subject = %subject, "finding cleared");
            }
        }
        self.findings = now;
        Ok(report)
    }

    /// Re-runs the checks (over the counters too), logging what changed.
    fn recheck(&mut self) -> Option<Report> {
        match self.report() {
            Ok(r) => Some(r),
            Err(e) => {
                if self.session.is_some() || self.bare.is_some() {
                    warn!(event = "report-failed", error = %e, "reading the counters failed");
                }
                None
            }
        }
    }

    /// One `summary` line per path kind, totals since start; re-checks on the way.
    fn summary(&mut self) {
        let Some(report) = self.recheck() else { return };
        for kind in [PathKind::BranchEni, PathKind::NodeEni] {
            let paths: Vec<_> = report.paths.iter().filter(|p| p.kind == kind).collect();
            let mut t = [0u64; 6];
            for c in paths.iter().filter_map(|p| p.counters.as_ref()) {
                t[0] += c.to_pod.forwarded_packets;
                t[1] += c.to_pod.dropped_packets;
                t[2] += c.from_pod.forwarded_packets;
                t[3] += c.from_pod.dropped_packets;
                t[4] += c.to_pod.syn_unanswered.values().sum::<u64>()
                    + c.from_pod.syn_unanswered.values().sum::<u64>();
                t[5] += c.to_pod.dns_unanswered + c.from_pod.dns_unanswered;
            }
            info!(
                event = "summary",
                path_kind = kind.as_str(),
                paths = paths.len(),
                to_pod_forwarded = t[0],
                to_pod_dropped = t[1],
                from_pod_forwarded = t[2],
                from_pod_dropped = t[3],
                syn_unanswered = t[4],
                dns_unanswered = t[5],
                findings = report.findings.len(),
                "summary"
            );
        }
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}
