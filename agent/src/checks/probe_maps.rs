//! `probe-map-full`: one of the eBPF programs' maps was full, so some packets, drops or
//! connections went uncounted. The programs never fail closed: they count what they could
//! not record (`sgpath_probe_errors_total{kind}`), and this finding says what that means.

use sgpath_ebpf::ProgError;

use super::{Finding, FindingId, Severity};

/// What a full map of `kind` leaves uncounted.
fn lost(kind: ProgError) -> &'static str {
    match kind {
        ProgError::DropMapFull => "drops of a new (path, reason) pair",
        ProgError::ConnMapFull => "SYNs and DNS queries awaiting an answer",
        ProgError::LeftViaMapFull => "packets leaving by a new (path, interface) pair",
    }
}

/// `total` errors of `kind` since the agent attached, the last `ago_secs` ago, in `map` of
/// `max` entries: a warning while the map keeps overflowing.
pub fn map_full(kind: ProgError, (map, max): (&str, u32), total: u64, ago_secs: u64) -> Finding {
    let what = lost(kind);
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
                 after their last retransmit. A larger map: --max-conns"
            }
            ProgError::DropMapFull => {
                "a path's drop entries free when its pod goes; a larger map: --max-drop-keys \
                 (the agent restarts with it)"
            }
            _ => {
                "restart the agent to free the map (`kubectl delete pod` of the node's sgpath \
                  pod); if it recurs, this node has more interfaces than sgpath's maps hold: \
                  report it"
            }
        })
}

/// `probe-map-full` for paths: `veths` (a pod's host veth each) have no slot in the path
/// maps, which hold `max` paths. Raised while any path goes uncounted.
pub fn paths_uncounted(veths: &[String], max: u32) -> Finding {
    let shown: Vec<&str> = veths.iter().take(5).map(String::as_str).collect();
    let more = veths.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Finding::new(FindingId::ProbeMapFull, Severity::Warning, "POD_PATHS")
        .evidence(format!(
            "{} paths are not counted ({}{more}): the path maps hold {max} paths and are full",
            veths.len(),
            shown.join(", ")
        ))
        .evidence(format!(
            "sgpath_paths_uncounted = {}; topology and checks cover them, counters do not; \
             every other path counts exactly",
            veths.len()
        ))
        .fix(
            "slots free as pods go, and an uncounted path takes the next free one; a larger \
             map: --max-paths (the agent restarts with it)",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_map_its_size_and_the_counts() {
        let f = map_full(ProgError::ConnMapFull, ("CONNS", 16384), 700, 2);
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

    #[test]
    fn uncounted_paths_are_named_five_at_most() {
        let veths: Vec<String> = (0..7).map(|i| format!("eni{i}")).collect();
        let f = paths_uncounted(&veths, 2);
        assert_eq!(f.subject, "POD_PATHS");
        assert_eq!(
            f.evidence[0],
            "7 paths are not counted (eni0, eni1, eni2, eni3, eni4 and 2 more): the path maps \
             hold 2 paths and are full"
        );
        assert!(f.evidence[1].starts_with("sgpath_paths_uncounted = 7;"));
    }
}
