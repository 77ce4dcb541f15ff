//! Sysctls of the node's namespace from /proc/sys (`sysctl net.ipv4.tcp_early_demux ...`).
//! /proc/sys/net shows the network namespace of the reading process.

use std::path::Path;

use crate::model::{Link, ReadWarning, Sysctls};

/// Read `tcp_early_demux`, `ip_forward` and `rp_filter` for all, default and each link.
/// Returns the values and one warning per sysctl that exists in principle but could not be read.
pub fn read(proc_sys: &Path, links: &[Link]) -> (Sysctls, Vec<ReadWarning>) {
    let mut names = vec![
        Sysctls::TCP_EARLY_DEMUX.to_string(),
        Sysctls::IP_FORWARD.to_string(),
    ];
    names.push(Sysctls::rp_filter_name("all"));
    names.push(Sysctls::rp_filter_name("default"));
    names.extend(links.iter().map(|l| Sysctls::rp_filter_name(&l.name)));
    let mut out = Sysctls::default();
    let mut warnings = Vec::new();
    for name in names {
        // Interface names may hold dots (vlan.eth.1), so build the path from the known parts.
        let rel = match name
            .strip_prefix("net.ipv4.conf.")
            .and_then(|r| r.strip_suffix(".rp_filter"))
        {
            Some(dev) => format!("net/ipv4/conf/{dev}/rp_filter"),
            None => name.replace('.', "/"),
        };
        match std::fs::read_to_string(proc_sys.join(&rel)) {
            Ok(text) => match text.trim().parse::<i64>() {
                Ok(v) => {
                    out.0.insert(name, v);
                }
                Err(_) => {
                    let msg = format!("sysctl {name}: unexpected value {:?}", text.trim());
                    warnings.push(ReadWarning::new(name, msg))
                }
            },
            Err(e) => {
                let msg = format!(
                    "sysctl {name}: cannot read {}: {e}",
                    proc_sys.join(&rel).display()
                );
                warnings.push(ReadWarning::new(name, msg))
            }
        }
    }
    (out, warnings)
}
