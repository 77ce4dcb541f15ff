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
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))?;
        tracing::info!(event = "listening", address = %args.listen, scheme = transport.scheme(),
            calls_per_second = args.budget.ec2_calls_per_second, burst = args.budget.ec2_burst,
            "sgpath hub listening");
        sgpath::hub::run(config, transport, listener, async {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await?;
        tracing::info!(event = "stopped", "stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
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
