//! `enforcing-mode-mismatch`: the CNI config's podSGEnforcingMode disagrees with what the
//! node's veths and rules show (pods set up before a mode change keep the old layout).

use super::{Finding, FindingId, Severity};
use crate::model::{EnforcingMode, Node, Topology};

pub fn mismatch(node: &Node, topo: &Topology) -> Vec<Finding> {
    let (Some(cni), Some(seen)) = (node.cni.as_ref(), topo.mode) else {
        return Vec::new();
    };
    let Some(configured) = cni.enforcing_mode else {
        return Vec::new();
    };
    let other = |m: EnforcingMode| {
        topo.paths
            .iter()
            .filter(|p| p.mode == Some(m))
            .map(|p| p.host_veth.clone())
            .collect::<Vec<_>>()
    };
    let odd = match configured {
        EnforcingMode::Strict => other(EnforcingMode::Standard),
        EnforcingMode::Standard => other(EnforcingMode::Strict),
    };
    if odd.is_empty() && seen == configured {
        return Vec::new();
    }
    vec![Finding::new(FindingId::EnforcingModeMismatch, Severity::Info, cni.path.clone())
        .evidence(format!("{} sets podSGEnforcingMode {}", cni.path, configured.as_str()))
        .evidence(format!("branch pods set up the other way: {}", odd.join(", ")))
        .fix("restart those pods (kubectl rollout restart deployment/...) so the CNI sets them up in the configured mode")]
}
