//! The capabilities sgpath uses, what each one buys, and which of them this process has
//! (CapEff in /proc/self/status). The agent says once, at start, what it cannot do for want
//! of one; the operations themselves still fail with their own errors.

/// A capability sgpath uses (the number is its bit in CapEff, linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    NetAdmin = 12,
    SysResource = 24,
    Syslog = 34,
    Perfmon = 38,
    Bpf = 39,
}

impl Capability {
    /// Every capability sgpath uses, in the order they are reported.
    pub const ALL: [Capability; 5] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::NetAdmin,
        Capability::SysResource,
        Capability::Syslog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::SysResource => "CAP_SYS_RESOURCE",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
        }
    }

    /// What sgpath cannot do without it.
    pub fn without(self) -> &'static str {
        match self {
            Capability::Bpf => {
                "no eBPF programs: no per-path counters, drops or connections (topology and \
                 checks only)"
            }
            Capability::Perfmon => {
                "the tracing programs cannot attach: no per-path counters, drops or \
                 connections (topology and checks only)"
            }
            Capability::NetAdmin => {
                "pod namespaces unreadable: a pod's address is known only from its route or \
                 rules"
            }
            Capability::SysResource => {
                "no RLIMIT_MEMLOCK raise: kernels before 5.11 (Amazon Linux 2) refuse the \
                 eBPF maps"
            }
            Capability::Syslog => {
                "/proc/kallsyms addresses read as zero: drops named by location (5.10) show \
                 addresses, not functions"
            }
        }
    }
}

/// The effective capability set of this process (0 when it cannot be read).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities of [`Capability::ALL`] missing from the effective set `eff`.
pub fn missing(eff: u64) -> Vec<Capability> {
    Capability::ALL
        .into_iter()
        .filter(|&c| eff & (1u64 << c as u32) == 0)
        .collect()
}

/// Whether this process has `cap`.
pub fn has(cap: Capability) -> bool {
    effective() & (1u64 << cap as u32) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_reads_capeff_bits() {
        // root's usual set: everything.
        assert!(missing(0x000001ffffffffff).is_empty());
        let no_bpf = 0x000001ffffffffff & !(1u64 << 39);
        assert_eq!(missing(no_bpf), [Capability::Bpf]);
        // Only CAP_NET_ADMIN and CAP_PERFMON.
        assert_eq!(
            missing((1 << 12) | (1 << 38)),
            [Capability::Bpf, Capability::SysResource, Capability::Syslog]
        );
    }
}
