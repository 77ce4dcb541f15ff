//! `kubectl sgpath`: every node's sgpath agent, asked from wherever `kubectl` works. Copy
//! this binary onto PATH as `kubectl-sgpath` and kubectl runs it for `kubectl sgpath ...`.
//!
//! Exit status: 0 nothing of severity warning or error and every agent answered; 1
//! findings of severity warning or error, an agent that did not answer, or a trace that
//! does not work; 2 the plugin could not do its job (bad flag, no cluster, no such pod).

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sgpath::plugin::{self, Fleet, Output, Scope, doc::Severity, fleet::Limits, proxy};

/// Which pods, on which nodes, on which security-group path, and why: the answers of every
/// node's sgpath agent, through the API server's services proxy to `sgpath hub`, which asks
/// the agents (one request for the whole fleet; no route to the nodes needed).
///
/// RBAC (deploy/agent/user-rbac.yaml): get services/proxy on the hub's Service only, create
/// serviceaccounts/token for `sgpath-client` (the hub's namespace), list nodes, get pods
/// (for `pod` and `trace`). No pods/proxy.
#[derive(Debug, Parser)]
#[command(name = "kubectl-sgpath", bin_name = "kubectl sgpath", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The kubeconfig to use (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The namespace of the pods asked about (default: the context's).
    #[arg(long, short = 'n', global = true, value_name = "NS")]
    namespace: Option<String>,
    /// Every namespace (`findings`).
    #[arg(long, short = 'A', global = true, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Output: an aligned table, a wider one, or one JSON document.
    #[arg(long, short, global = true, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
    /// How to reach the agents: through `sgpath hub` (the services proxy, one request), or
    /// each agent through the pods proxy (debugging; needs `get pods/proxy`, which deploy/
    /// grants nobody).
    #[arg(long, global = true, value_enum, default_value_t = ViaArg::Hub)]
    via: ViaArg,
    /// The hub's Service, as the services proxy names it: `<scheme>:<name>:<port>`.
    #[arg(
        long,
        global = true,
        default_value = "https:sgpath-hub:9465",
        value_name = "SCHEME:NAME:PORT"
    )]
    hub_service: String,
    /// sgpath's namespace: the hub, the agents, `sgpath-client`.
    #[arg(long, global = true, default_value = "sgpath", value_name = "NS")]
    agent_namespace: String,
    /// The agents' pods: the DaemonSet's label selector.
    #[arg(long, global = true, default_value = "app.kubernetes.io/name=sgpath")]
    selector: String,
    /// The agents' port (the DaemonSet's `--listen`).
    #[arg(long, global = true, default_value_t = 9464)]
    port: u16,
    /// The ServiceAccount whose short-lived token the agents check (`--auth kubernetes`);
    /// "" sends none (agents with `--auth none`).
    #[arg(
        long,
        global = true,
        default_value = "sgpath-client",
        value_name = "NAME"
    )]
    client_service_account: String,
    /// Agents asked at once.
    #[arg(long, global = true, default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Time each node has to answer; a node that does not is a row saying so.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every node with its agent's state (ready, degraded, refused, timeout, unreachable,
    /// garbage, absent), its enforcing mode, paths by kind and findings by severity.
    Nodes,
    /// Every raised finding in the cluster, worst first, with node, pod and remediation
    /// (`-A` for every namespace and the node-wide findings).
    Findings {
        /// Only findings of this severity or worse.
        #[arg(long, value_enum, default_value_t = SeverityArg::Info)]
        severity: SeverityArg,
    },
    /// One pod's story: its node and path (kind, VLAN, ENI, groups), its counters over the
    /// agent's window and its findings.
    Pod {
        /// The pod's name (in `-n`).
        name: String,
    },
    /// Run `sgpath trace` on the pod's node: which rule, table, route and interface its
    /// packet to `--to` takes, and whether the answer comes back.
    Trace {
        /// The pod's name (in `-n`).
        pod: String,
        /// Destination: `<ip>` or `<ip>:<port>` (`[<ipv6>]:<port>`).
        #[arg(long, value_name = "IP[:PORT]")]
        to: String,
        /// Transport protocol.
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ViaArg {
    Hub,
    PodsProxy,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputArg {
    Table,
    Wide,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SeverityArg {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

/// `5s`, `500ms`: 100 ms to 5 min.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 5s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&d) {
        return Err(format!("{s:?} is out of range: from 100ms to 5m"));
    }
    Ok(d)
}

/// `https:sgpath-hub:9465` into the hub's proxy client.
///
/// # Errors
/// Not `<http|https>:<name>:<port>`.
fn hub_of(
    service: &str,
    namespace: &str,
    client: &kube::Client,
) -> anyhow::Result<proxy::HubProxy> {
    let bad = || {
        anyhow::anyhow!(
            "--hub-service {service:?}: expected <http|https>:<service>:<port>, e.g. https:sgpath-hub:9465"
        )
    };
    let mut parts = service.split(':');
    let (Some(scheme), Some(name), Some(port), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !matches!(scheme, "http" | "https") || name.is_empty() {
        return Err(bad());
    }
    let port = port.parse().map_err(|_| bad())?;
    Ok(proxy::HubProxy {
        client: client.clone(),
        namespace: namespace.to_owned(),
        service: name.to_owned(),
        scheme: scheme.to_owned(),
        port,
        token: None,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-sgpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kubectl-sgpath: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let output = match cli.output {
        OutputArg::Table => Output::Table,
        OutputArg::Wide => Output::Wide,
        OutputArg::Json => Output::Json,
    };
    let (client, proxy_client, default_ns) =
        proxy::connect(cli.kubeconfig.clone(), cli.context.clone()).await?;
    let namespace = cli.namespace.clone().unwrap_or(default_ns);
    let hub = match cli.via {
        ViaArg::Hub => Some(hub_of(
            &cli.hub_service,
            &cli.agent_namespace,
            &proxy_client,
        )?),
        ViaArg::PodsProxy => None,
    };
    let agents = match cli.via {
        ViaArg::Hub => Vec::new(),
        ViaArg::PodsProxy => proxy::agents(&client, &cli.agent_namespace, &cli.selector).await?,
    };
    let token = if cli.client_service_account.is_empty() {
        None
    } else {
        match proxy::client_token(&client, &cli.agent_namespace, &cli.client_service_account).await
        {
            Ok(t) => Some(t),
            Err(e) => {
                // Agents with `--auth none` need none; the others answer 401, which says so.
                eprintln!(
                    "kubectl-sgpath: warning: no token of ServiceAccount {}/{} for the agents: {e}",
                    cli.agent_namespace, cli.client_service_account
                );
                None
            }
        }
    };
    let limits = Limits {
        concurrency: usize::from(cli.concurrency),
        per_node: cli.timeout,
    };
    let fleet = match hub {
        Some(mut hub) => {
            hub.token = token;
            let hub = Arc::new(hub);
            // The hub asks every agent within its own timeout: give it the whole fan-out's.
            Fleet {
                transport: hub.clone(),
                agents,
                limits: Limits {
                    per_node: cli.timeout * 6,
                    ..limits
                },
                hub: Some(hub),
            }
        }
        None => Fleet {
            transport: Arc::new(proxy::PodsProxy {
                client: proxy_client,
                port: cli.port,
                token,
            }),
            agents,
            limits,
            hub: None,
        },
    };
    let outcome = match cli.command {
        Command::Nodes => {
            let all = match proxy::nodes(&client).await {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!(
                        "kubectl-sgpath: warning: cannot list nodes ({e}): nodes without an agent are not shown"
                    );
                    None
                }
            };
            plugin::nodes(&fleet, all, output).await?
        }
        Command::Findings { severity } => {
            let min = match severity {
                SeverityArg::Info => Severity::Info,
                SeverityArg::Warning => Severity::Warning,
                SeverityArg::Error => Severity::Error,
            };
            let scope = if cli.all_namespaces {
                Scope::All
            } else {
                Scope::Namespace(namespace)
            };
            plugin::findings(&fleet, min, &scope, output).await?
        }
        Command::Pod { name } => {
            let (node, ip) = proxy::pod(&client, &namespace, &name).await?;
            plugin::pod(&fleet, &format!("{namespace}/{name}"), node, ip, output).await?
        }
        Command::Trace { pod, to, proto } => {
            let (node, ip) = proxy::pod(&client, &namespace, &pod).await?;
            let proto = match proto {
                ProtoArg::Tcp => "tcp",
                ProtoArg::Udp => "udp",
            };
            plugin::trace(
                &fleet,
                &format!("{namespace}/{pod}"),
                node,
                ip,
                &to,
                proto,
                output,
            )
            .await
            .context("trace")?
        }
    };
    use std::io::Write;
    match std::io::stdout()
        .lock()
        .write_all(outcome.stdout.as_bytes())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(outcome.code)
}
