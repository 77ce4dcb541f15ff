//! The VPC CNI's naming, reproduced for the lab (pkg/networkutils/names.go, pkg/sgpp).

use super::spec::{Mode, Pod, PodKind, Spec};

/// Host veth name suffix: the first 11 hex chars of sha1("<namespace>.<pod name>").
pub fn veth_suffix(namespace: &str, pod: &str) -> String {
    let hex = sha1_smol::Sha1::from(format!("{namespace}.{pod}"))
        .digest()
        .to_string();
    hex[..11].to_string()
}

/// The host veth of a pod: `vlan<hash>` for a strict branch pod, `eni<hash>` otherwise.
pub fn host_veth(spec: &Spec, pod: &Pod) -> String {
    let prefix = match (pod.kind, spec.mode_of(pod)) {
        (PodKind::Branch, Mode::Strict) => "vlan",
        _ => "eni",
    };
    format!("{prefix}{}", veth_suffix(&pod.namespace, &pod.name))
}

/// The VLAN sub-interface of a branch ENI.
pub fn vlan_link(vlan: u16) -> String {
    format!("vlan.eth.{vlan}")
}

/// The route table of a branch ENI.
pub fn vlan_table(vlan: u16) -> u32 {
    u32::from(vlan) + 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_hash_is_sha1_of_namespace_dot_name() {
        // Checked against coreutils sha1sum, not against this implementation.
        let expected = {
            let out = std::process::Command::new("sh")
                .args(["-c", "printf %s default.nginx | sha1sum | cut -c1-11"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(veth_suffix("default", "nginx"), expected);
        assert_eq!(veth_suffix("default", "nginx").len(), 11);
    }
}
