//! The default lab's pods plumbed by the real VPC CNI plugin (`routed-eni-cni-plugin`, built by
//! `cargo xtask setup` at each pinned release) against the fake ipamd, run as containerd runs
//! it: `sgpath inspect` finds every path the CNI's rules say it made, raises no finding, and
//! does so again after a pod is deleted and created again under the same name (a recreated
//! StatefulSet pod: DEL with the runtime's prevResult, a new sandbox, ADD); and the lab's own
//! plumbing (its fallback, `--cni lab`) leaves the kernel exactly as the plugin does. Needs
//! 802.1Q: runs in the VM matrix.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use sgpath_tests::{expected_paths, inspect, path_keys, plumbing, spec};
use xtask::cni_plugin::{CURRENT, Release, SEED_ERA};
use xtask::lab::{Lab, names, spec::Mode};

/// (id, subject) of every finding of severity warning or error.
fn serious(doc: &Value) -> BTreeSet<(String, String)> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| (f["id"].to_string(), f["subject"].to_string()))
        .collect()
}

/// Inspect the lab and hold it to the CNI's paths and to silence.
fn inspect_clean(lab: &Lab, when: &str) {
    let (doc, code) = inspect(lab);
    assert_eq!(
        path_keys(&doc),
        expected_paths(&lab.spec),
        "{when}: paths sgpath found vs the CNI's"
    );
    assert_eq!(
        serious(&doc),
        BTreeSet::new(),
        "{when}: findings on a healthy lab:\n{}",
        serde_json::to_string_pretty(&doc["findings"]).unwrap()
    );
    assert_eq!(code, 0, "{when}: inspect's exit status");
}

fn node_cmd(lab: &Lab, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.layout.node()])
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fake ipamd's requests, as (call, pod name).
fn ipamd_calls(lab: &Lab) -> Vec<(String, String)> {
    std::fs::read_to_string(lab.dir.join("ipamd.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("ipamd log line");
            assert!(v.get("error").is_none(), "ipamd refused: {l}");
            (
                v["call"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn plugin_lab(release: Release, mode: Mode, prefix: &str) {
    let mut s = spec("default");
    s.node.enforcing_mode = mode;
    let mut lab = Lab::build_with(s, prefix, Some(release))
        .unwrap_or_else(|e| panic!("{} {mode:?}: {e:#}", release.version));
    let when = format!("{} {mode:?}", release.version);

    // The plugin made the pods: every pod asked ipamd once, and the host veths carry the
    // kernel's or the plugin's random MAC, not the lab's fixed 02:5e:00:00:xx:xx.
    let adds: Vec<_> = ipamd_calls(&lab)
        .into_iter()
        .filter(|(c, _)| c == "AddNetwork")
        .map(|(_, n)| n)
        .collect();
    let pods: Vec<_> = lab.spec.pods.iter().map(|p| p.name.clone()).collect();
    assert_eq!(adds, pods, "{when}: AddNetwork per pod, in order");
    for p in &lab.spec.pods {
        let veth = names::host_veth(&lab.spec, p);
        let link = node_cmd(&lab, &["-o", "link", "show", &veth]);
        assert!(!link.contains("02:5e:00:00"), "{when}: {veth}: {link}");
    }
    inspect_clean(&lab, &format!("{when}, as built"));

    // A recreated StatefulSet pod, branch and ordinary: DEL, new sandbox, ADD.
    let branch = lab.spec.pods[0].name.clone();
    let ordinary = lab.spec.pods[5].name.clone();
    let rules_before = node_cmd(&lab, &["rule", "show"]);
    for name in [&branch, &ordinary] {
        lab.recreate_pod(name)
            .unwrap_or_else(|e| panic!("{when}: recreating {name}: {e:#}"));
    }
    assert_eq!(
        node_cmd(&lab, &["rule", "show"]).lines().count(),
        rules_before.lines().count(),
        "{when}: the DEL left or lost rules"
    );
    let adds = ipamd_calls(&lab)
        .iter()
        .filter(|(c, n)| c == "AddNetwork" && (n == &branch || n == &ordinary))
        .count();
    assert_eq!(adds, 4, "{when}: two ADDs for each recreated pod");
    inspect_clean(
        &lab,
        &format!("{when}, after a DEL and an ADD of {branch} and {ordinary}"),
    );
}

#[test]
fn plugin_current_strict_default_lab_is_clean_and_survives_a_recreated_pod() {
    plugin_lab(CURRENT, Mode::Strict, "sgt-pcs");
}

#[test]
fn plugin_current_standard_default_lab_is_clean_and_survives_a_recreated_pod() {
    plugin_lab(CURRENT, Mode::Standard, "sgt-pcd");
}

#[test]
fn plugin_seed_era_strict_default_lab_is_clean_and_survives_a_recreated_pod() {
    plugin_lab(SEED_ERA, Mode::Strict, "sgt-p7s");
}

#[test]
fn plugin_seed_era_refuses_a_standard_mode_lab() {
    let mut s = spec("default");
    s.node.enforcing_mode = Mode::Standard;
    let e = Lab::build_with(s, "sgt-p7d", Some(SEED_ERA))
        .err()
        .expect("v1.7.10 has no standard mode");
    assert!(format!("{e:#}").contains("strict mode only"), "{e:#}");
}

/// The lab's script and the plugin plumb the same spec in one VM; every link, address,
/// rule, route of every table, sysctl of every link and pod-side route and neighbour is the
/// same (see [`plumbing::dump`] for what is normalised away). One lab of the script's is
/// compared with each release's.
fn lab_plumbs_as_the_plugins_do(mode: Mode, releases: &[(Release, &str)], prefix: &str) {
    let mut s = spec("default");
    s.node.enforcing_mode = mode;
    let by_lab = Lab::build_with(s.clone(), prefix, None).expect("the lab's own plumbing");
    let lab_lines = plumbing::dump(&by_lab);
    assert!(lab_lines.len() > 100, "{} lines only", lab_lines.len());
    for &(release, prefix) in releases {
        let by_plugin = Lab::build_with(s.clone(), prefix, Some(release))
            .unwrap_or_else(|e| panic!("{} {mode:?}: {e:#}", release.version));
        let b = plumbing::dump(&by_plugin);
        // Not vacuous: the plugin's lab holds every pod's veth.
        for p in &by_plugin.spec.pods {
            let veth = names::host_veth(&by_plugin.spec, p);
            assert!(
                b.iter()
                    .any(|l| l.starts_with(&format!("node link {veth}:"))),
                "no {veth} in the plugin's lab"
            );
        }
        let a = if release == SEED_ERA {
            before_v1_11(&by_lab, lab_lines.clone())
        } else {
            lab_lines.clone()
        };
        assert_eq!(
            a,
            b,
            "{} {mode:?}: the lab's plumbing (-) vs the plugin's (+):\n{}",
            release.version,
            plumbing::diff(&a, &b)
        );
    }
}

/// The lab's lines as v1.7 plumbs: before v1.11's hardening it set a host veth's IPv6
/// `accept_redirects` to 0 and left a VLAN link's sysctls alone (`accept_ra` the kernel's 1).
fn before_v1_11(lab: &Lab, lines: BTreeSet<String>) -> BTreeSet<String> {
    let veths = plumbing::host_veths(lab);
    lines
        .into_iter()
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            match words[..] {
                ["node", "sysctl", "ipv6", link, "accept_redirects=1"] if veths.contains(link) => {
                    format!("node sysctl ipv6 {link} accept_redirects=0")
                }
                ["node", "sysctl", "ipv6", link, "accept_ra=0"]
                    if link.starts_with("vlan.eth.") =>
                {
                    format!("node sysctl ipv6 {link} accept_ra=1")
                }
                _ => l,
            }
        })
        .collect()
}

#[test]
fn lab_plumbs_strict_pods_as_both_plugins_do() {
    lab_plumbs_as_the_plugins_do(
        Mode::Strict,
        &[(CURRENT, "sgt-qps"), (SEED_ERA, "sgt-qp7")],
        "sgt-qls",
    );
}

#[test]
fn lab_plumbs_standard_pods_as_the_current_plugin_does() {
    lab_plumbs_as_the_plugins_do(Mode::Standard, &[(CURRENT, "sgt-qpd")], "sgt-qld");
}
