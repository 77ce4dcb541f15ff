//! Sysctls of the node's namespace from /proc/sys (`sysctl net.ipv4.tcp_early_demux ...`).
//! /proc/sys/net shows the network namespace of the reading process.

use std::path::Path;

use super::netconf::{self, Conf};
use crate::model::{Link, ReadWarning, Sysctls};

/// Read `tcp_early_demux`, `ip_forward` and `rp_filter` for all, default and each link.
/// Returns the values and one warning per sysctl that exists in principle but could not be read.
/// The `rp_filter`s come from one netconf dump ([`netconf`]) when `proc_sys` is this
/// process's own `/proc/sys`; a link the dump leaves out, or every link when the dump fails,
/// is read from its file.
pub fn read(proc_sys: &Path, links: &[Link]) -> (Sysctls, Vec<ReadWarning>) {
    let mut out = Sysctls::default();
    let dumped = match proc_sys == Path::new("/proc/sys") {
        true => netconf::rp_filters().unwrap_or_default(),
        false => Default::default(),
    };
    let mut names = vec![
        Sysctls::TCP_EARLY_DEMUX.to_string(),
        Sysctls::IP_FORWARD.to_string(),
    ];
    let confs = [(Conf::All, "all"), (Conf::Default, "default")].into_iter();
    let confs = confs.chain(
        links
            .iter()
            .map(|l| (Conf::Link(l.ifindex), l.name.as_str())),
    );
    for (conf, dev) in confs {
        let name = Sysctls::rp_filter_name(dev);
        match dumped.get(&conf) {
            Some(&v) => {
                out.0.insert(name, v);
            }
            None => names.push(name),
        }
    }
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
