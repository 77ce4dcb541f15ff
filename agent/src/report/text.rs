//! The human-readable report: trunks, then paths grouped by kind, then sysctls and findings.

use std::fmt::Write as _;

use super::Report;
use crate::model::{PathKind, table_name};

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Render a report as aligned text tables.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel {}   enforcing mode: {}",
        r.kernel,
        r.mode.as_str()
    );
    let _ = writeln!(out);
    let mut rows = vec![vec![
        "TRUNK".into(),
        "IFINDEX".into(),
        "MTU".into(),
        "STATE".into(),
        "VLANS".into(),
    ]];
    for t in &r.trunks {
        let vlans = t
            .vlans
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        rows.push(vec![
            t.name.clone(),
            t.ifindex.to_string(),
            opt(&t.mtu),
            if t.up { "up" } else { "down" }.into(),
            vlans,
        ]);
    }
    if r.trunks.is_empty() {
        rows.push(vec!["(none: no vlan.eth.* link on this node)".into()]);
    }
    table(&mut out, &rows);
    for kind in [PathKind::BranchEni, PathKind::NodeEni] {
        let paths: Vec<_> = r.paths.iter().filter(|p| p.kind == kind).collect();
        let _ = writeln!(
            out,
            "\n{} PATHS ({})",
            kind.as_str().to_uppercase(),
            paths.len()
        );
        let mut rows = vec![
            [
                "POD IP",
                "HOST VETH",
                "MODE",
                "VLAN",
                "VLAN LINK",
                "TRUNK",
                "TABLE",
                "RULES",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for p in paths {
            let mode = p.mode.map(|m| m.as_str());
            let rules = p
                .rules
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} lookup {}",
                        r.priority,
                        r.selector,
                        table_name(r.table)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            rows.push(vec![
                opt(&p.pod_ip),
                p.host_veth.clone(),
                opt(&mode),
                opt(&p.vlan_id),
                opt(&p.vlan_link),
                opt(&p.trunk),
                p.route_table.to_string(),
                rules,
            ]);
        }
        table(&mut out, &rows);
    }
    if let Some(source) = r.drop_source {
        counters(&mut out, r, source);
    }
    let _ = writeln!(out, "\nSYSCTLS");
    for name in [
        "net.ipv4.tcp_early_demux",
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
    ] {
        let _ = writeln!(out, "  {name} = {}", opt(&r.sysctls.get(name)));
    }
    let refused: Vec<_> = r
        .lookups
        .iter()
        .filter(|l| l.forward.error.is_some())
        .collect();
    let _ = writeln!(
        out,
        "\nROUTE LOOKUPS ({} for {} pods, {} refused)",
        r.lookups.len(),
        r.paths.iter().filter(|p| p.pod_ip.is_some()).count(),
        refused.len()
    );
    for l in refused {
        let _ = writeln!(
            out,
            "  {} ({}) -> {}: {}",
            l.pod_ip,
            l.host_veth,
            l.address,
            l.forward.summary()
        );
    }
    let _ = writeln!(out, "\nFINDINGS ({})", r.findings.len());
    for f in &r.findings {
        let sev = format!("{:?}", f.severity).to_uppercase();
        let _ = writeln!(out, "  [{sev}] {} on {}", f.id.as_str(), f.subject);
        for e in &f.evidence {
            let _ = writeln!(out, "      evidence: {e}");
        }
        let _ = writeln!(out, "      fix: {}", f.remediation);
    }
    out
}

/// Per path kind: forwarded and dropped packets each way, and the top drop names.
fn counters(out: &mut String, r: &Report, source: crate::ebpf::paths::DropSource) {
    let by = match source {
        crate::ebpf::paths::DropSource::Reason => "reason",
        crate::ebpf::paths::DropSource::Location => "location",
    };
    for kind in [PathKind::BranchEni, PathKind::NodeEni] {
        let _ = writeln!(
            out,
            "\n{} COUNTERS (drops by {by})",
            kind.as_str().to_uppercase()
        );
        let mut rows = vec![
            [
                "POD IP",
                "TO POD FWD",
                "TO POD DROP",
                "FROM POD FWD",
                "FROM POD DROP",
                "SYN IN",
                "SYN OUT OK/CLOSED/LOST",
                "NODE SYN OK/CLOSED/LOST",
                "DNS OK/CLOSED/LOST",
                "LEFT VIA",
                "TOP DROPS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for p in r.paths.iter().filter(|p| p.kind == kind) {
            let Some(c) = &p.counters else { continue };
            let mut names: Vec<(String, u64)> = Vec::new();
            for d in [&c.to_pod, &c.from_pod] {
                let named = match source {
                    crate::ebpf::paths::DropSource::Reason => &d.drops_by_reason,
                    crate::ebpf::paths::DropSource::Location => &d.drops_by_location,
                };
                for (k, v) in named {
                    match names.iter_mut().find(|(n, _)| n == k) {
                        Some((_, total)) => *total += v,
                        None => names.push((k.clone(), *v)),
                    }
                }
            }
            names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let top = names
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(vec![
                opt(&p.pod_ip),
                c.to_pod.forwarded_packets.to_string(),
                c.to_pod.dropped_packets.to_string(),
                c.from_pod.forwarded_packets.to_string(),
                c.from_pod.dropped_packets.to_string(),
                sum(&c.to_pod.syn_in).to_string(),
                format!(
                    "{}/{}/{}",
                    sum(&c.from_pod.syn_answered),
                    sum(&c.from_pod.syn_refused),
                    sum(&c.from_pod.syn_unanswered)
                ),
                format!(
                    "{}/{}/{}",
                    sum(&c.to_pod.syn_answered),
                    sum(&c.to_pod.syn_refused),
                    sum(&c.to_pod.syn_unanswered)
                ),
                format!(
                    "{}/{}/{}",
                    c.from_pod.dns_answered, c.from_pod.dns_refused, c.from_pod.dns_unanswered
                ),
                c.from_pod
                    .left_via
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                top,
            ]);
        }
        table(out, &rows);
    }
    let _ = writeln!(
        out,
        "\nCLOSED: refused by a RST or ICMP port unreachable (nothing listens on the port; the \
         network and security groups let it through). LOST: no answer at all."
    );
}

fn sum<K>(m: &std::collections::BTreeMap<K, u64>) -> u64 {
    m.values().sum()
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
