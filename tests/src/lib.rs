//! Fixtures shared by the integration tests: the sgpath binary, labs, namespace guards,
//! and the test bodies that run on every kernel (host 6.18 and the VMs' 5.10, 6.1 and 6.12).
//!
//! Side effects: creates network namespaces (`sgt-*`) and deletes them on drop. Never
//! touches the caller's own namespace.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_json::Value;
use xtask::lab::{Lab, Spec, names};

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod conns;
pub mod deploy;
pub mod ec2;
pub mod fleet;
pub mod https_front;
pub mod hub;
pub mod kube;
pub mod observe;
pub mod plumbing;
pub mod trust;

/// The `sgpath` binary under test: `$SGPATH_BIN` (set by `cargo xtask test` in VMs) or
/// the workspace's debug build.
pub fn sgpath_bin() -> PathBuf {
    std::env::var_os("SGPATH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(xtask::sgpath_bin)
}

/// Load one of xtask/labs/*.toml.
pub fn spec(name: &str) -> Spec {
    let path = xtask::workspace_root()
        .join("xtask/labs")
        .join(format!("{name}.toml"));
    Spec::load(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The first ordinary pod (primary ENI, no VLAN) of `lab`: its namespace and address.
pub fn ordinary_pod(lab: &Lab) -> (String, std::net::Ipv4Addr) {
    let i = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    (lab.layout.pod(i), lab.spec.pods[i].ip)
}

/// Bring a lab up or fail the test with the builder's error.
pub fn lab(spec: Spec, prefix: &str) -> Lab {
    Lab::up(spec, prefix).unwrap_or_else(|e| panic!("lab {prefix} did not come up: {e:#}"))
}

/// `sgpath inspect --output json` in the lab's node; returns the document and exit code.
pub fn inspect(lab: &Lab) -> (Value, i32) {
    let out = lab.sgpath(&sgpath_bin(), &["inspect", "--output", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (doc, out.status.code().unwrap_or(-1))
}

/// A path as the tests compare them: kind, pod ip, host veth, vlan id, vlan link, trunk,
/// route table, and the (priority, selector, table) of each rule.
pub type PathKey = (
    String,
    String,
    String,
    Option<u64>,
    Option<String>,
    Option<String>,
    u64,
    Vec<(u64, String, u64)>,
);

pub fn path_keys(doc: &Value) -> BTreeSet<PathKey> {
    doc["paths"]
        .as_array()
        .expect("paths array")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().map(String::from);
            let rules = p["rules"]
                .as_array()
                .expect("rules array")
                .iter()
                .map(|r| {
                    (
                        r["priority"].as_u64().unwrap(),
                        r["selector"].as_str().unwrap().to_string(),
                        r["table"].as_u64().unwrap(),
                    )
                })
                .collect();
            (
                s("kind").unwrap(),
                s("pod_ip").unwrap_or_default(),
                s("host_veth").unwrap(),
                p["vlan_id"].as_u64(),
                s("vlan_link"),
                s("trunk"),
                p["route_table"].as_u64().unwrap(),
                rules,
            )
        })
        .collect()
}

/// The paths the VPC CNI would have made for a spec, written from the CNI's rules
/// (../shared/vpc-cni-sgp.md), independently of sgpath's classifier.
pub fn expected_paths(spec: &Spec) -> BTreeSet<PathKey> {
    use xtask::lab::spec::{Mode, PodKind};
    spec.pods
        .iter()
        .map(|p| {
            let veth = names::host_veth(spec, p);
            let ip = p.ip.to_string();
            match (p.kind, p.vlan) {
                (PodKind::Branch, Some(v)) => {
                    let table = u64::from(names::vlan_table(v));
                    let vlan_link = spec.node.trunk.as_ref().map(|_| names::vlan_link(v));
                    let rules = match spec.mode_of(p) {
                        Mode::Strict => {
                            let mut r = vec![(10, format!("from all iif {veth}"), table)];
                            if let Some(l) = &vlan_link {
                                r.push((10, format!("from all iif {l}"), table));
                            }
                            r.sort();
                            r
                        }
                        Mode::Standard => vec![
                            (512, format!("from all to {ip}"), 254),
                            (1536, format!("from {ip}"), table),
                        ],
                    };
                    (
                        "branch-eni".into(),
                        ip,
                        veth,
                        Some(u64::from(v)),
                        vlan_link,
                        spec.node.trunk.clone(),
                        table,
                        rules,
                    )
                }
                _ => {
                    // Ordinary pod; on a secondary ENI also `1536: from <ip> lookup <device + 1>`.
                    let mut rules = vec![(512, format!("from all to {ip}"), 254)];
                    let table = spec.eni_of(p).map_or(254, |eni| u64::from(eni.table()));
                    if table != 254 {
                        rules.push((1536, format!("from {ip}"), table));
                    }
                    (
                        "node-eni".into(),
                        ip.clone(),
                        veth,
                        None,
                        None,
                        None,
                        table,
                        rules,
                    )
                }
            }
        })
        .collect()
}

/// A network namespace that is deleted (with its links) on drop.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", name]);
        NetNs(name.to_string())
    }

    /// Run `f` on a thread that has entered this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        observe::in_netns(&self.0, f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `argv` with `input` on its stdin; panics naming the command if it fails.
pub fn feed(argv: &[&str], input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{} failed on:\n{input}",
        argv.join(" ")
    );
}

/// Run a command, panicking with its stderr if it fails.
pub fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The running kernel's (major, minor), from /proc/sys/kernel/osrelease.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}
