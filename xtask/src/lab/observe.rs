//! `sgpath observe` around some traffic in the lab ([`Lab::observe_during`]), and the parts
//! of its JSON report the replay prints, read leniently: counters that an older or newer
//! sgpath lacks are `None` and simply not shown.
//!
//! Side effects: [`Lab::observe_during`] runs `sgpath observe` in the node's namespace
//! (it attaches eBPF programs while it counts and detaches them before it exits) and
//! stops it with SIGTERM.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Lab;

/// What `sgpath observe` prints on stderr once its probes are attached and counting.
pub const COUNTING: &str = "sgpath: observing";

/// Observe's `--duration`: only a bound; [`Lab::observe_during`] stops it when the
/// traffic is done.
pub const OBSERVE_CAP: Duration = Duration::from_secs(600);

/// How long attaching may take under TCG before the lab gives up.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(180);

/// One `sgpath observe` run: its report and what it said on stderr.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The JSON report (`sgpath.report/v1` with `counters` on each path).
    pub report: Value,
    pub stderr: String,
    /// Whether the traffic finished before observe stopped counting.
    pub covered: bool,
}

/// One direction of a path's counters. The `Option` fields are counters sgpath added later
/// (SYNs and DNS per path); `None` when the report has no such key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionView {
    pub forwarded_packets: u64,
    pub dropped_packets: u64,
    pub drops_by_reason: BTreeMap<String, u64>,
    /// Kernel function -> drops (what a kernel without drop reasons names).
    pub drops_by_location: BTreeMap<String, u64>,
    /// Destination port -> SYNs.
    pub syn_in: Option<BTreeMap<String, u64>>,
    pub syn_unanswered: Option<BTreeMap<String, u64>>,
    pub dns_answered: Option<u64>,
    pub dns_unanswered: Option<u64>,
}

/// One path of the report, as far as the replay shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    /// `branch-eni` or `node-eni`.
    pub kind: String,
    pub pod_ip: Option<IpAddr>,
    pub host_veth: String,
    pub vlan_id: Option<u64>,
    pub to_pod: Option<DirectionView>,
    pub from_pod: Option<DirectionView>,
}

/// One finding of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindingView {
    pub id: String,
    pub severity: String,
    pub subject: String,
}

fn port_counts(v: &Value) -> Option<BTreeMap<String, u64>> {
    v.as_object().map(|m| {
        m.iter()
            .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
            .collect()
    })
}

impl DirectionView {
    fn from_json(v: &Value) -> Option<DirectionView> {
        v.as_object()?;
        Some(DirectionView {
            forwarded_packets: v["forwarded_packets"].as_u64().unwrap_or(0),
            dropped_packets: v["dropped_packets"].as_u64().unwrap_or(0),
            drops_by_reason: port_counts(&v["drops_by_reason"]).unwrap_or_default(),
            drops_by_location: port_counts(&v["drops_by_location"]).unwrap_or_default(),
            syn_in: port_counts(&v["syn_in"]),
            syn_unanswered: port_counts(&v["syn_unanswered"]),
            dns_answered: v["dns_answered"].as_u64(),
            dns_unanswered: v["dns_unanswered"].as_u64(),
        })
    }
}

impl Observed {
    /// The report's paths.
    pub fn paths(&self) -> Vec<PathView> {
        paths(&self.report)
    }

    /// The path of the pod with address `ip`.
    pub fn path_of(&self, ip: IpAddr) -> Option<PathView> {
        self.paths().into_iter().find(|p| p.pod_ip == Some(ip))
    }

    pub fn findings(&self) -> Vec<FindingView> {
        findings(&self.report)
    }
}

/// The paths of an observe (or inspect) report.
pub fn paths(report: &Value) -> Vec<PathView> {
    let Some(paths) = report["paths"].as_array() else {
        return Vec::new();
    };
    paths
        .iter()
        .map(|p| PathView {
            kind: p["kind"].as_str().unwrap_or("?").to_string(),
            pod_ip: p["pod_ip"].as_str().and_then(|s| s.parse().ok()),
            host_veth: p["host_veth"].as_str().unwrap_or("?").to_string(),
            vlan_id: p["vlan_id"].as_u64(),
            to_pod: DirectionView::from_json(&p["counters"]["to_pod"]),
            from_pod: DirectionView::from_json(&p["counters"]["from_pod"]),
        })
        .collect()
}

/// The findings of a report.
pub fn findings(report: &Value) -> Vec<FindingView> {
    let Some(fs) = report["findings"].as_array() else {
        return Vec::new();
    };
    fs.iter()
        .map(|f| FindingView {
            id: f["id"].as_str().unwrap_or("?").to_string(),
            severity: f["severity"].as_str().unwrap_or("?").to_string(),
            subject: f["subject"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// A running `sgpath observe --output json` in the lab's node, counting.
pub struct Observing {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    started: Instant,
}

impl Observing {
    /// Starts `sgpath observe --output json <extra>` in the node and returns once it says
    /// it is counting ([`COUNTING`] on stderr). It runs with `--duration` [`OBSERVE_CAP`],
    /// so a fixed time never cuts traffic short, however slow TCG is.
    ///
    /// # Errors
    /// When observe cannot start, or stops or hangs before counting (with what it said).
    pub fn start(lab: &Lab, bin: &Path, extra: &[&str]) -> Result<Observing> {
        let secs = format!("{}s", OBSERVE_CAP.as_secs());
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.layout.node()])
            .arg(bin)
            .args(["observe", "--duration", &secs, "--output", "json"])
            .arg("--cni-config")
            .arg(lab.cni_config())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} observe", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        // Read stderr on a thread: it says when counting starts, and must never fill up.
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with(COUNTING) {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let stdout = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        if rx.recv_timeout(ATTACH_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let said = stderr.join().unwrap_or_default();
            bail!("sgpath observe stopped or hung before counting:\n{said}");
        }
        Ok(Observing {
            child,
            stderr,
            stdout,
            started: Instant::now(),
        })
    }

    /// SIGTERM (observe detaches and prints what it counted), then its report.
    ///
    /// # Errors
    /// When observe exits with a status other than 0 or 1 (1 only says a finding is a
    /// warning or error), or prints no JSON.
    pub fn stop(mut self) -> Result<Observed> {
        let covered = self.started.elapsed() < OBSERVE_CAP;
        // SAFETY: kill(2) on our own child (`ip netns exec` execs sgpath in place), not yet
        // reaped, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().context("waiting for sgpath observe")?;
        let stderr = self.stderr.join().unwrap_or_default();
        let stdout = self.stdout.join().unwrap_or_default();
        if !matches!(status.code(), Some(0 | 1)) {
            bail!("sgpath observe exited {status}:\n{stderr}");
        }
        let report: Value = serde_json::from_slice(&stdout).with_context(|| {
            format!(
                "sgpath observe printed no JSON report:\n{}\n{stderr}",
                String::from_utf8_lossy(&stdout)
            )
        })?;
        Ok(Observed {
            report,
            stderr,
            covered,
        })
    }
}

impl Lab {
    /// Runs `traffic` while `sgpath observe` counts ([`Observing`]), waits `settle` more
    /// (for answers still on their way and for sgpath to call a connection unanswered: its
    /// `--syn-timeout` is 3 s by default), then stops observe. [`Observed::covered`] is
    /// false only when the traffic outlasted [`OBSERVE_CAP`].
    ///
    /// ```no_run
    /// # fn f(lab: &mut xtask::lab::Lab, step: &xtask::lab::Step) -> anyhow::Result<()> {
    /// let bin = xtask::sgpath_bin();
    /// let settle = std::time::Duration::from_secs(4);
    /// let (outcome, observed) = lab.observe_during(&bin, settle, &[], |lab| lab.run_step(step))?;
    /// let path = observed.path_of(lab.pod_ip("my-deployment-5b7f8c9d6-2xk4p").into());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Observing::start`] and [`Observing::stop`], and whatever `traffic` returns.
    pub fn observe_during<T>(
        &mut self,
        bin: &Path,
        settle: Duration,
        extra: &[&str],
        traffic: impl FnOnce(&mut Lab) -> Result<T>,
    ) -> Result<(T, Observed)> {
        let observing = Observing::start(self, bin, extra)?;
        let result = traffic(self);
        std::thread::sleep(settle);
        let observed = observing.stop()?;
        Ok((result?, observed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path as today's sgpath writes it, and one with the SYN and DNS counters.
    const REPORT: &str = r#"{"paths":[
      {"kind":"branch-eni","pod_ip":"192.168.3.219","host_veth":"vlan1","vlan_id":1,
       "counters":{"to_pod":{"forwarded_packets":0,"forwarded_bytes":0,"dropped_packets":0,
                             "drops_by_reason":{},"drops_by_location":{}},
                   "from_pod":{"forwarded_packets":2,"forwarded_bytes":120,"dropped_packets":1,
                               "drops_by_reason":{"NO_SOCKET":1},"drops_by_location":{}}}},
      {"kind":"node-eni","pod_ip":"192.168.7.31","host_veth":"eni1","vlan_id":null,
       "counters":{"to_pod":{"forwarded_packets":6,"dropped_packets":0,"syn_in":{"80":2},
                             "syn_answered":{"80":1},"syn_unanswered":{"80":1},
                             "dns_answered":3,"dns_unanswered":0},
                   "from_pod":{"forwarded_packets":5,"dropped_packets":0}}}],
     "findings":[{"id":"tcp-early-demux","severity":"warning","subject":"node","evidence":[]}]}"#;

    #[test]
    fn reads_todays_counters_and_the_new_ones_when_present() {
        let v: Value = serde_json::from_str(REPORT).unwrap();
        let p = paths(&v);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].vlan_id, Some(1));
        let from = p[0].from_pod.as_ref().unwrap();
        assert_eq!((from.forwarded_packets, from.dropped_packets), (2, 1));
        assert_eq!(from.drops_by_reason["NO_SOCKET"], 1);
        assert_eq!(from.syn_in, None);
        assert_eq!(from.dns_unanswered, None);
        let to = p[1].to_pod.as_ref().unwrap();
        assert_eq!(to.syn_in.as_ref().unwrap()["80"], 2);
        assert_eq!(to.syn_unanswered.as_ref().unwrap()["80"], 1);
        assert_eq!(to.dns_unanswered, Some(0));
        assert_eq!(
            findings(&v),
            [FindingView {
                id: "tcp-early-demux".into(),
                severity: "warning".into(),
                subject: "node".into()
            }]
        );
    }

    #[test]
    fn an_inspect_report_has_paths_without_counters() {
        let v: Value = serde_json::from_str(
            r#"{"paths":[{"kind":"node-eni","pod_ip":"192.168.7.31","host_veth":"eni1"}]}"#,
        )
        .unwrap();
        assert_eq!(paths(&v)[0].to_pod, None);
        assert!(findings(&v).is_empty());
    }
}
