//! Integration tests on the host kernel (no 802.1Q here): network namespaces only.
//! Run as root by `cargo xtask test` (`cargo test -p sgpath-tests --test host`).

use sgpath_tests::{expected_paths, inspect, lab, path_keys, spec};

#[test]
fn ebpf_counts_exact_packets() {
    sgpath_tests::ebpf_counts_exact_packets();
}

/// Two ordinary pods and a standard-mode branch pod whose VLAN link does not exist.
#[test]
fn inspect_host_lab_gives_exactly_its_paths() {
    let spec = spec("host");
    let lab = lab(spec.clone(), "sgt-h");
    let (doc, _) = inspect(&lab);
    assert_eq!(doc["schema"], "sgpath.report/v1");
    assert_eq!(doc["mode"], "standard");
    assert_eq!(doc["trunks"].as_array().unwrap().len(), 0);
    let got = path_keys(&doc);
    assert_eq!(
        got,
        expected_paths(&spec),
        "paths differ:\n{}",
        serde_json::to_string_pretty(&doc["paths"]).unwrap()
    );
    // Spelled out once, without the expectation helper:
    let std = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == "192.168.41.23")
        .unwrap();
    assert_eq!(
        (
            std["kind"].as_str(),
            std["vlan_id"].as_u64(),
            std["route_table"].as_u64()
        ),
        (Some("branch-eni"), Some(5), Some(105))
    );
    assert!(std["vlan_link"].is_null() && std["trunk"].is_null());
    assert_eq!(doc["sysctls"]["net.ipv4.ip_forward"], 1);
    assert_eq!(doc["sysctls"]["net.ipv4.conf.eth0.rp_filter"], 2);
}

/// The VPC delivers to ordinary pods through the node ENI and its security group; a
/// branch pod whose VLAN does not exist is unreachable, as on a node whose branch ENI
/// never got attached.
#[test]
fn bastion_reaches_ordinary_pods_through_the_node_security_group() {
    let mut lab = lab(spec("host"), "sgt-h2");
    let answered = |lab: &xtask::lab::Lab| -> Vec<String> {
        lab.get_from_bastion(std::time::Duration::from_secs(2))
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(answered(&lab), ["ordinary-a", "ordinary-b"]);
    // Remove every ingress rule of the node's group: nothing answers any more.
    lab.spec.group_mut("sg-node").unwrap().ingress.clear();
    lab.apply_security_groups().unwrap();
    assert_eq!(answered(&lab), Vec::<String>::new());
}
