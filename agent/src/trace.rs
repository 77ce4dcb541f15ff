//! `sgpath trace`: read the node, then ask the kernel hop by hop where a pod's packet and
//! its answer go (`ip route get ... iif ... from ...`), and explain it. Side effects:
//! netlink reads only; nothing is sent on the wire.

use std::{net::IpAddr, process::ExitCode};

use sgpath::{
    collect::{self, route_get::Flow},
    model::{sg, trace},
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
    if args.ec2 && port.is_none() {
        anyhow::bail!("--ec2 judges a port: give --to as <ip>:<port>");
    }
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
    // The groups' verdict on the flow's first packet, when asked for.
    let sg = match (args.ec2, from.pod_ip, port) {
        (true, Some(src), Some(port)) => {
            let flow = match proto {
                trace::Proto::Tcp => sg::Flow::tcp(src, to, port),
                trace::Proto::Udp => sg::Flow::udp(src, to, port),
            };
            let config = collect::aws::AwsConfig::from_env(
                args.ec2_endpoint.clone(),
                Some(args.imds_endpoint.clone()),
            );
            let verdict = rt.block_on(async {
                let mut aws = collect::aws::Aws::new(config)?;
                aws.read(&[src, to].into()).await
            });
            let verdict = match verdict {
                Ok(sg::Rules::Fresh { catalog, .. }) => Ok(catalog.judge(&flow)),
                Ok(sg::Rules::Unavailable { reason }) => Err(reason),
                Err(e) => Err(e.to_string()),
            };
            Some((flow, verdict))
        }
        _ => None,
    };
    let text = match (args.output, &sg) {
        (Output::Json, None) => serde_json::to_string_pretty(&t)? + "\n",
        (Output::Json, Some((flow, verdict))) => {
            let verdict = match verdict {
                Ok(v) => serde_json::to_value(v)?,
                Err(reason) => serde_json::json!({ "verdict": "unknown", "reason": reason }),
            };
            serde_json::to_string_pretty(&serde_json::json!({
                "trace": t,
                "security_groups": { "flow": flow, "verdict": verdict },
            }))? + "\n"
        }
        (Output::Text, None) => report::trace::render(&t),
        (Output::Text, Some((flow, verdict))) => {
            report::trace::render(&t) + &report::trace::render_security_groups(flow, verdict)
        }
    };
    crate::write_stdout(&text)?;
    let denied = matches!(&sg, Some((_, Ok(sg::Verdict::Denied(_)))));
    Ok(if t.works && !denied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
