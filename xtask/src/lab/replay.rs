//! Replaying a spec's `[[steps]]` while `sgpath observe` watches the node, and the table
//! that puts side by side what the users saw (did the pod answer the bastion?) and what
//! sgpath saw on that pod's path. [`render`] is pure; [`Lab::replay`] runs everything.
//!
//! Honest about what a node can see: when the VPC drops a request on its way in, nothing
//! arrives on the node and sgpath counts nothing. For each pod that did not answer, the
//! table gives what `sgpath trace --from <bastion> --to <pod>:80 --ec2` (what an operator
//! on a real node would run) says: whose inbound rules decide and, with the lab's EC2
//! (moto), the group and the missing rule, and the command that restores it.
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
/// did not answer, what `sgpath trace` says of the bastion's request.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub outcome: StepOutcome,
    pub observed: Observed,
    /// Pod IP -> `sgpath trace`'s word on the bastion's request to it.
    pub deciders: BTreeMap<Ipv4Addr, Decider>,
}

/// What `sgpath trace --from <bastion> --to <pod>:80` says decides the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    /// "the inbound rules of the branch ENI on VLAN 1 (vlan.eth.1)".
    pub who: String,
    /// The rules' verdict (`--ec2`), when the lab has its EC2.
    pub rules: Option<RulesSay>,
}

/// The security groups' verdict, in sgpath's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RulesSay {
    /// "sg-0a1b (sg-pod) admits no tcp/80 from 10.0.1.10" and the command that adds it.
    Denied { summary: String, fix: String },
    /// The group and rule that admit it.
    Allowed { by: String },
    /// Not judged, and why.
    Unknown { reason: String },
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
                    && let Some(d) = self.trace_decider(bin, p.ip)
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

    /// What decides `bastion -> pod:80`, in `sgpath trace`'s words (with the lab's EC2,
    /// the rules' verdict too).
    fn trace_decider(&self, bin: &Path, pod: Ipv4Addr) -> Option<Decider> {
        let bastion = self.spec.vpc.bastion.addr();
        let out = self.sgpath(
            bin,
            &[
                "trace",
                "--from",
                &bastion.to_string(),
                "--to",
                &format!("{pod}:{HTTP_PORT}"),
                "--output",
                "json",
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        decider(&v)
    }
}

/// The decider of an inbound trace report (`sgpath.trace-inbound/v1`, alone or under
/// `"trace"` with `"security_groups"` beside it when `--ec2` judged it).
pub fn decider(v: &Value) -> Option<Decider> {
    let t = if v.get("trace").is_some() {
        &v["trace"]
    } else {
        v
    };
    let sentence = t["decided_by"].as_str()?;
    let who = match sentence
        .strip_prefix("The inbound rules of ")
        .and_then(|s| s.split_once(" decide"))
    {
        Some((eni, _)) => format!("the inbound rules of {eni}"),
        None => sentence.trim_end_matches('.').to_string(),
    };
    let verdict = &v["security_groups"]["verdict"];
    let text = |k: &str| verdict[k].as_str().unwrap_or("?").to_string();
    let rules = match verdict["verdict"].as_str() {
        None => None,
        Some("denied") => Some(RulesSay::Denied {
            summary: text("summary"),
            fix: text("fix"),
        }),
        Some("allowed") => Some(RulesSay::Allowed {
            by: verdict["ingress"]["group"]
                .as_str()
                .unwrap_or("an outside address's rules")
                .to_string(),
        }),
        Some(_) => Some(RulesSay::Unknown {
            reason: text("reason"),
        }),
    };
    Some(Decider { who, rules })
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
    decider: Option<&Decider>,
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
        |d| d.who.clone(),
    );
    // The rules' denial is the answer, whatever else reached the pod (the kubelet's SYNs
    // count on its path too).
    if let Some(RulesSay::Denied { summary, fix }) = decider.and_then(|d| d.rules.as_ref()) {
        let lead = if arrived == Some(0) {
            "nothing arrived on the node: the VPC dropped it"
        } else {
            "the VPC drops it"
        };
        return format!("{lead}; {who} decide, and sgpath read them in EC2: {summary}\nfix: {fix}");
    }
    match arrived {
        Some(0) => match decider.and_then(|d| d.rules.as_ref()) {
            Some(RulesSay::Allowed { by }) => format!(
                "nothing arrived on the node, yet {who} admit it ({by}, read in EC2): look past the groups (network ACLs, routes)"
            ),
            Some(RulesSay::Unknown { reason }) => format!(
                "nothing arrived on the node: the VPC dropped it; decided by {who}, whose rules sgpath could not judge ({reason}) (in this lab: {})",
                lab_groups(spec, pod)
            ),
            _ => format!(
                "nothing arrived on the node: the VPC dropped it; decided by {who} (in this lab: {})",
                lab_groups(spec, pod)
            ),
        },
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
                let note = unanswered_note(spec, p, path, r.deciders.get(&p.ip));
                // Its further lines (the fix) under its first.
                let note = note.replace('\n', &format!("\n  {:<w$}     ", ""));
                let _ = writeln!(s, "  {:<w$}  -> {note}", "");
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
            Decider {
                who: "the inbound rules of the branch ENI on VLAN 1 (vlan.eth.1)".into(),
                rules: None,
            },
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
            t.contains("-> nothing arrived on the node: the VPC dropped it; decided by the inbound rules of the branch ENI on VLAN 1 (vlan.eth.1) (in this lab: sg-pod)"),
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
    fn the_decider_is_the_inbound_traces_sentence_and_the_rules_verdict() {
        let v: Value = serde_json::from_str(r#"{"schema":"sgpath.trace-inbound/v1","decided_by":"The inbound rules of the branch ENI on VLAN 2 (vlan.eth.2) decide what comes in from 10.0.1.10."}"#).unwrap();
        assert_eq!(
            decider(&v).unwrap(),
            Decider {
                who: "the inbound rules of the branch ENI on VLAN 2 (vlan.eth.2)".into(),
                rules: None
            }
        );
        let v: Value = serde_json::from_str(r#"{"trace":{"decided_by":"The inbound rules of the node ENI eth0 decide what comes in from 10.0.1.10."},
          "security_groups":{"verdict":{"verdict":"denied","summary":"sg-1 (sg-node) admits no tcp/80 from 10.0.1.10",
          "fix":"aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 80 --cidr 10.0.1.10/32"}}}"#).unwrap();
        let d = decider(&v).unwrap();
        assert_eq!(d.who, "the inbound rules of the node ENI eth0");
        assert_eq!(
            d.rules,
            Some(RulesSay::Denied {
                summary: "sg-1 (sg-node) admits no tcp/80 from 10.0.1.10".into(),
                fix: "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 80 --cidr 10.0.1.10/32".into()
            })
        );
    }

    #[test]
    fn a_denial_read_in_ec2_is_printed_with_its_fix() {
        let (spec, mut r) = replayed(TODAY, &[false, true, true, true, true, true, true, true]);
        r.deciders.get_mut(&spec.pods[0].ip).unwrap().rules = Some(RulesSay::Denied {
            summary: "sg-0f (sg-pod) admits no tcp/80 from 10.0.1.10".into(),
            fix: "aws ec2 authorize-security-group-ingress --group-id sg-0f --protocol tcp --port 80 --cidr 10.0.1.10/32".into(),
        });
        let t = render(&spec, 2, 3, &r);
        let pad = " ".repeat(2 + spec.pods.iter().map(|p| p.name.len()).max().unwrap() + 5);
        assert!(
            t.contains(&format!("-> nothing arrived on the node: the VPC dropped it; the inbound rules of the branch ENI on VLAN 1 (vlan.eth.1) decide, and sgpath read them in EC2: sg-0f (sg-pod) admits no tcp/80 from 10.0.1.10\n{pad}fix: aws ec2 authorize-security-group-ingress --group-id sg-0f --protocol tcp --port 80 --cidr 10.0.1.10/32\n")),
            "{t}"
        );
        assert!(!t.contains("in this lab"), "{t}");
    }
}
