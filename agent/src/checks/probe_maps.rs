//! `probe-map-full`: one of the eBPF programs' maps was full, so some packets, drops or
//! connections went uncounted. The programs never fail closed: they count what they could
//! not record (`sgpath_probe_errors_total{kind}`), and this finding says what that means.

use sgpath_ebpf::{MAX_CONNS, MAX_DROP_KEYS, MAX_INTERFACES, MAX_LEFT_VIA, ProgError};

use super::{Finding, FindingId, Severity};

/// What a full map of `kind` leaves uncounted, and how many entries it holds.
fn lost(kind: ProgError) -> (&'static str, &'static str, u32) {
    match kind {
        ProgError::MapFull => ("IF_COUNTERS", "packets on an interface", MAX_INTERFACES),
        ProgError::DropMapFull => ("DROPS", "drops of a new (path, reason) pair", MAX_DROP_KEYS),
        ProgError::ConnMapFull => (
            "CONNS",
            "SYNs and DNS queries awaiting an answer",
            MAX_CONNS,
        ),
        ProgError::LeftViaMapFull => (
            "LEFT_VIA",
            "packets leaving by a new (path, interface) pair",
            MAX_LEFT_VIA,
        ),
    }
}

/// `total` errors of `kind` since the agent attached, the last `ago_secs` ago: a warning
/// while the map keeps overflowing.
pub fn map_full(kind: ProgError, total: u64, ago_secs: u64) -> Finding {
    let (map, what, max) = lost(kind);
    Finding::new(FindingId::ProbeMapFull, Severity::Warning, map)
        .evidence(format!(
            "{total} {what} went uncounted since the agent attached, the last {ago_secs} s \
             ago: map {map} holds {max} entries and was full"
        ))
        .evidence(format!(
            "sgpath_probe_errors_total{{kind=\"{kind:?}\"}} = {total}; the counts of this kind \
             are incomplete while it lasts, every other count is exact"
        ))
        .fix(match kind {
            ProgError::ConnMapFull => {
                "look for a pod opening connections nobody answers (a scan, a retry storm): \
                 `sgpath observe` lists the top unanswered flows; entries free themselves 35 s \
                 after their last retransmit"
            }
            _ => {
                "restart the agent to free the map (`kubectl delete pod` of the node's sgpath \
                  pod); if it recurs, this node has more interfaces or drop sites than sgpath's \
                  maps hold: report it"
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_map_its_size_and_the_counts() {
        let f = map_full(ProgError::ConnMapFull, 700, 2);
        assert_eq!(
            (f.id, f.severity, f.subject.as_str()),
            (FindingId::ProbeMapFull, Severity::Warning, "CONNS")
        );
        assert_eq!(
            f.evidence[0],
            "700 SYNs and DNS queries awaiting an answer went uncounted since the agent \
             attached, the last 2 s ago: map CONNS holds 16384 entries and was full"
        );
        assert!(f.evidence[1].contains("kind=\"ConnMapFull\"} = 700"));
    }
}
