//! The sysctls that decide whether security-group paths work (`sysctl net.ipv4...`).

use std::collections::BTreeMap;

use serde::Serialize;

/// Sysctl values read from the node's network namespace, by full dotted name
/// (`net.ipv4.conf.eth0.rp_filter`). A value that could not be read is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Sysctls(pub BTreeMap<String, i64>);

impl Sysctls {
    pub const TCP_EARLY_DEMUX: &'static str = "net.ipv4.tcp_early_demux";
    pub const IP_FORWARD: &'static str = "net.ipv4.ip_forward";

    pub fn get(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }

    /// `net.ipv4.conf.<dev>.rp_filter`; `dev` may be `all` or `default`.
    pub fn rp_filter_name(dev: &str) -> String {
        format!("net.ipv4.conf.{dev}.rp_filter")
    }

    pub fn rp_filter(&self, dev: &str) -> Option<i64> {
        self.get(&Self::rp_filter_name(dev))
    }

    /// The rp_filter in force on a device: the kernel uses max(all, dev).
    pub fn effective_rp_filter(&self, dev: &str) -> Option<i64> {
        match (self.rp_filter("all"), self.rp_filter(dev)) {
            (Some(a), Some(d)) => Some(a.max(d)),
            (a, d) => a.or(d),
        }
    }
}
