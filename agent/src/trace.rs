//! `sgpath trace`: read the node, then ask the kernel hop by hop where a pod's packet and
//! its answer go (`ip route get ... iif ... from ...`), and explain it. Side effects:
//! netlink reads only; nothing is sent on the wire.

use std::{net::IpAddr, process::ExitCode};

use sgpath::{
    collect::{self, route_get::Flow},
    model::trace,
    report,
};

use crate::cli::{Output, TraceArgs, TraceProto};

/// `--to`: `<ip>`, `<ip>:<port>` or `[<ipv6>]:<port>`.
fn parse_to(to: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(sa) = to.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    to.parse()
        .map(|ip| (ip, None))
        .map_err(|_| anyhow::anyhow!("--to {to:?} is not <ip>, <ip>:<port> or [<ipv6>]:<port>"))
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let (to, port) = parse_to(&args.to)?;
    let proto = match args.proto {
        TraceProto::Tcp => trace::Proto::Tcp,
        TraceProto::Udp => trace::Proto::Udp,
    };
    let sources = collect::Sources {
        cni_config: args.cni_config,
        ..Default::default()
    };
    let rt = crate::runtime()?;
    let (node, topo) = rt.block_on(collect::node_with_topology(&sources))?;
    // pod-ip-conflict: which veth the packets take is the very question, so no answer is
    // better than a guess.
    let conflict = |flag: &str, ip: IpAddr| -> anyhow::Result<()> {
        let holders: Vec<&str> = topo
            .paths
            .iter()
            .filter(|p| p.pod_ip == Some(ip))
            .map(|p| p.host_veth.as_str())
            .collect();
        if holders.len() > 1 {
            anyhow::bail!(
                "{flag} {ip}: {} host veths hold this IP ({}): pod-ip-conflict, one of them is \
                 stale; `sgpath inspect` names both, remove the stale one",
                holders.len(),
                holders.join(", ")
            );
        }
        Ok(())
    };
    conflict("--to", to)?;
    let from = match args.from.parse::<IpAddr>() {
        Ok(ip) => {
            conflict("--from", ip)?;
            topo.paths.iter().find(|p| p.pod_ip == Some(ip))
        }
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
        if known.is_empty() {
            anyhow::bail!(
                "--from {}: no pod with that IP or host veth on this node: it has no pod paths \
                 (no host veths with the CNI's prefixes)",
                args.from
            );
        }
        anyhow::bail!(
            "--from {}: no pod with that IP or host veth on this node; pods here: {}",
            args.from,
            known.join(", ")
        );
    };
    if from.pod_ip.is_none() {
        anyhow::bail!(
            "--from {}: the IP of the pod behind {} is unknown (no route, no rule and no readable pod namespace names it); pass its IP instead",
            args.from,
            from.host_veth
        );
    }
    let names = node
        .links
        .iter()
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    let req = trace::Request {
        from,
        to,
        proto,
        port,
    };
    let t = trace::run(&node, &topo, &req, |flow, dport| {
        let flow = Flow {
            src: flow.src,
            dst: flow.dst,
            iif: flow
                .iif
                .and_then(|name| node.link_by_name(name))
                .map(|l| l.ifindex),
            mark: None,
            ipproto: flow.ipproto,
            dport,
        };
        collect::route_get::lookup_all(&names, &[flow]).map(|mut a| a.remove(0))
    })?;
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&t)? + "\n",
        Output::Text => report::trace::render(&t),
    };
    crate::write_stdout(&text)?;
    Ok(if t.works {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
