//! Prometheus sink: the metrics of a [`Report`] with counters (`sgpath agent`'s `/metrics`),
//! built with `prometheus-client` into a fresh registry per scrape, so a path that goes
//! takes its series with it.
//!
//! Series (all counters are since the agent attached; `namespace` and `pod` are empty
//! without a cluster, or for a path no pod of the node claims):
//!
//! | metric | labels |
//! |---|---|
//! | `sgpath_path_packets_total` | `path_kind, direction, verdict, interface, pod_ip, vlan, namespace, pod` |
//! | `sgpath_path_bytes_total` | the same, `verdict="forwarded"` only (IP bytes) |
//! | `sgpath_path_drops_total` | the path labels, `reason` (a drop reason, or the freeing function with `--drop-source location`) and `class` (`path`: the network or a policy; `endpoint`: teardown, no socket, TCP state) |
//! | `sgpath_path_syn_unanswered_total` | the path labels and `port` (the first 16 ports of the path, then `other`) |
//! | `sgpath_path_syn_refused_total` | the same: refused by a RST or ICMP port unreachable (closed port, never a security group) |
//! | `sgpath_path_foreign_packets_total` | the path labels, `direction="from_pod"`: packets the veth received with a source not the pod's |
//! | `sgpath_path_dns_unanswered_total` | the path labels |
//! | `sgpath_path_left_via_packets_total` | the path labels and `egress` |
//! | `sgpath_path_info` | `path_kind, interface, pod_ip, vlan, namespace, pod, eni, security_groups`: 1 per path (`eni`: the branch ENI of the pod's annotation or the node ENI IPAMD holds its address on; `security_groups`: the groups of the policies selecting the pod, comma-separated) |
//! | `sgpath_finding` | `id, severity, subject`: 1 while raised |
//! | `sgpath_probe_errors_total` | `kind` |
//! | `sgpath_probes_attached` | none: 1 when counting, 0 when degraded |
//! | `sgpath_build_info` | `version`: 1 |
//!
//! `direction` is `to_pod` or `from_pod`, `verdict` `forwarded` or `dropped`. No side effects.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use super::Report;
use crate::model::{DirectionCounters, drops};

/// Content type of [`render_openmetrics`].
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`render_text`].
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;

/// The metrics of `report` in the OpenMetrics text format (what Prometheus asks for first).
pub fn render_openmetrics(report: &Report, version: &str) -> String {
    let registry = registry(report, version);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// The metrics of `report` in the Prometheus text format 0.0.4 (for clients that do not ask
/// for OpenMetrics, and `promtool check metrics`): the same samples, with each counter's
/// `# HELP` and `# TYPE` naming the `_total` sample and no `# EOF`.
pub fn render_text(report: &Report, version: &str) -> String {
    let open = render_openmetrics(report, version);
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// One family's samples, encoded as they are. A `Family` puts each label set in a hash map
/// first: with 250 paths (3,300 samples) SipHashing the labels was a fifth of a scrape. Each
/// path's label sets are distinct, so nothing needs summing.
#[derive(Debug)]
struct Samples {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
}

impl Samples {
    fn counter(name: &'static str, help: &'static str) -> Samples {
        Samples {
            name,
            help,
            kind: MetricType::Counter,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, base: &Labels, extra: &[(&str, &str)], value: u64) {
        self.samples.push((with(base, extra), value));
    }
}

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // `Registry::register` ends each help text with a period; so do these.
        let help = format!("{}.", self.help);
        let mut family = encoder.encode_descriptor(self.name, &help, None, self.kind)?;
        for (labels, value) in &self.samples {
            let sample = family.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
                _ => ConstGauge::new(*value as i64).encode(sample)?,
            }
        }
        Ok(())
    }
}

/// Per-path families, one registry per scrape.
struct PathFamilies {
    packets: Samples,
    bytes: Samples,
    drops: Samples,
    syn_unanswered: Samples,
    syn_refused: Samples,
    dns_unanswered: Samples,
    foreign: Samples,
    left_via: Samples,
    info: Samples,
}

fn with(base: &Labels, extra: &[(&str, &str)]) -> Labels {
    let mut l = base.clone();
    l.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    l
}

impl PathFamilies {
    fn new() -> PathFamilies {
        PathFamilies {
            packets: Samples::counter(
                "sgpath_path_packets",
                "Packets a pod's host veth handed to it (to_pod) or received from it (from_pod), forwarded or dropped by the kernel",
            ),
            bytes: Samples::counter("sgpath_path_bytes", "IP bytes forwarded on a pod's path"),
            drops: Samples::counter(
                "sgpath_path_drops",
                "Kernel drops on a pod's path, by drop reason (or, without reasons, freeing function) and class: path (the network or a policy) or endpoint (teardown, no socket, TCP state)",
            ),
            syn_unanswered: Samples::counter(
                "sgpath_path_syn_unanswered",
                "TCP connections that left a path and got no SYN-ACK within the timeout, by destination port",
            ),
            syn_refused: Samples::counter(
                "sgpath_path_syn_refused",
                "TCP connections that left a path and were refused (RST or ICMP port unreachable: the port is closed, the network let them through), by destination port",
            ),
            foreign: Samples::counter(
                "sgpath_path_foreign_packets",
                "Packets a pod's host veth received with a source address not the pod's (counted on that veth only)",
            ),
            dns_unanswered: Samples::counter(
                "sgpath_path_dns_unanswered",
                "DNS queries that left a path and got no answer within the timeout",
            ),
            left_via: Samples::counter(
                "sgpath_path_left_via_packets",
                "A pod's packets that left the node, by egress interface",
            ),
            info: Samples {
                kind: MetricType::Gauge,
                ..Samples::counter(
                    "sgpath_path_info",
                    "One series per path (value 1): its pod, ENI and the security groups of the policies selecting the pod",
                )
            },
        }
    }

    fn add(&mut self, base: &Labels, direction: &str, d: &DirectionCounters) {
        let base = with(base, &[("direction", direction)]);
        for (verdict, n) in [
            ("forwarded", d.forwarded_packets),
            ("dropped", d.dropped_packets),
        ] {
            self.packets.push(&base, &[("verdict", verdict)], n);
        }
        self.bytes
            .push(&base, &[("verdict", "forwarded")], d.forwarded_bytes);
        // Every drop has exactly one name: its reason, or without reasons its freeing
        // function (`unknown` without kallsyms). Each label set only grows; the set of names
        // is bounded by the drop map (`--max-drop-keys`).
        if d.drops_by_reason.is_empty() {
            for (location, &n) in &d.drops_by_location {
                let class = drops::of_location(location).as_str();
                self.drops
                    .push(&base, &[("reason", location), ("class", class)], n);
            }
        } else {
            for (reason, &n) in &d.drops_by_reason {
                // NOT_SPECIFIED is the path's where the input route freed it
                // (`drops::of_drop`): that share is its own series, class path.
                let path_share = if reason == "NOT_SPECIFIED" {
                    d.not_specified_path_drops.min(n)
                } else {
                    0
                };
                if path_share > 0 {
                    self.drops.push(
                        &base,
                        &[
                            ("reason", reason),
                            ("class", drops::DropClass::Path.as_str()),
                        ],
                        path_share,
                    );
                }
                if n > path_share || path_share == 0 {
                    let class = drops::of_reason(reason).as_str();
                    self.drops.push(
                        &base,
                        &[("reason", reason), ("class", class)],
                        n - path_share,
                    );
                }
            }
        }
        for (port, &n) in &d.syn_unanswered {
            self.syn_unanswered
                .push(&base, &[("port", &port.to_string())], n);
        }
        for (port, &n) in &d.syn_refused {
            self.syn_refused
                .push(&base, &[("port", &port.to_string())], n);
        }
        if direction == "from_pod" {
            self.foreign.push(&base, &[], d.foreign_packets);
        }
        self.dns_unanswered.push(&base, &[], d.dns_unanswered);
        for (egress, &n) in &d.left_via {
            self.left_via.push(&base, &[("egress", egress)], n);
        }
    }

    fn register(self, registry: &mut Registry) {
        for family in [
            self.packets,
            self.bytes,
            self.drops,
            self.syn_unanswered,
            self.syn_refused,
            self.dns_unanswered,
            self.foreign,
            self.left_via,
            self.info,
        ] {
            registry.register_collector(Box::new(family));
        }
    }
}

fn registry(report: &Report, version: &str) -> Registry {
    let mut registry = Registry::default();
    let mut paths = PathFamilies::new();
    for p in &report.paths {
        let (namespace, pod) = p
            .pod
            .as_ref()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .unwrap_or_default();
        let base: Labels = [
            ("path_kind", p.kind.as_str().to_owned()),
            ("interface", p.host_veth.clone()),
            (
                "pod_ip",
                p.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ),
            ("vlan", p.vlan_id.map(|v| v.to_string()).unwrap_or_default()),
            ("namespace", namespace),
            ("pod", pod),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let groups = p
            .pod
            .as_ref()
            .map(|r| r.security_groups.join(","))
            .unwrap_or_default();
        paths.info.push(
            &base,
            &[
                ("eni", p.eni_id.as_deref().unwrap_or_default()),
                ("security_groups", &groups),
            ],
            1,
        );
        let Some(c) = &p.counters else { continue };
        paths.add(&base, "to_pod", &c.to_pod);
        paths.add(&base, "from_pod", &c.from_pod);
    }
    paths.register(&mut registry);
    let findings = Family::<Labels, Gauge>::default();
    for f in &report.findings {
        let severity = serde_json::to_value(f.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        findings
            .get_or_create(&vec![
                ("id".to_owned(), f.id.as_str().to_owned()),
                ("severity".to_owned(), severity),
                ("subject".to_owned(), f.subject.clone()),
            ])
            .set(1);
    }
    registry.register("sgpath_finding", "1 while a finding is raised", findings);
    let errors = Family::<Labels, Counter>::default();
    if let Some(p) = &report.probes {
        for (kind, &n) in &p.errors {
            errors
                .get_or_create(&vec![("kind".to_owned(), kind.clone())])
                .inc_by(n);
        }
    }
    registry.register(
        "sgpath_probe_errors",
        "Errors the eBPF programs counted instead of failing (a full map), by kind",
        errors,
    );
    let uncounted = Gauge::<i64>::default();
    if let Some(p) = &report.probes {
        uncounted.set(p.paths_uncounted as i64);
    }
    registry.register(
        "sgpath_paths_uncounted",
        "Paths the probes do not count: the path maps are full (--max-paths)",
        uncounted,
    );
    let attached = Gauge::<i64>::default();
    attached.set(i64::from(report.probes.is_some()));
    registry.register(
        "sgpath_probes_attached",
        "1 when the eBPF probes count, 0 while the agent runs degraded (topology and checks only)",
        attached,
    );
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![("version".to_owned(), version.to_owned())])
        .set(1);
    registry.register(
        "sgpath_build_info",
        "The sgpath build (value 1) and its version",
        build,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        checks::{Finding, FindingId, Severity},
        model::{Node, PathCounters, PathKind, Topology},
    };

    fn report() -> Report {
        let mut topo = Topology::default();
        let mut c = PathCounters::default();
        c.to_pod.forwarded_packets = 7;
        c.to_pod.forwarded_bytes = 700;
        c.to_pod.dropped_packets = 3;
        c.to_pod.drops_by_reason.insert("NO_SOCKET".into(), 3);
        // 5 NOT_SPECIFIED drops, 4 of them freed by the input route (a martian).
        c.from_pod.dropped_packets = 5;
        c.from_pod.drops_by_reason.insert("NOT_SPECIFIED".into(), 5);
        c.from_pod.not_specified_path_drops = 4;
        c.from_pod.syn_unanswered.insert(443.into(), 2);
        c.from_pod.syn_refused.insert(crate::model::Port::Other, 4);
        c.from_pod.foreign_packets = 6;
        c.from_pod.left_via.insert("eth0".into(), 5);
        topo.paths.push(crate::model::Path {
            kind: PathKind::BranchEni,
            mode: None,
            pod_ip: Some("192.168.3.219".parse().unwrap()),
            host_veth: "vlan0123456789a".into(),
            vlan_id: Some(5),
            vlan_link: None,
            trunk: None,
            route_table: 105,
            rules: Vec::new(),
            eni_id: Some("eni-0b1".into()),
            pod: Some(crate::model::k8s::PodRef {
                namespace: "sg-test".into(),
                name: "web-1".into(),
                matched_by: crate::model::k8s::MatchedBy::PodIp,
                branch_eni: Some("eni-0b1".into()),
                branch_vlan: Some(5),
                security_groups: vec!["sg-1".into(), "sg-2".into()],
            }),
            counters: Some(c),
            window: None,
        });
        let findings = vec![Finding::new(
            FindingId::PathDrops,
            Severity::Warning,
            "192.168.3.219",
        )];
        Report::new(&Node::default(), &topo, findings)
    }

    #[test]
    fn text_names_the_documented_series() {
        let t = render_text(&report(), "0.1.0");
        let labels = "path_kind=\"branch-eni\",interface=\"vlan0123456789a\",pod_ip=\"192.168.3.219\",vlan=\"5\",namespace=\"sg-test\",pod=\"web-1\"";
        for line in [
            "# TYPE sgpath_path_packets_total counter".to_owned(),
            format!(
                "sgpath_path_packets_total{{{labels},direction=\"to_pod\",verdict=\"forwarded\"}} 7"
            ),
            format!(
                "sgpath_path_packets_total{{{labels},direction=\"to_pod\",verdict=\"dropped\"}} 3"
            ),
            format!(
                "sgpath_path_bytes_total{{{labels},direction=\"to_pod\",verdict=\"forwarded\"}} 700"
            ),
            format!(
                "sgpath_path_drops_total{{{labels},direction=\"to_pod\",reason=\"NO_SOCKET\",class=\"endpoint\"}} 3"
            ),
            format!(
                "sgpath_path_syn_refused_total{{{labels},direction=\"from_pod\",port=\"other\"}} 4"
            ),
            format!(
                "sgpath_path_drops_total{{{labels},direction=\"from_pod\",reason=\"NOT_SPECIFIED\",class=\"path\"}} 4"
            ),
            format!(
                "sgpath_path_drops_total{{{labels},direction=\"from_pod\",reason=\"NOT_SPECIFIED\",class=\"endpoint\"}} 1"
            ),
            format!("sgpath_path_foreign_packets_total{{{labels},direction=\"from_pod\"}} 6"),
            format!(
                "sgpath_path_syn_unanswered_total{{{labels},direction=\"from_pod\",port=\"443\"}} 2"
            ),
            format!(
                "sgpath_path_left_via_packets_total{{{labels},direction=\"from_pod\",egress=\"eth0\"}} 5"
            ),
            "sgpath_finding{id=\"path-drops\",severity=\"warning\",subject=\"192.168.3.219\"} 1"
                .to_owned(),
            "sgpath_build_info{version=\"0.1.0\"} 1".to_owned(),
            format!("sgpath_path_info{{{labels},eni=\"eni-0b1\",security_groups=\"sg-1,sg-2\"}} 1"),
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
        assert!(!t.contains("# EOF"), "{t}");
        let open = render_openmetrics(&report(), "0.1.0");
        assert!(open.ends_with("# EOF\n") && open.contains("# TYPE sgpath_path_packets counter"));
    }
}
