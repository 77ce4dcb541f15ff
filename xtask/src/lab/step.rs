//! Running a [`Step`] of the spec in a live lab: security-group edits go to the VPC at
//! once, then the traffic actions run all at the same time, each as the user would send it
//! (`curl`, `busybox nslookup`, a bash `/dev/tcp` connect) from its namespace. What each
//! user saw comes back as a [`StepOutcome`].
//!
//! Side effects: changes the VPC's nftables ruleset, `Lab::spec`'s groups and, when the
//! lab has its fake AWS, the groups in EC2; spawns one
//! client process per request (bounded by [`TRAFFIC_TIMEOUT`]).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    Lab, dns,
    spec::{Action, Host, Step},
};

/// How long a user waits for an answer. Long enough for a SYN retransmit (1 s) under TCG,
/// short enough that three steps stay well under a minute.
pub const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(4);

/// What one action did or what its user saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Seen {
    /// A security-group edit, e.g. `sg-pod ingress: removed tcp 80 from 0.0.0.0/0`.
    Edit { change: String },
    /// HTTP GET of each pod: `(pod name, answered with its own name)`.
    Http {
        from: Host,
        answers: Vec<(String, bool)>,
    },
    /// A DNS query and the address it got, `None` when no answer came.
    Dns {
        from: Host,
        name: String,
        answer: Option<Ipv4Addr>,
    },
    /// A TCP connect: whether the handshake completed.
    Connect {
        from: Host,
        to: SocketAddrV4,
        connected: bool,
    },
}

/// What the users of one step saw, in the order of the step's actions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    pub title: String,
    pub seen: Vec<Seen>,
}

impl StepOutcome {
    /// Whether `pod` answered the HTTP GET from `from` (`None`: nobody asked it).
    pub fn http_answered(&self, from: &Host, pod: &str) -> Option<bool> {
        self.seen.iter().find_map(|s| match s {
            Seen::Http { from: f, answers } if f == from => {
                answers.iter().find(|(p, _)| p == pod).map(|(_, ok)| *ok)
            }
            _ => None,
        })
    }

    /// Every DNS query of the step with its answer.
    pub fn dns(&self) -> impl Iterator<Item = (&Host, &str, Option<Ipv4Addr>)> {
        self.seen.iter().filter_map(|s| match s {
            Seen::Dns { from, name, answer } => Some((from, name.as_str(), *answer)),
            _ => None,
        })
    }

    /// Every TCP connect of the step and whether it completed.
    pub fn connects(&self) -> impl Iterator<Item = (&Host, SocketAddrV4, bool)> {
        self.seen.iter().filter_map(|s| match s {
            Seen::Connect {
                from,
                to,
                connected,
            } => Some((from, *to, *connected)),
            _ => None,
        })
    }
}

/// A request in flight and how to read its answer.
enum Pending {
    Http {
        from: Host,
        requests: Vec<(String, std::io::Result<Child>)>,
    },
    Dns {
        from: Host,
        name: String,
        child: std::io::Result<Child>,
    },
    Connect {
        from: Host,
        to: SocketAddrV4,
        child: std::io::Result<Child>,
    },
}

impl Lab {
    /// Run one step: its security-group edits (applied to the VPC before any traffic that
    /// follows them) and its traffic, every request of a run of traffic actions at once.
    ///
    /// # Errors
    /// An edit the spec refuses (unknown group, rule not there) or that nft refuses, or a
    /// name the lab does not have. A request that gets no answer is not an error: it is
    /// what the user saw.
    pub fn run_step(&mut self, step: &Step) -> Result<StepOutcome> {
        let mut seen = Vec::new();
        let mut pending = Vec::new();
        for action in &step.actions {
            if action.is_traffic() {
                pending.push(self.send(action)?);
                continue;
            }
            seen.extend(pending.drain(..).map(wait));
            self.spec
                .edit(action)
                .with_context(|| format!("step {:?}", step.title))?;
            self.apply_security_groups()
                .with_context(|| format!("step {:?}: applying {action:?}", step.title))?;
            if let Action::AddRule {
                group,
                direction,
                rule,
            }
            | Action::RemoveRule {
                group,
                direction,
                rule,
            } = action
            {
                let add = matches!(action, Action::AddRule { .. });
                if let Some(aws) = &mut self.aws {
                    aws.edit(add, group, *direction, rule)
                        .with_context(|| format!("step {:?}: EC2", step.title))?;
                }
                let verb = if add { "added" } else { "removed" };
                seen.push(Seen::Edit {
                    change: format!("{group} {direction}: {verb} {}", rule.describe(*direction)),
                });
            }
        }
        seen.extend(pending.into_iter().map(wait));
        Ok(StepOutcome {
            title: step.title.clone(),
            seen,
        })
    }

    /// The namespace traffic from `host` starts in.
    pub fn namespace_of(&self, host: &Host) -> Result<String> {
        Ok(match host {
            Host::Bastion => self.layout.bastion(),
            Host::Node => self.layout.node(),
            Host::Pod(name) => {
                let i = self
                    .spec
                    .pods
                    .iter()
                    .position(|p| &p.name == name)
                    .with_context(|| format!("no pod named {name:?} in the lab"))?;
                self.layout.pod(i)
            }
        })
    }

    fn send(&self, action: &Action) -> Result<Pending> {
        let secs = format!("{}", TRAFFIC_TIMEOUT.as_secs());
        let run = |host: &Host, argv: &[&str]| -> Result<std::io::Result<Child>> {
            Ok(Command::new("ip")
                .args(["netns", "exec", &self.namespace_of(host)?])
                .args(argv)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn())
        };
        Ok(match action {
            Action::Http { from, pods } => {
                let targets: Vec<&super::spec::Pod> = if pods.is_empty() {
                    self.spec.pods.iter().collect()
                } else {
                    pods.iter()
                        .map(|p| self.spec.pod(p))
                        .collect::<Result<_>>()?
                };
                let mut requests = Vec::new();
                for p in targets {
                    let url = format!("http://{}/", p.ip);
                    let child = run(from, &["curl", "-s", "--max-time", &secs, &url])?;
                    requests.push((p.name.clone(), child));
                }
                Pending::Http {
                    from: from.clone(),
                    requests,
                }
            }
            Action::Dns { from, name } => Pending::Dns {
                from: from.clone(),
                name: name.clone(),
                // The resolver is the namespace's /etc/netns/<ns>/resolv.conf.
                child: run(
                    from,
                    &[
                        "busybox", "timeout", &secs, "busybox", "nslookup", "-type=a", name,
                    ],
                )?,
            },
            Action::Connect { from, to } => Pending::Connect {
                from: from.clone(),
                to: *to,
                child: run(
                    from,
                    &[
                        "busybox",
                        "timeout",
                        &secs,
                        "bash",
                        "-c",
                        &format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port()),
                    ],
                )?,
            },
            other => unreachable!("{other:?} is not traffic"),
        })
    }
}

/// Wait for a request and read what its user saw.
fn wait(p: Pending) -> Seen {
    let output = |c: std::io::Result<Child>| c.and_then(|c| c.wait_with_output()).ok();
    match p {
        Pending::Http { from, requests } => Seen::Http {
            from,
            answers: requests
                .into_iter()
                .map(|(name, child)| {
                    let ok = output(child).is_some_and(|o| {
                        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == name
                    });
                    (name, ok)
                })
                .collect(),
        },
        Pending::Dns { from, name, child } => Seen::Dns {
            from,
            name,
            answer: output(child)
                .and_then(|o| dns::nslookup_answer(&String::from_utf8_lossy(&o.stdout))),
        },
        Pending::Connect { from, to, child } => Seen::Connect {
            from,
            to,
            connected: output(child).is_some_and(|o| o.status.success()),
        },
    }
}
