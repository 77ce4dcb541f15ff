//! The `sgpath` binary: parse the command line, run one command, map the outcome to an
//! exit status (0 healthy, 1 findings, 2 sgpath's own error).

mod agent;
mod cli;
mod observe;
mod session;
mod trace;

use std::process::ExitCode;

use clap::Parser;
use sgpath::{checks, collect, report};

use cli::{Cli, Command, InspectArgs, Output};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sgpath: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => inspect(args),
        Command::Trace(args) => trace::run(args),
        Command::Observe(args) => observe::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Hub(args) => hub(args),
    }
}

/// `sgpath hub` until SIGTERM or Ctrl-C (see `sgpath::hub`).
fn hub(args: cli::HubArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    agent::init_logs(args.log_format);
    let mut aws = collect::aws::AwsConfig::from_env(
        args.ec2_endpoint.clone(),
        Some(args.imds_endpoint.clone()),
    );
    aws.limits = args.budget.limits();
    let config = sgpath::hub::Config {
        aws,
        address_ttl: args.address_ttl,
        group_refresh: args.group_refresh,
    };
    runtime()?.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let transport = sgpath::tls::Transport::new(&args.tls.source(), args.listen)?;
        let (front, gate, catalog_gate) = hub_front(&args).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        tracing::info!(event = "listening", address = %args.listen, scheme = transport.scheme(),
            calls_per_second = args.budget.ec2_calls_per_second, burst = args.budget.ec2_burst,
            front_door = front.is_some(), "sgpath hub listening");
        sgpath::hub::run(
            config,
            transport,
            front,
            gate,
            catalog_gate,
            listener,
            async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            },
        )
        .await?;
        tracing::info!(event = "stopped", "stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// The hub's front door (the agents, found by listing the DaemonSet's pods, asked with the
/// hub's token), its gate (`--auth`), and the catalogs' gate (`--auth kubernetes`: the
/// agents' ServiceAccount tokens). Without a cluster there is no front door: the hub
/// still serves the agents' catalogs, to anyone.
///
/// # Errors
/// `--kubeconfig` unreadable, or `--auth kubernetes` without a cluster to ask.
async fn hub_front(
    args: &cli::HubArgs,
) -> anyhow::Result<(
    Option<sgpath::hub::front::Front>,
    std::sync::Arc<dyn sgpath::hub::front::Gate>,
    sgpath::hub::CatalogGate,
)> {
    use anyhow::Context;
    use sgpath::hub::front;
    use std::sync::Arc;
    let client = collect::kube::client(args.kubeconfig.as_deref())
        .await
        .context("--kubeconfig")?;
    let gate: Arc<dyn front::Gate> = match (args.auth, &client) {
        (cli::AuthMode::None, _) if args.listen.ip().is_loopback() => Arc::new(front::Open),
        (cli::AuthMode::None, _) => anyhow::bail!(
            "--auth none would give catalogs and the fleet's reports to anyone who reaches \
             --listen {}: use --auth kubernetes, or a loopback --listen",
            args.listen
        ),
        (cli::AuthMode::Kubernetes, Some(c)) => Arc::new(HubGate(sgpath::auth::Auth::Kubernetes(
            sgpath::auth::Reviewer::new(c.clone()),
        ))),
        (cli::AuthMode::Kubernetes, None) => {
            // No cluster, no front door: nothing to guard (catalogs stay open to agents).
            Arc::new(front::Open)
        }
        (cli::AuthMode::Token, _) => anyhow::bail!("hub --auth: none or kubernetes"),
    };
    let Some(client) = client else {
        tracing::warn!(
            event = "no-front-door",
            "no cluster (--kubeconfig, or in-cluster): /v1/fleet and /v1/agents answer 503, \
             and /v1/catalog is open (no issuer keys to check the agents' tokens by)"
        );
        return Ok((None, gate, sgpath::hub::CatalogGate::Open));
    };
    let catalog_gate = match args.auth {
        cli::AuthMode::Kubernetes => sgpath::hub::CatalogGate::Agents {
            keys: Box::new(sgpath::auth::issuer::IssuerKeys::new(client.clone())),
            subjects: vec![format!(
                "system:serviceaccount:{}:{}",
                args.agent_namespace, args.agent_service_account
            )],
        },
        _ => sgpath::hub::CatalogGate::Open,
    };
    let token = args.agent_token_file.clone();
    let token = (!token.as_os_str().is_empty()).then_some(token);
    let front = front::Front::new(
        Arc::new(front::KubeDirectory {
            client,
            namespace: args.agent_namespace.clone(),
            selector: args.agent_selector.clone(),
        }),
        Arc::new(front::DirectAgents::new(
            args.agent_port,
            token,
            !args.agent_plain_http,
        )),
        sgpath::plugin::fleet::Limits {
            concurrency: usize::from(args.fleet_concurrency),
            per_node: args.fleet_timeout,
        },
        args.fleet_max_age,
    );
    Ok((Some(front), gate, catalog_gate))
}

/// The agent's `--auth kubernetes` check (TokenReview + SubjectAccessReview on the path),
/// guarding the hub's front door.
struct HubGate(sgpath::auth::Auth);

impl sgpath::hub::front::Gate for HubGate {
    fn check<'a>(
        &'a self,
        authorization: Option<&'a [u8]>,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), (u16, String)>> {
        Box::pin(async move {
            use sgpath::auth::Verdict;
            match self.0.check(authorization, path).await {
                Verdict::Allowed => Ok(()),
                Verdict::Unauthenticated(why) => Err((401, why)),
                Verdict::Forbidden(why) => Err((403, why)),
                Verdict::Unavailable(why) => Err((503, why)),
                Verdict::Throttled => Err((
                    503,
                    "too many token reviews: try again in a second".to_owned(),
                )),
            }
        })
    }
}

/// Hands the heap's freed pages back to the kernel (glibc keeps them otherwise): after the
/// BTF parses at attach time the agent's RSS is 20 MiB lower. musl returns them by itself.
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let sources = collect::Sources {
        cni_config: args.cni_config,
        proc_sys: args.proc_sys,
        ..Default::default()
    };
    let (node, topo) = runtime()?.block_on(collect::node_with_topology(&sources))?;
    for w in &node.read_warnings {
        eprintln!("sgpath: warning: {w}");
    }
    let findings = checks::run(&node, &topo);
    let report = report::Report::new(&node, &topo, findings);
    let text = match args.output {
        Output::Json => report.to_json() + "\n",
        Output::Text => report::text::render(&report),
    };
    write_stdout(&text)?;
    Ok(match report.worst() {
        Some(checks::Severity::Warning | checks::Severity::Error) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// Print to stdout; a closed pipe (`sgpath inspect | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
