//! One lab test per finding: inject the fault into a small strict node (xtask/labs/small.toml)
//! and assert that `sgpath inspect` reports exactly that finding, with its exact subject,
//! and exits 1. Needs 802.1Q: runs in the VM matrix (5.10, 6.1, 6.12).

use std::collections::BTreeSet;

use serde_json::Value;
use sgpath_tests::{inspect, spec};
use xtask::lab::{
    Fault, Lab, names,
    spec::{Mode, RuleOn, VlanRoute},
};

/// (id, subject) of every finding of severity warning or error.
fn serious(doc: &Value) -> BTreeSet<(String, String)> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn strict_veth() -> String {
    let s = spec("small");
    names::host_veth(&s, s.pod("strict-a").unwrap())
}

/// Build the small lab with `fault`, inspect, and expect exactly `(id, subject)`.
fn expect_finding(prefix: &str, fault: Fault, id: &str, subject: &str) {
    let mut s = spec("small");
    s.faults.push(fault.clone());
    let lab = Lab::build(s, prefix).unwrap_or_else(|e| panic!("lab with {fault:?}: {e:#}"));
    let (doc, code) = inspect(&lab);
    let want: BTreeSet<_> = [(id.to_string(), subject.to_string())].into();
    assert_eq!(
        serious(&doc),
        want,
        "fault {fault:?}:\n{}",
        serde_json::to_string_pretty(&doc["findings"]).unwrap()
    );
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap();
    assert!(
        !f["evidence"].as_array().unwrap().is_empty()
            && !f["remediation"].as_str().unwrap().is_empty()
    );
    assert_eq!(code, 1, "inspect exits 1 on a warning or error");
}

#[test]
fn healthy_default_lab_has_no_warning_or_error() {
    let lab = Lab::build(spec("default"), "sgt-ok").unwrap();
    let (doc, code) = inspect(&lab);
    assert_eq!(serious(&doc), BTreeSet::new());
    assert_eq!(code, 0);
}

#[test]
fn tcp_early_demux_enabled() {
    let f = Fault::Sysctl {
        name: "net.ipv4.tcp_early_demux".into(),
        value: 1,
    };
    expect_finding(
        "sgt-c1",
        f,
        "tcp-early-demux-enabled",
        "net.ipv4.tcp_early_demux",
    );
}

#[test]
fn vlan_rule_missing() {
    let f = Fault::DeleteVlanRule {
        pod: "strict-a".into(),
        on: RuleOn::Veth,
    };
    expect_finding("sgt-c2", f, "vlan-rule-missing", &strict_veth());
}

#[test]
fn vlan_rule_stale() {
    let f = Fault::StaleVlanRule {
        iif: "vlan0123456789a".into(),
        table: 107,
    };
    expect_finding("sgt-c3", f, "vlan-rule-stale", "vlan0123456789a");
}

/// The #1375 case: the pod was re-created under the same name, the old pod's rule to
/// another table survived and comes first, so the kernel routes the pod by the wrong table.
#[test]
fn vlan_rule_stale_for_a_recreated_pod() {
    let f = Fault::StaleVlanRule {
        iif: strict_veth(),
        table: 105,
    };
    expect_finding("sgt-c12", f, "vlan-rule-stale", &strict_veth());
}

#[test]
fn vlan_table_incomplete() {
    let f = Fault::DeleteVlanRoute {
        pod: "strict-a".into(),
        route: VlanRoute::Default,
    };
    expect_finding("sgt-c4", f, "vlan-table-incomplete", "vlan.eth.1");
}

/// Someone deleted the VLAN link the plugin made for a strict pod: one page, the missing
/// VLAN link (`kubectl delete pod` re-plumbs it); the pod's own `iif vlan.eth.1` rule is
/// not called stale.
#[test]
fn vlan_link_deleted_behind_the_cni() {
    let f = Fault::DeleteVlanLink {
        pod: "strict-a".into(),
    };
    expect_finding("sgt-c16", f, "vlan-parent-missing", "vlan.eth.1");
}

/// A strict pod's sandbox vanished without a CNI DEL: the plugin's `iif` rule for its veth
/// is left pointing at a device that no longer exists.
#[test]
fn pod_deleted_behind_the_cni_leaves_a_stale_rule() {
    let f = Fault::PodGoneWithoutDel {
        pod: "strict-a".into(),
    };
    expect_finding("sgt-c17", f, "vlan-rule-stale", &strict_veth());
}

#[test]
fn vlan_parent_missing() {
    expect_finding(
        "sgt-c5",
        Fault::TrunkDown,
        "vlan-parent-missing",
        "vlan.eth.1",
    );
}

#[test]
fn local_rule_misplaced() {
    expect_finding(
        "sgt-c6",
        Fault::LocalRuleAtZero,
        "local-rule-misplaced",
        "rule lookup local",
    );
}

#[test]
fn pod_route_missing() {
    // The route is gone, so sgpath must learn the pod's IP from the pod's namespace.
    let f = Fault::DeletePodRoute {
        pod: "ordinary-b".into(),
    };
    expect_finding("sgt-c7", f, "pod-route-missing", "192.168.7.31");
}

#[test]
fn rp_filter_strict_primary() {
    let f = Fault::Sysctl {
        name: "net.ipv4.conf.eth0.rp_filter".into(),
        value: 1,
    };
    expect_finding(
        "sgt-c8",
        f,
        "rp-filter-strict-primary",
        "net.ipv4.conf.eth0.rp_filter",
    );
}

#[test]
fn ip_forward_disabled() {
    let f = Fault::Sysctl {
        name: "net.ipv4.ip_forward".into(),
        value: 0,
    };
    expect_finding("sgt-c9", f, "ip-forward-disabled", "net.ipv4.ip_forward");
}

#[test]
fn nodelocal_dns_strict() {
    let f = Fault::NodelocalDns {
        address: "169.254.20.10".parse().unwrap(),
    };
    expect_finding("sgt-c10", f, "nodelocal-dns-strict", "169.254.20.10");
}

#[test]
fn mtu_mismatch() {
    let f = Fault::Mtu {
        link: "strict-a".into(),
        mtu: 9100,
    };
    expect_finding("sgt-c11", f, "mtu-mismatch", &strict_veth());
}

/// The Pod Identity agent on a strict node (VPC CNI #2797): each strict branch pod gets
/// `node-service-unreachable`; the standard-mode branch pod and the ordinary pods reach it.
#[test]
fn node_service_unreachable_pod_identity_agent() {
    let mut s = spec("mixed");
    s.faults.push(Fault::PodIdentityAgent);
    let lab = Lab::build(s, "sgt-c14").unwrap();
    let (doc, code) = inspect(&lab);
    let want: BTreeSet<_> = ["192.168.3.219", "192.168.26.147"]
        .iter()
        .map(|ip| ("node-service-unreachable".to_string(), ip.to_string()))
        .collect();
    assert_eq!(serious(&doc), want, "{:#}", doc["findings"]);
    for f in doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "node-service-unreachable")
    {
        let evidence = f["evidence"].to_string();
        assert!(
            evidence.contains("169.254.170.23 is on pod-id-link0"),
            "names the address and its interface: {f:#}"
        );
    }
    assert_eq!(code, 1);
}

/// Standard mode keeps the local rule first: branch pods reach the Pod Identity agent.
#[test]
fn pod_identity_agent_in_standard_mode_has_no_finding() {
    let mut s = spec("small");
    s.node.enforcing_mode = Mode::Standard;
    s.faults.push(Fault::PodIdentityAgent);
    let lab = Lab::build(s, "sgt-c15").unwrap();
    let (doc, code) = inspect(&lab);
    assert_eq!(doc["mode"], "standard");
    assert_eq!(serious(&doc), BTreeSet::new(), "{:#}", doc["findings"]);
    let local = doc["lookups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["address"] == "169.254.170.23")
        .filter(|l| l["forward"]["egress_kind"] == "local")
        .count();
    assert_eq!(
        local, 2,
        "both pods' lookups are local: {:#}",
        doc["lookups"]
    );
    assert_eq!(code, 0);
}
