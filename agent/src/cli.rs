//! Command-line interface (clap types only): `--help` is the manual.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Diagnose EKS security groups for pods on this node: branch ENIs, VLANs, policy
/// routing, sysctls, and where pod traffic dies.
#[derive(Debug, Parser)]
#[command(name = "sgpath", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start and moved into its command: boxing the larger arguments buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a one-shot snapshot of the node's security-group topology and check it.
    ///
    /// Exit status: 0 no warning or error, 1 findings of severity warning or error,
    /// 2 sgpath could not do its job (bad flag, node unreadable).
    Inspect(InspectArgs),
    /// Ask the kernel which rule, table, route and interface a pod's packet takes, which
    /// security groups decide it, and whether the answer comes back the same way.
    ///
    /// Example: `sgpath trace --from 192.168.3.219 --to 169.254.20.10:53 --proto udp`.
    /// Exit status: 0 the flow works as far as the node can tell, 1 it does not, 2 error.
    Trace(TraceArgs),
    /// Count, for a while, what the node forwards to and from every pod and what the kernel
    /// drops on each path, with the kernel's reasons; then print the inspect report with
    /// `counters` on each path. Attaches eBPF programs (needs CAP_BPF, CAP_PERFMON,
    /// CAP_NET_ADMIN, or root) and detaches them all before it exits, also on Ctrl-C and
    /// SIGTERM.
    ///
    /// Example: `sgpath observe --duration 10s`. Exit status as `inspect`.
    Observe(ObserveArgs),
    /// Run as the node's daemon until SIGTERM or Ctrl-C: count every pod's path, follow
    /// pods as they come and go (netlink notifications), log events as JSON lines on stdout,
    /// and serve `/metrics` (Prometheus), `/v1/report` (the observe JSON document, counters
    /// since start), `/healthz` and `/readyz` on `--listen`. Needs what `observe` needs.
    ///
    /// Example: `sgpath agent --listen 0.0.0.0:9464`. Exits 0 after detaching everything.
    Agent(AgentArgs),
    /// Run as the cluster's one reader of EC2 (a Deployment of one replica): keep the
    /// security groups' rules, the ENIs owning the addresses agents ask about, the prefix
    /// lists and the VPC's CIDR blocks, within a budget of EC2 calls per action, and answer
    /// agents (`agent --hub`) from that cache on `POST /v1/catalog`. Region and credentials
    /// from the environment (AWS_REGION, IRSA, EKS Pod Identity); no instance metadata
    /// needed when AWS_REGION is set.
    ///
    /// Example: `sgpath hub --listen 0.0.0.0:9465`. Exits 0 on SIGTERM or Ctrl-C.
    Hub(HubArgs),
}

/// `sgpath hub`.
#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// Address and port of the HTTPS server (the Deployment sets 0.0.0.0:9465).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Log format on stdout: one JSON object per line, or text for a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// The EC2 endpoint. Default: AWS_ENDPOINT_URL_EC2, else AWS_ENDPOINT_URL, else the
    /// Region's in its partition (`https://ec2.<region>.amazonaws.com`, `.amazonaws.com.cn`
    /// in China...; AWS_USE_FIPS_ENDPOINT and AWS_USE_DUALSTACK_ENDPOINT honoured).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub ec2_endpoint: Option<String>,
    /// Instance metadata, asked only for what the environment does not give (the region
    /// without AWS_REGION, credentials without keys, IRSA or Pod Identity).
    #[arg(long, value_name = "URL", default_value = "http://169.254.169.254", value_parser = parse_endpoint)]
    pub imds_endpoint: String,
    #[command(flatten)]
    pub budget: Ec2BudgetArgs,
    /// How long the answer for an address (its ENI and groups, or that no ENI owns it) is
    /// served before it is read again; an address no agent asked about for this long is
    /// forgotten instead.
    /// (Default: `sgpath::hub::DEFAULT_ADDRESS_TTL`.)
    #[arg(long, default_value = "15m", value_parser = parse_address_ttl)]
    pub address_ttl: Duration,
    /// How often the groups' rules, their prefix lists and the VPC's CIDR blocks are read
    /// again (groups never read before are read at once).
    #[arg(long, default_value = "60s", value_parser = parse_ec2_refresh)]
    pub group_refresh: Duration,
    /// Who may use the front door (`/v1/fleet/report`, `/v1/agents/<node>/...`): as
    /// `agent --auth`; `kubernetes` reviews the bearer of `Authorization` or
    /// `X-Sgpath-Authorization` (the API server's services proxy drops the former), and
    /// gives catalogs only to `--agent-service-account`'s tokens.
    #[arg(long, value_enum, default_value_t = AuthMode::Kubernetes)]
    pub auth: AuthMode,
    /// The cluster to find the agents in (default: in-cluster). Without a cluster the front
    /// door answers 503 and the hub serves agents only.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The agents' namespace (the DaemonSet's).
    #[arg(long, default_value = "sgpath", value_name = "NS")]
    pub agent_namespace: String,
    /// The agents' ServiceAccount: with `--auth kubernetes`, only its tokens (audience
    /// `sgpath`, checked against the cluster issuer's published keys) get catalogs.
    #[arg(long, default_value = "sgpath", value_name = "NAME")]
    pub agent_service_account: String,
    /// The agents' pods: the DaemonSet's label selector.
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=sgpath,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,
    /// The agents' port (the DaemonSet's `--listen`).
    #[arg(long, default_value_t = 9464)]
    pub agent_port: u16,
    /// Ask the agents over plain HTTP (agents run with `--no-tls`); default HTTPS, their
    /// self-signed certificates accepted (the bearer token is what they check).
    #[arg(long)]
    pub agent_plain_http: bool,
    /// The hub's token for the agents (a projected ServiceAccount token, read at every
    /// request as the kubelet rotates it); "" sends none (agents with `--auth none`).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/run/secrets/sgpath/token"
    )]
    pub agent_token_file: PathBuf,
    /// Agents asked at once by a fleet query.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub fleet_concurrency: u16,
    /// Time each agent has to answer a fleet query.
    #[arg(long, default_value = "5s", value_parser = parse_fleet_timeout)]
    pub fleet_timeout: Duration,
    /// How long a fleet answer is served before the agents are asked again.
    #[arg(long, default_value = "10s", value_parser = parse_fleet_max_age)]
    pub fleet_max_age: Duration,
}

/// `hub --fleet-timeout`: 100 ms to 1 min.
fn parse_fleet_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_millis(100), Duration::from_secs(60))
}

/// `hub --fleet-max-age`: 1 s to 10 min.
fn parse_fleet_max_age(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_secs(1), Duration::from_secs(600))
}

/// The budget of EC2 calls (a token bucket per API action), for `hub`, `agent --ec2` and
/// `trace --ec2`.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Ec2BudgetArgs {
    /// Sustained EC2 calls per second per API action (retries included). EC2's own bucket
    /// for describe calls refills 20 per second for the whole account and Region, shared with
    /// the VPC CNI and the VPC resource controller.
    #[arg(long, value_name = "N", default_value_t = sgpath::collect::aws::budget::DEFAULT_CALLS_PER_SECOND,
          value_parser = parse_calls_per_second)]
    pub ec2_calls_per_second: f64,
    /// EC2 calls per API action that may go at once after a quiet spell.
    #[arg(long, value_name = "N", default_value_t = sgpath::collect::aws::budget::DEFAULT_BURST,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub ec2_burst: u32,
}

impl Ec2BudgetArgs {
    pub fn limits(&self) -> sgpath::collect::aws::Limits {
        sgpath::collect::aws::Limits {
            per_second: self.ec2_calls_per_second,
            burst: self.ec2_burst,
        }
    }
}

/// `--ec2-calls-per-second`: above 0, at most 20 (EC2's refill for the whole account).
fn parse_calls_per_second(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 20.0 => Ok(n),
        Ok(_) => Err(format!("{s:?} is out of range: above 0, at most 20")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// `hub --address-ttl`: 10 s to a day.
fn parse_address_ttl(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_secs(10), Duration::from_secs(24 * 3600))
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Address and port of the HTTPS server (the DaemonSet sets the pod IP or 0.0.0.0).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Also serve `/healthz` and `/readyz`, and nothing else, in plain HTTP on this address,
    /// with connections of their own: the kubelet's probes (the DaemonSet: 127.0.0.1:9463,
    /// probes with `host: 127.0.0.1`, reachable only from the node) get through whatever
    /// floods `--listen`.
    #[arg(long, value_name = "ADDR")]
    pub probe_listen: Option<std::net::SocketAddr>,
    /// How often to log a summary (totals per path kind) and re-run the checks.
    #[arg(long, default_value = "60s", value_parser = parse_summary_interval)]
    pub summary_interval: Duration,
    /// Log format on stdout: one JSON object per line, or text for a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// As `observe --drop-source`.
    #[arg(long, value_enum, default_value_t = DropSourceArg::Auto)]
    pub drop_source: DropSourceArg,
    /// As `observe --header-read`.
    #[arg(long, value_enum, default_value_t = HeaderReadArg::Auto)]
    pub header_read: HeaderReadArg,
    #[command(flatten)]
    pub maps: MapSizeArgs,
    /// As `observe --syn-timeout`.
    #[arg(long, default_value = "3s", value_parser = parse_syn_timeout)]
    pub syn_timeout: Duration,
    /// The span a finding from counts is judged over: raised while the last window holds
    /// evidence (unanswered SYNs, path drops, spoofed packets...), cleared (`finding-cleared`)
    /// once a whole window passes without any. The checks re-run every tenth of it.
    #[arg(long, default_value = "5m", value_parser = parse_window)]
    pub window: Duration,
    /// The VPC CNI config to read.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
    /// A file holding a bearer token: requests other than `/healthz` and `/readyz` must send
    /// `Authorization: Bearer <token>` (`--auth token`, implied by this flag). For a node
    /// outside a cluster.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Who may read `/metrics`, `/v1/report` and `/v1/trace` (`/healthz` and `/readyz` stay
    /// open). Default: `token` with `--token-file`, else `none`, which only a loopback
    /// `--listen` may use.
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth: Option<AuthMode>,
    /// How long a built report (JSON and metrics) is served to later requests before the
    /// next one builds a new one. Requests that come while one is built share it; `0` builds
    /// one for every request that comes after the last build started.
    #[arg(long, default_value = "1s", value_parser = parse_report_max_age)]
    pub report_max_age: Duration,
    /// Watch the cluster through this kubeconfig (its current context). Without it, the
    /// agent uses the in-cluster config when KUBERNETES_SERVICE_HOST is set (a pod's service
    /// account), and runs without a cluster otherwise: paths are then not named after pods
    /// and the Kubernetes findings stay silent. Reads pods on this node, SecurityGroupPolicies,
    /// ServiceAccounts, Services, this Node and the aws-node DaemonSet; an API server that does
    /// not answer is retried with backoff while everything else works.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, to watch only its pods (`spec.nodeName`). Default: the NODE_NAME
    /// environment variable (the DaemonSet sets it from the downward API), else the hostname.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The VPC CNI's IPAMD introspection endpoint: which node ENI (id) holds which pod
    /// address, and which one is the trunk. Not answering is normal off EKS; "" disables it.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:61679")]
    pub ipamd_url: String,
    #[command(flatten)]
    pub ec2: Ec2Args,
    /// Get the security groups' rules from `sgpath hub` at this URL (the cluster's one
    /// reader of EC2, e.g. `https://sgpath-hub.kube-system.svc:9465`) instead of reading EC2:
    /// the agent sends the addresses it needs (its pods', CoreDNS's, its node's, the far
    /// ends of its unanswered flows) and judges with the answer; addresses the hub has not
    /// read yet stay unverified. An unreachable hub is an `ec2-unavailable` naming it.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint, conflicts_with = "ec2")]
    pub hub: Option<String>,
    /// The token the agent shows the hub (a projected ServiceAccount token with audience
    /// `sgpath`, read at every request; the DaemonSet mounts one). Without it, a hub running
    /// `--auth kubernetes` answers 401.
    #[arg(long, value_name = "FILE", requires = "hub")]
    pub hub_token_file: Option<std::path::PathBuf>,
    /// How long rules read from EC2 (`--ec2`) or the hub (`--hub`) are used before they are
    /// read again; a change of the cluster's pods re-reads them sooner.
    #[arg(long, default_value = "60s", value_parser = parse_ec2_refresh)]
    pub ec2_refresh: Duration,
}

/// Reading the security groups' rules from AWS (`agent`, `trace`).
#[derive(Clone, Debug, clap::Args)]
pub struct Ec2Args {
    /// Read the security groups' rules from AWS and judge flows with them: instance
    /// metadata gives the node ENIs' groups, EC2 (DescribeNetworkInterfaces,
    /// DescribeSecurityGroups, GetManagedPrefixListEntries; read-only IAM in deploy/README.md)
    /// the branch pods' and CoreDNS's. Credentials from the standard chain (environment,
    /// IRSA, EKS Pod Identity, the instance role). Without them one `ec2-unavailable` finding
    /// says why and everything else works as without this flag.
    #[arg(long)]
    pub ec2: bool,
    /// The EC2 endpoint (with `--ec2`). Default: AWS_ENDPOINT_URL_EC2, else AWS_ENDPOINT_URL,
    /// else the Region's in its partition (AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT
    /// honoured).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub ec2_endpoint: Option<String>,
    /// Instance metadata (with `--ec2`).
    #[arg(long, value_name = "URL", default_value = "http://169.254.169.254", value_parser = parse_endpoint)]
    pub imds_endpoint: String,
    #[command(flatten)]
    pub budget: Ec2BudgetArgs,
}

impl Ec2Args {
    /// Where to read from: these endpoints, the region and credentials from the
    /// environment's standard chain, within the budget.
    pub fn config(&self) -> sgpath::collect::aws::AwsConfig {
        let mut c = sgpath::collect::aws::AwsConfig::from_env(
            self.ec2_endpoint.clone(),
            Some(self.imds_endpoint.clone()),
        );
        c.limits = self.budget.limits();
        c
    }
}

/// `http://host[:port]` or `https://...`.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{s:?} names no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// `--ec2-refresh`: 10 s (EC2 throttles callers that poll harder) to a day.
fn parse_ec2_refresh(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_secs(10), Duration::from_secs(24 * 3600))
}

/// HTTPS of a server (`agent`, `hub`): a certificate from files, else a self-signed one.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// The server's certificate chain, PEM, leaf first (e.g. a `kubernetes.io/tls` Secret's
    /// `tls.crt`, read at start). Default: a self-signed ECDSA certificate made at start for
    /// `localhost` and the `--listen` address.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "no_tls"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead: only on a loopback `--listen` (tests, or a proxy in front on
    /// the same host).
    #[arg(long)]
    pub no_tls: bool,
}

impl TlsArgs {
    pub fn source(&self) -> sgpath::tls::Source {
        match (&self.tls_cert, &self.tls_key) {
            _ if self.no_tls => sgpath::tls::Source::Plain,
            (Some(cert), Some(key)) => sgpath::tls::Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => sgpath::tls::Source::SelfSigned,
        }
    }
}

/// `agent --auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every endpoint open: only on a loopback `--listen`.
    None,
    /// The bearer token of `--token-file`.
    Token,
    /// The cluster decides, as kube-rbac-proxy does: the bearer token, a JWT for the
    /// audience `sgpath` living at most 15 min (a projected ServiceAccount token, or
    /// `kubectl create token --audience sgpath`), is verified with a TokenReview for that
    /// audience and the user must be allowed `get` on the request's path (a
    /// SubjectAccessReview with nonResourceAttributes), e.g. by a ClusterRole with
    /// `nonResourceURLs: ["/metrics"]`. Answers are cached (allowed 60 s, refused 10 s);
    /// reviews beyond 2 per second (burst 10) or 4 at once are answered 503 with
    /// Retry-After. Needs a cluster (`--kubeconfig` or in-cluster) and create on
    /// tokenreviews and subjectaccessreviews.
    Kubernetes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// tracing's JSON lines, fields flattened (`kubectl logs ... | jq`).
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// How long to count: `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_observe_duration)]
    pub duration: Duration,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Name drops by the kernel's drop reason (5.17+) or by the kernel function that freed
    /// the packet; `auto` takes reasons where the kernel has them.
    #[arg(long, value_enum, default_value_t = DropSourceArg::Auto)]
    pub drop_source: DropSourceArg,
    /// How the probes read packet headers: `auto` takes BTF-typed loads where the kernel
    /// has them (6.2+) and one helper read elsewhere; `probe` takes the helper read on
    /// every kernel (what 5.10 and 6.1 run; a way around a kernel that misbehaves).
    #[arg(long, value_enum, default_value_t = HeaderReadArg::Auto)]
    pub header_read: HeaderReadArg,
    #[command(flatten)]
    pub maps: MapSizeArgs,
    /// How long a SYN or DNS query that left a path waits for its answer before it counts
    /// as unanswered.
    #[arg(long, default_value = "3s", value_parser = parse_syn_timeout)]
    pub syn_timeout: Duration,
    /// The VPC CNI config to read.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
    /// As `agent --kubeconfig`: name the paths after their pods with what the watches
    /// have by the end of the count (in-cluster config when KUBERNETES_SERVICE_HOST is set).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// As `agent --node-name`.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

/// Sizes of the probes' maps that grow with the node (`agent` and `observe`).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct MapSizeArgs {
    /// How many pod paths the probes count at most (POD_PATHS, PATH_COUNTERS: 32 bytes per
    /// path per CPU). A path beyond it is still inspected and checked, and raises
    /// `probe-map-full`.
    #[arg(long, default_value_t = sgpath_ebpf::MAX_PATHS,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_paths: u32,
    /// How many connections (SYNs, DNS queries) awaiting an answer are tracked at most.
    #[arg(long, default_value_t = sgpath_ebpf::MAX_CONNS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_conns: u32,
    /// How many distinct (path, direction, namespace, reason, location) drop counters exist
    /// at most (per CPU).
    #[arg(long, default_value_t = sgpath_ebpf::MAX_DROP_KEYS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_drop_keys: u32,
}

impl MapSizeArgs {
    pub fn sizes(&self) -> sgpath::ebpf::paths::MapSizes {
        sgpath::ebpf::paths::MapSizes {
            paths: self.max_paths,
            conns: self.max_conns,
            drop_keys: self.max_drop_keys,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HeaderReadArg {
    Auto,
    Probe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DropSourceArg {
    Auto,
    Reason,
    Location,
}

/// `10s`, `500ms`, `2m`, or plain seconds, within `min..=max` (a zero interval would spin
/// or panic a timer; a huge one overflows the clock arithmetic).
fn parse_duration(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s, 500ms or 2m"))?;
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    match d {
        Some(d) if (min..=max).contains(&d) => Ok(d),
        _ => Err(format!(
            "{s:?} is out of range: from {} to {}",
            show(min),
            show(max)
        )),
    }
}

/// A bound as a user would write it.
fn show(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// `agent --summary-interval`: 1 s to 24 h.
fn parse_summary_interval(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_secs(1), Duration::from_secs(24 * 3600))
}

/// `--window`: 1 s (tests) to 24 h.
fn parse_window(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_secs(1), Duration::from_secs(24 * 3600))
}

/// `agent --report-max-age`: 0 to 1 min.
fn parse_report_max_age(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::ZERO, Duration::from_secs(60))
}

/// `--syn-timeout`: 100 ms (well above a round trip in a VPC) to 5 min.
fn parse_syn_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s, Duration::from_millis(100), Duration::from_secs(300))
}

/// `observe --duration`: 1 ms to 30 days.
fn parse_observe_duration(s: &str) -> Result<Duration, String> {
    parse_duration(
        s,
        Duration::from_millis(1),
        Duration::from_secs(30 * 24 * 3600),
    )
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The pod: its IP, or its host veth (`vlan<hash>`, `eni<hash>`).
    #[arg(long)]
    pub from: String,
    /// Destination: `<ip>` or `<ip>:<port>` (`[<ipv6>]:<port>`).
    #[arg(long)]
    pub to: String,
    /// Transport protocol (selects rules with `ipproto` and `dport`).
    #[arg(long, value_enum, default_value_t = TraceProto::Tcp)]
    pub proto: TraceProto,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The VPC CNI config to read.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
    /// Also judge the flow with the security groups' rules read from AWS: the sender's
    /// egress rules and, for a destination that is an ENI in the VPC, its ingress rules;
    /// names the admitting group and rule, or the missing rule and the command that adds
    /// it. Needs `--to <ip>:<port>`.
    #[command(flatten)]
    pub ec2: Ec2Args,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceProto {
    Tcp,
    Udp,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The VPC CNI config to read (podSGEnforcingMode, vethPrefix, mtu). A missing file is normal.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
    /// Where to read sysctls from (the node's /proc/sys).
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for a terminal.
    Text,
    /// One JSON document (schema sgpath.report/v1).
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub's `--address-ttl` default is the one the fleet simulation (and
    /// BENCHMARKS.md) measured.
    #[test]
    fn the_hubs_address_ttl_default_is_the_simulated_one() {
        let cli = Cli::try_parse_from(["sgpath", "hub"]).unwrap();
        let Command::Hub(hub) = cli.command else {
            panic!("not hub");
        };
        assert_eq!(hub.address_ttl, sgpath::hub::DEFAULT_ADDRESS_TTL);
    }

    #[test]
    fn durations_are_bounded_and_never_overflow() {
        assert_eq!(parse_syn_timeout("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_syn_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_summary_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_observe_duration("7"), Ok(Duration::from_secs(7)));
        for (parse, bad) in [
            (
                parse_summary_interval as fn(&str) -> Result<Duration, String>,
                "0s",
            ),
            (parse_summary_interval, "0"),
            (parse_syn_timeout, "0"),
            (parse_syn_timeout, "99ms"),
            (parse_window, "0s"),
            (parse_window, "1441m"),
            (parse_observe_duration, "0ms"),
            (parse_observe_duration, "18446744073709551615m"),
            (parse_summary_interval, "307445734561825861m"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("out of range"), "{bad}: {err}");
        }
        assert!(
            parse_syn_timeout("3h")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_syn_timeout("s")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    /// Issue 29: README's synopses had drifted from the binary (`--window`, `--auth`,
    /// `--ec2*`, `--report-max-age` missing; 32 bytes per path where the map holds 56).
    /// Every subcommand's synopsis lists exactly its visible long flags, and the per-CPU
    /// cost of a path is the shared type's size.
    #[test]
    fn readme_synopses_match_the_cli() {
        use clap::CommandFactory;
        use std::collections::BTreeSet;
        let readme = include_str!("../../README.md");
        let start = readme
            .find("## Commands\n\n```sh\n")
            .expect("README has a Commands block");
        let block = &readme[start..];
        let block = &block[block.find("```sh\n").unwrap() + 6..];
        let block = &block[..block.find("```").unwrap()];
        let mut documented: std::collections::BTreeMap<String, BTreeSet<String>> =
            Default::default();
        let mut current = String::new();
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("sgpath ") {
                current = rest.split_whitespace().next().unwrap().to_owned();
            }
            let flags = documented.entry(current.clone()).or_default();
            for (i, _) in line.match_indices("--") {
                let flag: String = line[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(flag);
            }
        }
        let cli = Cli::command();
        let subs: BTreeSet<String> = cli
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(
            documented.keys().cloned().collect::<BTreeSet<_>>(),
            subs,
            "README's synopses name other subcommands than the binary has"
        );
        for sub in cli.get_subcommands() {
            let flags: BTreeSet<String> = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help" && *l != "version")
                .map(str::to_owned)
                .collect();
            assert_eq!(
                documented[sub.get_name()],
                flags,
                "README's synopsis of `sgpath {}` differs from its flags",
                sub.get_name()
            );
        }
        let size = std::mem::size_of::<sgpath_ebpf::PathCounters>();
        assert!(
            readme.contains(&format!("(paths cost {size} bytes per CPU each)")),
            "README must say a path costs {size} bytes per CPU"
        );
    }
}
