//! Integration tests that need 802.1Q VLANs: run by `cargo xtask test` inside virtme-ng
//! VMs on Debian 6.1 and 6.12 (the kernels of Amazon Linux 2023), as root, with
//! `SGPATH_BIN` and `SGPATH_KERNEL` set. On a kernel without 802.1Q they fail loudly.

use std::time::Duration;

use sgpath_tests::{expected_paths, inspect, lab, path_keys, spec};

fn kernel() -> String {
    std::env::var("SGPATH_KERNEL").unwrap_or_else(|_| "host".into())
}

#[test]
fn ebpf_counts_exact_packets() {
    sgpath_tests::ebpf_counts_exact_packets();
}

/// Trunk eth1 with VLANs 1, 7 and 120; two strict branch pods, one standard branch pod and
/// two ordinary pods, named and numbered as the VPC CNI does.
#[test]
fn inspect_mixed_node_gives_exactly_its_paths() {
    let spec = spec("mixed");
    let lab = lab(spec.clone(), "sgt-m");
    let (doc, code) = inspect(&lab);
    assert_eq!(doc["mode"], "strict", "on {}", kernel());
    assert_eq!(
        doc["kernel"].as_str().map(|k| k.starts_with(&kernel())),
        Some(true),
        "{}",
        doc["kernel"]
    );
    let trunks = doc["trunks"].as_array().unwrap();
    assert_eq!(trunks.len(), 1);
    assert_eq!(trunks[0]["name"], "eth1");
    assert_eq!(trunks[0]["vlans"], serde_json::json!([1, 7, 120]));
    assert_eq!(trunks[0]["mtu"], 9001);
    let got = path_keys(&doc);
    assert_eq!(
        got,
        expected_paths(&spec),
        "paths differ on {}:\n{}",
        kernel(),
        serde_json::to_string_pretty(&doc["paths"]).unwrap()
    );
    // Spelled out once without the expectation helper: strict pod on VLAN 7.
    let p = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == "192.168.26.147")
        .unwrap();
    assert_eq!(p["vlan_link"], "vlan.eth.7");
    assert_eq!(p["route_table"], 107);
    assert!(p["host_veth"].as_str().unwrap().starts_with("vlan"));
    assert_eq!(p["rules"].as_array().unwrap().len(), 2);
    assert_eq!(
        code,
        0,
        "a healthy node exits 0: {}",
        serde_json::to_string_pretty(&doc["findings"]).unwrap()
    );
}

fn answering(lab: &xtask::lab::Lab) -> Vec<String> {
    let mut v: Vec<String> = lab
        .get_from_bastion(Duration::from_secs(3))
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n)
        .collect();
    v.sort();
    v
}

/// The seed scenario, from the bastion: all 8 pods answer; without 80 in the pod security
/// group only the 4 ordinary pods do; with 80 back but gone from the node's group only the
/// 4 branch pods do.
#[test]
fn seed_scenario_security_groups_decide_who_answers() {
    let mut lab = lab(spec("default"), "sgt-d");
    let sg: Vec<String> = lab
        .spec
        .pods
        .iter()
        .filter(|p| p.vlan.is_some())
        .map(|p| p.name.clone())
        .collect();
    let normal: Vec<String> = lab
        .spec
        .pods
        .iter()
        .filter(|p| p.vlan.is_none())
        .map(|p| p.name.clone())
        .collect();
    let mut all = [sg.clone(), normal.clone()].concat();
    all.sort();
    assert_eq!(answering(&lab), all, "healthy lab on {}", kernel());

    let port80 = |r: &xtask::lab::spec::SgRule| r.ports.as_deref() == Some("80");
    let saved_pod = lab.spec.group_mut("sg-pod").unwrap().ingress.clone();
    lab.spec
        .group_mut("sg-pod")
        .unwrap()
        .ingress
        .retain(|r| !port80(r));
    lab.apply_security_groups().unwrap();
    assert_eq!(
        answering(&lab),
        normal,
        "80 removed from sg-pod on {}",
        kernel()
    );

    lab.spec.group_mut("sg-pod").unwrap().ingress = saved_pod;
    lab.spec
        .group_mut("sg-node")
        .unwrap()
        .ingress
        .retain(|r| !port80(r));
    lab.apply_security_groups().unwrap();
    assert_eq!(
        answering(&lab),
        sg,
        "80 removed from sg-node on {}",
        kernel()
    );
}
