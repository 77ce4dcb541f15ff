//! The `sgpath` binary: parse the command line, run one command, map the outcome to an
//! exit status (0 healthy, 1 findings, 2 sgpath's own error).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use sgpath::{
    checks, collect,
    collect::route_get::Flow,
    model::{Topology, trace},
    report,
};

use cli::{Cli, Command, InspectArgs, Output, TraceArgs, TraceProto};

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
        Command::Trace(args) => trace(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let sources = collect::Sources {
        cni_config: args.cni_config,
        proc_sys: args.proc_sys,
    };
    let node = runtime()?.block_on(collect::node(&sources))?;
    for w in &node.read_warnings {
        eprintln!("sgpath: warning: {w}");
    }
    let topo = Topology::from_node(&node);
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
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `--to`: `<ip>`, `<ip>:<port>` or `[<ipv6>]:<port>`.
fn parse_to(to: &str) -> anyhow::Result<(std::net::IpAddr, Option<u16>)> {
    if let Ok(sa) = to.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    to.parse()
        .map(|ip| (ip, None))
        .map_err(|_| anyhow::anyhow!("--to {to:?} is not <ip>, <ip>:<port> or [<ipv6>]:<port>"))
}

fn trace(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let (to, port) = parse_to(&args.to)?;
    let proto = match args.proto {
        TraceProto::Tcp => trace::Proto::Tcp,
        TraceProto::Udp => trace::Proto::Udp,
    };
    let sources = collect::Sources {
        cni_config: args.cni_config,
        ..Default::default()
    };
    let rt = runtime()?;
    let node = rt.block_on(collect::node(&sources))?;
    let topo = Topology::from_node(&node);
    let from = match args.from.parse::<std::net::IpAddr>() {
        Ok(ip) => topo.paths.iter().find(|p| p.pod_ip == Some(ip)),
        Err(_) => topo.path_of_veth(&args.from),
    };
    let Some(from) = from else {
        let known: Vec<String> = topo
            .paths
            .iter()
            .map(|p| {
                format!(
                    "{} ({})",
                    p.pod_ip.map_or("?".into(), |i| i.to_string()),
                    p.host_veth
                )
            })
            .collect();
        anyhow::bail!(
            "--from {}: no pod with that IP or host veth on this node; pods here: {}",
            args.from,
            known.join(", ")
        );
    };
    let ifindex = |name: &str| node.link_by_name(name).map(|l| l.ifindex);
    let names = node
        .links
        .iter()
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    let forward_flow = Flow {
        src: from.pod_ip,
        dst: to,
        iif: ifindex(&from.host_veth),
        mark: None,
        ipproto: Some(proto.number()),
        dport: port,
    };
    let forward_answer = rt
        .block_on(collect::route_get::lookup_all(
            &names,
            std::slice::from_ref(&forward_flow),
        ))?
        .remove(0);
    let forward = trace::leg(
        &node,
        &topo,
        Some(&from.host_veth),
        from.pod_ip,
        to,
        proto,
        &forward_answer,
    );
    let reply = match (trace::reply_ingress(&forward), from.pod_ip) {
        (Some(ingress), Some(pod_ip)) => {
            let flow = Flow {
                src: Some(to),
                dst: pod_ip,
                iif: ingress.as_deref().and_then(ifindex),
                mark: None,
                ipproto: Some(proto.number()),
                dport: None,
            };
            let answer = rt
                .block_on(collect::route_get::lookup_all(&names, &[flow]))?
                .remove(0);
            Some(trace::leg(
                &node,
                &topo,
                ingress.as_deref(),
                Some(to),
                pod_ip,
                proto,
                &answer,
            ))
        }
        _ => None,
    };
    let t = trace::explain(&node, &topo, from, to, proto, port, forward, reply);
    let works = t.forward.error.is_none()
        && t.same_path != Some(false)
        && !t.verdict.contains("never reaches");
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&t)? + "\n",
        Output::Text => report::trace::render(&t),
    };
    write_stdout(&text)?;
    Ok(if works {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
