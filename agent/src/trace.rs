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
    if args.ec2.ec2 && port.is_none() {
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
            match topo.paths.iter().find(|p| p.pod_ip == Some(ip)) {
                Some(p) => From::Pod(p),
                None => From::Address(ip),
            }
        }
        Err(_) => match topo.path_of_veth(&args.from) {
            Some(p) => From::Pod(p),
            None => anyhow::bail!(
                "--from {}: no pod with that host veth on this node, and not an IP address; {}",
                args.from,
                pods_here(&topo)
            ),
        },
    };
    let names = node
        .links
        .iter()
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    let kernel = |flow: &sgpath::model::fib::Flow<'_>, dport: Option<u16>| {
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
    };
    // The groups' verdict on the flow's first packet, when asked for and when a group sees
    // the flow at all.
    let judge =
        |src: IpAddr, deciders: trace::Deciders, why: &str| -> Option<(sg::Flow, Judgement)> {
            let port = port?;
            if !args.ec2.ec2 {
                return None;
            }
            let flow = match proto {
                trace::Proto::Tcp => sg::Flow::tcp(src, to, port),
                trace::Proto::Udp => sg::Flow::udp(src, to, port),
            };
            if deciders == trace::Deciders::None {
                return Some((flow, Judgement::NoGroup(why.to_string())));
            }
            let read = rt.block_on(async {
                let mut aws = collect::aws::Aws::new(args.ec2.config());
                aws.read(&[src, to].into()).await
            });
            let j = match read {
                Ok(sg::Rules::Fresh { catalog, .. }) => {
                    Judgement::Judged(Box::new(catalog.judge(&flow)))
                }
                Ok(sg::Rules::Unavailable { reason }) => Judgement::Unknown(reason),
                Err(e) => Judgement::Unknown(e.to_string()),
            };
            Some((flow, j))
        };
    let (text, works, sg) = match from {
        From::Pod(from) => {
            let Some(src) = from.pod_ip else {
                anyhow::bail!(
                    "--from {}: the IP of the pod behind {} is unknown (no route, no rule and no readable pod namespace names it); pass its IP instead",
                    args.from,
                    from.host_veth
                );
            };
            let req = trace::Request {
                from,
                to,
                proto,
                port,
            };
            let t = trace::run(&node, &topo, &req, kernel)?;
            let sg = judge(src, t.security_groups, &t.decided_by);
            let text = match args.output {
                Output::Json => json(&t, sg.as_ref())?,
                Output::Text => report::trace::render(&t) + &sg_text(sg.as_ref()),
            };
            (text, t.works, sg)
        }
        From::Address(src) => {
            let Some(pod) = topo.paths.iter().find(|p| p.pod_ip == Some(to)) else {
                anyhow::bail!(
                    "--from {src} is no pod on this node, so --to must be one (a request from \
                     {src} to a pod here); {}",
                    pods_here(&topo)
                );
            };
            let t = trace::inbound(&node, &topo, src, pod, proto, port, kernel)?;
            let sg = judge(src, t.security_groups, &t.decided_by);
            let text = match args.output {
                Output::Json => json(&t, sg.as_ref())?,
                Output::Text => report::trace::render_inbound(&t) + &sg_text(sg.as_ref()),
            };
            (text, t.works, sg)
        }
    };
    crate::write_stdout(&text)?;
    let denied = matches!(&sg, Some((_, Judgement::Judged(v))) if !v.is_allowed());
    Ok(if works && !denied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Who `--from` is.
enum From<'a> {
    /// A pod on this node: the request leaves by its host veth.
    Pod(&'a sgpath::model::Path),
    /// Any other address: the request comes to a pod here from outside it.
    Address(IpAddr),
}

/// "pods here: <ip> (<veth>), ..." for errors.
fn pods_here(topo: &sgpath::model::Topology) -> String {
    if topo.paths.is_empty() {
        return "this node has no pod paths (no host veths with the CNI's prefixes)".into();
    }
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
    format!("pods here: {}", known.join(", "))
}

/// What the security groups say of a traced flow (`--ec2`).
enum Judgement {
    Judged(Box<sg::Verdict>),
    /// No group sees the flow (it stays on the node, or the node drops it first).
    NoGroup(String),
    /// The rules could not be read.
    Unknown(String),
}

/// The trace as JSON; with `--ec2`, `{"trace": ..., "security_groups": {"flow", "verdict"}}`,
/// the verdict `allowed`/`denied` (the judge's), `none` (no group sees the flow) or
/// `unknown` (rules unread), the last two with a `reason`.
fn json(t: &impl serde::Serialize, sg: Option<&(sg::Flow, Judgement)>) -> anyhow::Result<String> {
    let v = match sg {
        None => serde_json::to_value(t)?,
        Some((flow, j)) => {
            let verdict = match j {
                Judgement::Judged(v) => {
                    let mut j = serde_json::to_value(v)?;
                    // The sentence and the command, as the text output gives them.
                    if let sg::Verdict::Denied(m) = &**v {
                        j["summary"] = m.summary().into();
                        j["fix"] = m.remediation().into();
                        j["confirmed"] = m.is_confirmed().into();
                    }
                    j
                }
                Judgement::NoGroup(why) => serde_json::json!({ "verdict": "none", "reason": why }),
                Judgement::Unknown(why) => {
                    serde_json::json!({ "verdict": "unknown", "reason": why })
                }
            };
            serde_json::json!({
                "trace": t,
                "security_groups": { "flow": flow, "verdict": verdict },
            })
        }
    };
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

fn sg_text(sg: Option<&(sg::Flow, Judgement)>) -> String {
    match sg {
        None => String::new(),
        Some((flow, Judgement::Judged(v))) => {
            report::trace::render_security_groups(flow, &Ok((**v).clone()))
        }
        Some((flow, Judgement::NoGroup(why))) => {
            format!("\nsecurity groups, {flow}:\n  none apply: {why}\n")
        }
        Some((flow, Judgement::Unknown(why))) => {
            report::trace::render_security_groups(flow, &Err(why.clone()))
        }
    }
}
