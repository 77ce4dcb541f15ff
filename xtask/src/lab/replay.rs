//! Replaying a spec's `[[steps]]` while `sgpath observe` watches the node, and the table
//! that puts side by side what the users saw (did the pod answer the bastion?) and what
//! sgpath saw on that pod's path. [`render`] is pure; [`Lab::replay`] runs everything.
//!
//! Honest about what a node can see: when the VPC drops a request on its way in, nothing
//! arrives on the node and sgpath counts nothing; the table says so and names the security
//! groups that decide, as `sgpath trace` (what an operator on a real node would run) names
//! them, and beside them the groups the lab actually gave that ENI.
//!
//! Side effects: [`Lab::replay`] runs each step (security-group edits, traffic), `sgpath
//! observe` around it and `sgpath trace` for each pod that did not answer.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;

use super::{
    Lab,
    observe::{DirectionView, FindingView, Observed, PathView},
    spec::{Host, PodKind, Spec},
    step::{Seen, StepOutcome},
};

/// How long observe keeps counting after a step's traffic is done: sgpath's default
/// `--syn-timeout` (3 s), so a SYN sent last is already unanswered, and a second for
/// late answers.
pub const SETTLE: Duration = Duration::from_secs(4);

/// The port the replay's HTTP goes to (and `sgpath trace` is asked about).
const HTTP_PORT: u16 = 80;

/// One replayed step: what the users saw, what sgpath reported, and for each pod that
/// did not answer, the security groups `sgpath trace` says decide its path.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub outcome: StepOutcome,
    pub observed: Observed,
    /// Pod IP -> "the security groups of ..." from `sgpath trace`.
    pub deciders: BTreeMap<Ipv4Addr, String>,
}

impl Lab {
    /// Replay every step of the spec, each inside its own `sgpath observe` run, printing
    /// each step's table to `out` as soon as it is known.
    ///
    /// # Errors
    /// As [`Lab::run_step`] and [`Lab::observe_during`].
    pub fn replay(&mut self, bin: &Path, out: &mut impl std::io::Write) -> Result<Vec<Replayed>> {
        let steps = self.spec.steps.clone();
        let mut done = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let (outcome, observed) =
                self.observe_during(bin, SETTLE, &[], |lab| lab.run_step(step))?;
            let mut deciders = BTreeMap::new();
            for p in &self.spec.pods {
                if outcome.http_answered(&Host::Bastion, &p.name) == Some(false)
                    && let Some(d) = self.trace_deciders(bin, p.ip)
                {
                    deciders.insert(p.ip, d);
                }
            }
            let r = Replayed {
                outcome,
                observed,
                deciders,
            };
            out.write_all(render(&self.spec, i + 1, steps.len(), &r).as_bytes())?;
            out.flush()?;
            done.push(r);
        }
        Ok(done)
    }

    /// Whose security groups decide `pod -> bastion:80`, in `sgpath trace`'s words.
    fn trace_deciders(&self, bin: &Path, pod: Ipv4Addr) -> Option<String> {
        let bastion = self.spec.vpc.bastion.addr();
        let out = self.sgpath(
            bin,
            &[
                "trace",
                "--from",
                &pod.to_string(),
                "--to",
                &format!("{bastion}:{HTTP_PORT}"),
                "--output",
                "json",
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        deciders(&v)
    }
}

/// "the security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1)" from a
/// trace report: its `decided_by` sentence when it has the usual shape, else its
/// `security_groups` kind and the link the packet leaves by.
pub fn deciders(trace: &Value) -> Option<String> {
    if let Some(who) = trace["decided_by"]
        .as_str()
        .and_then(|s| s.strip_prefix("The security groups of "))
        .and_then(|s| s.strip_suffix(" decide."))
    {
        return Some(format!("the security groups of {who}"));
    }
    let link = trace["forward"]["egress"].as_str().unwrap_or("?");
    match trace["security_groups"].as_str()? {
        "branch-eni" => Some(format!("the branch ENI's security groups ({link})")),
        "node-eni" => Some(format!("the node ENI's security groups ({link})")),
        _ => trace["decided_by"].as_str().map(str::to_owned),
    }
}

/// The groups the lab gave the ENI a pod's traffic leaves by (ground truth; a real node
/// cannot know them).
fn lab_groups(spec: &Spec, pod: &super::spec::Pod) -> String {
    let g = match pod.kind {
        PodKind::Branch => &pod.security_groups,
        PodKind::Ordinary => &spec.node.security_groups,
    };
    g.join(", ")
}

fn path_cell(p: Option<&PathView>) -> String {
    match p {
        Some(p) if p.kind == "branch-eni" => match p.vlan_id {
            Some(v) => format!("branch vlan {v}"),
            None => "branch".into(),
        },
        Some(p) if p.kind == "node-eni" => "node ENI".into(),
        Some(p) => p.kind.clone(),
        None => "(no path)".into(),
    }
}

fn ports(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| format!("{p}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The newer counters and the drops of one direction, empty when there are none.
fn extras(d: &DirectionView) -> Vec<String> {
    let mut v = Vec::new();
    for (name, m) in [("syn_in", &d.syn_in), ("syn_unanswered", &d.syn_unanswered)] {
        if let Some(m) = m {
            let p = ports(m);
            if !p.is_empty() {
                v.push(format!("{name} {p}"));
            }
        }
    }
    if let Some(n) = d.dns_unanswered.filter(|n| *n > 0) {
        v.push(format!("dns_unanswered {n}"));
    }
    // Reasons where the kernel has them (5.17+), else the functions that dropped.
    let mut r = ports(&d.drops_by_reason);
    if r.is_empty() {
        r = ports(&d.drops_by_location);
    }
    if !r.is_empty() {
        v.push(format!("drops {r}"));
    }
    v
}

fn more_cell(p: Option<&PathView>) -> String {
    let Some(p) = p else { return String::new() };
    let mut parts = Vec::new();
    for (label, d) in [("to pod", &p.to_pod), ("from pod", &p.from_pod)] {
        if let Some(d) = d {
            let e = extras(d);
            if !e.is_empty() {
                parts.push(format!("{label}: {}", e.join(", ")));
            }
        }
    }
    parts.join("; ")
}

/// What the node saw of the requests to a pod that did not answer.
fn unanswered_note(
    spec: &Spec,
    pod: &super::spec::Pod,
    path: Option<&PathView>,
    decider: Option<&String>,
) -> String {
    let to = path.and_then(|p| p.to_pod.as_ref());
    let port = HTTP_PORT.to_string();
    let arrived = match to {
        None => Some(0),
        Some(d) => match &d.syn_in {
            Some(m) => Some(m.get(&port).copied().unwrap_or(0)),
            None if d.forwarded_packets == 0 => Some(0),
            None => None,
        },
    };
    let who = decider.map_or_else(
        || "the security groups of the ENI it sits behind".to_string(),
        Clone::clone,
    );
    match arrived {
        Some(0) => format!(
            "nothing arrived on the node: the VPC dropped it; decided by {who} (in this lab: {})",
            lab_groups(spec, pod)
        ),
        Some(n) => {
            let unanswered = to
                .and_then(|d| d.syn_unanswered.as_ref())
                .and_then(|m| m.get(&port).copied())
                .unwrap_or(0);
            format!(
                "{n} SYNs to :{port} arrived on the node and went to the pod; {unanswered} unanswered, {} dropped on the node",
                to.map_or(0, |d| d.dropped_packets)
            )
        }
        None => {
            let n = to.map_or(0, |d| d.forwarded_packets);
            format!(
                "the node handed the pod {n} packet{} (other traffic too); this sgpath counts no SYNs per port, so it cannot tell whether the GETs arrived",
                if n == 1 { "" } else { "s" }
            )
        }
    }
}

/// The table of one replayed step, for an EKS operator: per pod, whether it answered the
/// bastion beside what sgpath counted on its path; then the other traffic and the findings.
pub fn render(spec: &Spec, n: usize, total: usize, r: &Replayed) -> String {
    let mut s = String::new();
    let o = &r.outcome;
    let paths = r.observed.paths();
    let path_of = |ip: Ipv4Addr| paths.iter().find(|p| p.pod_ip == Some(IpAddr::V4(ip)));
    let _ = writeln!(s, "\nSTEP {n}/{total}: {}", o.title);
    for seen in &o.seen {
        if let Seen::Edit { change } = seen {
            let _ = writeln!(s, "  changed: {change}");
        }
    }
    let asked: Vec<(&super::spec::Pod, bool)> = spec
        .pods
        .iter()
        .filter_map(|p| o.http_answered(&Host::Bastion, &p.name).map(|ok| (p, ok)))
        .collect();
    if !asked.is_empty() {
        let answered = asked.iter().filter(|(_, ok)| *ok).count();
        let _ = writeln!(
            s,
            "  the bastion ({}) GET :{HTTP_PORT} of every pod: {answered} of {} answered",
            spec.vpc.bastion.addr(),
            asked.len()
        );
        let w = spec
            .pods
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(3)
            .max(3);
        let _ = writeln!(
            s,
            "\n  {:<w$}  {:<15}  {:<9}  {:<13}  {:>6}  {:>8}  {:>5}  MORE (sgpath)",
            "POD", "IP", "USER SAW", "SGPATH PATH", "TO POD", "FROM POD", "DROPS"
        );
        for (p, ok) in &asked {
            let path = path_of(p.ip);
            let count = |d: Option<&DirectionView>| {
                d.map_or("-".to_string(), |d| d.forwarded_packets.to_string())
            };
            let drops = path
                .filter(|p| p.to_pod.is_some() || p.from_pod.is_some())
                .map_or("-".to_string(), |p| {
                    (p.to_pod.as_ref().map_or(0, |d| d.dropped_packets)
                        + p.from_pod.as_ref().map_or(0, |d| d.dropped_packets))
                    .to_string()
                });
            let row = format!(
                "  {:<w$}  {:<15}  {:<9}  {:<13}  {:>6}  {:>8}  {:>5}  {}",
                p.name,
                p.ip.to_string(),
                if *ok { "answered" } else { "no answer" },
                path_cell(path),
                count(path.and_then(|p| p.to_pod.as_ref())),
                count(path.and_then(|p| p.from_pod.as_ref())),
                drops,
                more_cell(path)
            );
            let _ = writeln!(s, "{}", row.trim_end());
            if !ok {
                let _ = writeln!(
                    s,
                    "  {:<w$}  -> {}",
                    "",
                    unanswered_note(spec, p, path, r.deciders.get(&p.ip))
                );
            }
        }
    }
    let mut other = Vec::new();
    for seen in &o.seen {
        match seen {
            Seen::Dns { from, name, answer } => {
                let sgpath = match from {
                    Host::Pod(p) => spec
                        .pod(p)
                        .ok()
                        .and_then(|p| path_of(p.ip))
                        .and_then(|p| p.from_pod.as_ref())
                        .and_then(|d| d.dns_answered.zip(d.dns_unanswered))
                        .map(|(a, u)| format!("  [sgpath: {a} answered, {u} unanswered]"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                other.push(format!(
                    "dns      {} asked for {name}: {}{sgpath}",
                    from.describe(),
                    answer.map_or("no answer".to_string(), |a| a.to_string())
                ));
            }
            Seen::Connect {
                from,
                to,
                connected,
            } => other.push(format!(
                "connect  {} -> {to}: {}",
                from.describe(),
                if *connected { "connected" } else { "no answer" }
            )),
            Seen::Http { from, answers } if *from != Host::Bastion => {
                let ok = answers.iter().filter(|(_, ok)| *ok).count();
                other.push(format!(
                    "http     {} GET :{HTTP_PORT} of {} pods: {ok} answered",
                    from.describe(),
                    answers.len()
                ));
            }
            _ => {}
        }
    }
    if !other.is_empty() {
        let _ = writeln!(s, "\n  other traffic (what its user saw):");
        for l in other {
            let _ = writeln!(s, "    {l}");
        }
    }
    let findings: Vec<FindingView> = r.observed.findings();
    let _ = writeln!(s, "\n  sgpath findings ({}):", findings.len());
    for f in &findings {
        let _ = writeln!(s, "    {:<7}  {}  {}", f.severity, f.id, f.subject);
    }
    if !r.observed.covered {
        let _ = writeln!(
            s,
            "  note: the traffic outlasted observe's {} s; counts may miss its end",
            super::observe::OBSERVE_CAP.as_secs()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(report: &str, answers: &[bool]) -> (Spec, Replayed) {
        let spec = Spec::default_lab();
        let outcome = StepOutcome {
            title: "Port 80 removed from the pod security group (sg-pod)".into(),
            seen: vec![
                Seen::Edit {
                    change: "sg-pod ingress: removed tcp 80 from 0.0.0.0/0".into(),
                },
                Seen::Http {
                    from: Host::Bastion,
                    answers: spec
                        .pods
                        .iter()
                        .zip(answers)
                        .map(|(p, ok)| (p.name.clone(), *ok))
                        .collect(),
                },
                Seen::Connect {
                    from: Host::Node,
                    to: "192.168.3.219:80".parse().unwrap(),
                    connected: true,
                },
            ],
        };
        let mut deciders = BTreeMap::new();
        deciders.insert(
            spec.pods[0].ip,
            "the security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1)".into(),
        );
        let r = Replayed {
            outcome,
            observed: Observed {
                report: serde_json::from_str(report).unwrap(),
                stderr: String::new(),
                covered: true,
            },
            deciders,
        };
        (spec, r)
    }

    const TODAY: &str = r#"{"paths":[{"kind":"branch-eni","pod_ip":"192.168.3.219","host_veth":"vlan1","vlan_id":1,
      "counters":{"to_pod":{"forwarded_packets":0,"dropped_packets":0,"drops_by_reason":{}},
                  "from_pod":{"forwarded_packets":0,"dropped_packets":0,"drops_by_reason":{}}}}],
      "findings":[{"id":"some-id","severity":"warning","subject":"vlan.eth.1"}]}"#;

    #[test]
    fn a_request_the_vpc_dropped_is_nothing_arriving_and_names_the_groups() {
        let (spec, r) = replayed(TODAY, &[false, true, true, true, true, true, true, true]);
        let t = render(&spec, 2, 3, &r);
        assert!(t.contains("STEP 2/3: Port 80 removed from the pod security group (sg-pod)\n  changed: sg-pod ingress: removed tcp 80 from 0.0.0.0/0\n"), "{t}");
        assert!(t.contains("7 of 8 answered"), "{t}");
        assert!(
            t.contains("-> nothing arrived on the node: the VPC dropped it; decided by the security groups of the branch ENI on VLAN 1 (vlan.eth.1, trunk eth1) (in this lab: sg-pod)"),
            "{t}"
        );
        assert!(t.contains("  my-deployment-5b7f8c9d6-2xk4p   192.168.3.219    no answer  branch vlan 1       0         0      0\n"), "{t}");
        assert!(
            t.contains("connect  the node -> 192.168.3.219:80: connected"),
            "{t}"
        );
        assert!(
            t.contains("sgpath findings (1):\n    warning  some-id  vlan.eth.1\n"),
            "{t}"
        );
        // Pods the report has no path for say so rather than inventing zeros.
        assert!(t.contains("  my-deployment2-7d4c6b8f9-wp6tb  192.168.49.5     answered   (no path)           -         -      -\n"), "{t}");
    }

    #[test]
    fn syns_that_arrived_are_reported_as_arrived() {
        let report = r#"{"paths":[{"kind":"branch-eni","pod_ip":"192.168.3.219","host_veth":"vlan1","vlan_id":1,
          "counters":{"to_pod":{"forwarded_packets":3,"dropped_packets":0,"syn_in":{"80":3},"syn_unanswered":{"80":3}},
                      "from_pod":{"forwarded_packets":0,"dropped_packets":0,"dns_answered":0,"dns_unanswered":2}}}],
          "findings":[]}"#;
        let (spec, r) = replayed(report, &[false; 8]);
        let t = render(&spec, 1, 1, &r);
        assert!(t.contains("-> 3 SYNs to :80 arrived on the node and went to the pod; 3 unanswered, 0 dropped on the node"), "{t}");
        assert!(
            t.contains("to pod: syn_in 80:3, syn_unanswered 80:3; from pod: dns_unanswered 2"),
            "{t}"
        );
    }

    #[test]
    fn deciders_come_from_the_trace_sentence_or_its_kind() {
        let v: Value = serde_json::from_str(r#"{"security_groups":"node-eni","forward":{"egress":"eth0"},"decided_by":"The security groups of the node ENI eth0 decide."}"#).unwrap();
        assert_eq!(
            deciders(&v).unwrap(),
            "the security groups of the node ENI eth0"
        );
        let v: Value = serde_json::from_str(r#"{"security_groups":"node-eni","forward":{"egress":"eth0"},"decided_by":"Something else."}"#).unwrap();
        assert_eq!(
            deciders(&v).unwrap(),
            "the node ENI's security groups (eth0)"
        );
    }
}
