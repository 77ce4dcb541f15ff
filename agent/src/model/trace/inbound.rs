//! A request from outside the node (a bastion, a load balancer, another node, the node
//! itself) to a pod: where it enters the node, whose inbound rules admit it, and the pod's
//! answer.

use std::net::IpAddr;

use serde::Serialize;

use super::{Deciders, Leg, Proto, Request, Trace, deciders_of, leaves_node, leg, run};
use crate::model::{
    Node, Path, Topology,
    eni::{self, Eni},
    fib::Flow,
    lookup::Answer,
};

/// `sgpath trace --from <address> --to <pod>:<port>` for an address that is no pod on this
/// node (a bastion, a load balancer, another node, the node itself):
///
/// ```text
/// { "schema": "sgpath.trace-inbound/v1", "from": <ip>, "to": <path>, "proto", "port",
///   "arrival": <leg>,             // the request, from where it enters the node
///   "security_groups": "branch-eni" | "node-eni" | "none", // whose inbound rules decide
///   "sender_security_groups": "node-eni" | null, // the node's own outbound rules, when it sends
///   "decided_by": "<sentence>", "answer": <trace>, "works", "verdict" }
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Inbound {
    pub schema: &'static str,
    pub from: IpAddr,
    pub to: Path,
    pub proto: Proto,
    pub port: Option<u16>,
    /// The request's route lookup: in on the ENI the VPC hands it to (the pod's branch
    /// ENI's VLAN link, or the node ENI its table routes by), or sent by the node itself.
    pub arrival: Leg,
    pub security_groups: Deciders,
    pub sender_security_groups: Option<Deciders>,
    pub decided_by: String,
    /// The pod's answer, as `trace --from <pod> --to <address>` follows it.
    pub answer: Trace,
    pub works: bool,
    pub verdict: String,
}

/// Trace a request from `src`, which is no pod on this node, to the pod `to`: where it
/// enters the node and whether its route reaches the pod's host veth, whose inbound rules
/// admit it, then the pod's answer (see [`run`]).
///
/// # Errors
/// Whatever `ask` fails with.
pub fn inbound<E>(
    node: &Node,
    topo: &Topology,
    src: IpAddr,
    to: &Path,
    proto: Proto,
    port: Option<u16>,
    mut ask: impl FnMut(&Flow<'_>, Option<u16>) -> Result<Answer, E>,
) -> Result<Inbound, E> {
    let pod_ip = to.pod_ip.expect("the caller resolved the pod's address");
    let local = node.has_address(src);
    let pod_eni = eni::pod_eni(node, topo, to);
    let ipproto = Some(proto.number());
    let flow = Flow {
        iif: if local { None } else { pod_eni.as_deref() },
        src: Some(src),
        dst: pod_ip,
        ipproto,
    };
    let arrival = leg(node, topo, &flow, &ask(&flow, port)?);
    let receiver = deciders_of(to.kind);
    let pod_eni_text = pod_eni
        .as_deref()
        .and_then(|l| eni::of_link(topo, l))
        .map_or_else(|| "the pod's ENI".to_string(), Eni::describe);
    let (security_groups, sender_security_groups, decided_by) = if !local {
        (
            receiver,
            None,
            format!("The inbound rules of {pod_eni_text} decide what comes in from {src}."),
        )
    } else if leaves_node(&arrival) {
        let out = arrival
            .egress
            .as_deref()
            .and_then(|l| eni::of_link(topo, l))
            .map_or_else(|| "the ENI it leaves by".to_string(), Eni::describe);
        (
            receiver,
            Some(Deciders::NodeEni),
            format!(
                "The node's packet leaves by {out} and comes back through the VPC: that ENI's \
                 outbound rules and the inbound rules of {pod_eni_text} decide."
            ),
        )
    } else {
        (
            Deciders::None,
            None,
            "No security group: the node reaches the pod without leaving the node.".to_string(),
        )
    };
    let answer = run(
        node,
        topo,
        &Request {
            from: to,
            to: src,
            proto,
            port: None,
        },
        &mut ask,
    )?;
    // The node's own packet that leaves by an ENI comes back in on the pod's ENI: the
    // second lookup is the one that must reach the pod.
    let arrives = if local && leaves_node(&arrival) {
        let again = Flow {
            iif: pod_eni.as_deref(),
            src: Some(src),
            dst: pod_ip,
            ipproto,
        };
        leg(node, topo, &again, &ask(&again, port)?)
    } else {
        arrival.clone()
    };
    let reached = arrives.error.is_none()
        && arrives.vpc_drop.is_none()
        && arrives.egress.as_deref() == Some(to.host_veth.as_str());
    let (works, verdict) = if !reached {
        (
            false,
            format!(
                "The request does not reach the pod's host veth {}: {}.",
                to.host_veth,
                arrives.why.clone().unwrap_or_else(|| arrives.summary())
            ),
        )
    } else if !answer.works {
        (
            false,
            format!(
                "The request reaches the pod through {}; its answer does not get back: {}",
                to.host_veth, answer.verdict
            ),
        )
    } else {
        (
            true,
            format!(
                "The request reaches the pod through {} and its answer leaves by {}.",
                to.host_veth,
                answer.forward.egress.as_deref().unwrap_or("?")
            ),
        )
    };
    Ok(Inbound {
        schema: "sgpath.trace-inbound/v1",
        from: src,
        to: to.clone(),
        proto,
        port,
        arrival,
        security_groups,
        sender_security_groups,
        decided_by,
        answer,
        works,
        verdict,
    })
}
