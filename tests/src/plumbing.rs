//! What a pod's plumbing looks like to the kernel, as comparable text: the node's links,
//! addresses, rules and routes of every table, the sysctls of every link, and in each pod its
//! address, routes and neighbours. Two labs built from one spec give the same lines exactly
//! when their plumbing is the same, whoever made it (the lab's script or the VPC CNI plugin).
//!
//! Normalised away: ifindexes, link-netns ids, the host veths' MACs (the lab fixes them, the
//! kernel or the plugin draws them at random; a pod's neighbour entry for its gateway names
//! its own host veth's MAC and is written as `<host veth mac>`), and counters or states that
//! change with traffic or time.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use xtask::lab::{Lab, names};

/// `ip -j [-d] <args>` in `ns`.
fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-d"])
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip -n {ns} {args:?}: {out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The host veth names of `lab`'s pods.
pub fn host_veths(lab: &Lab) -> BTreeSet<String> {
    lab.spec
        .pods
        .iter()
        .map(|p| names::host_veth(&lab.spec, p))
        .collect()
}

/// The node's and the pods' plumbing of `lab`, one fact per line, sorted.
pub fn dump(lab: &Lab) -> BTreeSet<String> {
    let node = lab.layout.node();
    let veths = host_veths(lab);
    let mut veth_macs = BTreeSet::new();
    let mut lines = BTreeSet::new();

    for l in ip_json(&node, &["link", "show"]) {
        let name = s(&l["ifname"]);
        let info = &l["linkinfo"];
        let mut flags: Vec<String> = l["flags"]
            .as_array()
            .map(|f| f.iter().map(s).collect())
            .unwrap_or_default();
        // LOWER_UP and the operstate follow the peer's state and timing, not the plumbing.
        flags.retain(|f| f != "LOWER_UP" && f != "M-DOWN");
        flags.sort();
        let mac = if veths.contains(&name) {
            veth_macs.insert(s(&l["address"]));
            "<host veth mac>".to_string()
        } else {
            s(&l["address"])
        };
        lines.insert(format!(
            "node link {name}: kind {} mtu {} flags {} mac {mac} parent {} vlan {} {}",
            s(&info["info_kind"]),
            s(&l["mtu"]),
            flags.join(","),
            s(&l["link"]),
            s(&info["info_data"]["protocol"]),
            s(&info["info_data"]["id"]),
        ));
    }
    // Every sysctl of every link, in one shell (a `cat` per file costs a minute under TCG).
    let out = Command::new("ip")
        .args(["netns", "exec", &node, "sh", "-c"])
        .arg(
            "for f in /proc/sys/net/ipv4/conf/*/* /proc/sys/net/ipv6/conf/*/*; do \
             read -r v < \"$f\" 2>/dev/null && echo \"$f $v\"; done",
        )
        .output()
        .expect("sysctls");
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // /proc/sys/net/<family>/conf/<link>/<name> <value>
        let parts: Vec<&str> = l.splitn(7, '/').collect();
        if let [_, _, _, _, family, _, rest] = parts[..]
            && let Some((link, kv)) = rest.split_once('/')
            && !matches!(link, "all" | "default")
        {
            lines.insert(format!(
                "node sysctl {family} {link} {}",
                kv.replacen(' ', "=", 1)
            ));
        }
    }
    for a in ip_json(&node, &["addr", "show"]) {
        for i in a["addr_info"].as_array().into_iter().flatten() {
            // Link-local IPv6 addresses derive from the (random) MAC.
            if s(&i["scope"]) == "link" && s(&i["family"]) == "inet6" {
                continue;
            }
            lines.insert(format!(
                "node addr {} {}/{} scope {}",
                s(&a["ifname"]),
                s(&i["local"]),
                s(&i["prefixlen"]),
                s(&i["scope"])
            ));
        }
    }
    for family in ["-4", "-6"] {
        for r in ip_json(&node, &[family, "rule", "show"]) {
            lines.insert(format!(
                "node rule {family} pref {} from {}/{} to {}/{} iif {} oif {} fwmark {} table {} action {}",
                s(&r["priority"]),
                s(&r["src"]),
                s(&r["srclen"]),
                s(&r["dst"]),
                s(&r["dstlen"]),
                s(&r["iif"]),
                s(&r["oif"]),
                s(&r["fwmark"]),
                s(&r["table"]),
                s(&r["action"]),
            ));
        }
        for r in ip_json(&node, &[family, "route", "show", "table", "all"]) {
            // The local table's link-local addresses derive from the (random) MACs.
            if s(&r["dst"]).starts_with("fe80:") && s(&r["type"]) == "local" {
                continue;
            }
            lines.insert(format!(
                "node route {family} table {} type {} {} via {} dev {} scope {} proto {} src {} metric {}",
                s(&r["table"]),
                s(&r["type"]),
                s(&r["dst"]),
                s(&r["gateway"]),
                s(&r["dev"]),
                s(&r["scope"]),
                s(&r["protocol"]),
                s(&r["prefsrc"]),
                s(&r["metric"]),
            ));
        }
    }
    for (i, pod) in lab.spec.pods.iter().enumerate() {
        let ns = lab.layout.pod(i);
        let who = &pod.name;
        for l in ip_json(&ns, &["link", "show"]) {
            lines.insert(format!(
                "pod {who} link {}: kind {} mtu {}",
                s(&l["ifname"]),
                s(&l["linkinfo"]["info_kind"]),
                s(&l["mtu"]),
            ));
        }
        for a in ip_json(&ns, &["addr", "show"]) {
            for i in a["addr_info"].as_array().into_iter().flatten() {
                if s(&i["scope"]) == "link" && s(&i["family"]) == "inet6" {
                    continue;
                }
                lines.insert(format!(
                    "pod {who} addr {} {}/{}",
                    s(&a["ifname"]),
                    s(&i["local"]),
                    s(&i["prefixlen"])
                ));
            }
        }
        for r in ip_json(&ns, &["-4", "route", "show", "table", "all"]) {
            lines.insert(format!(
                "pod {who} route table {} type {} {} via {} dev {} scope {} src {}",
                s(&r["table"]),
                s(&r["type"]),
                s(&r["dst"]),
                s(&r["gateway"]),
                s(&r["dev"]),
                s(&r["scope"]),
                s(&r["prefsrc"]),
            ));
        }
        for n in ip_json(&ns, &["-4", "neigh", "show"]) {
            let mac = s(&n["lladdr"]);
            let mac = if veth_macs.contains(&mac) {
                "<host veth mac>".into()
            } else {
                mac
            };
            let state: Vec<String> = n["state"]
                .as_array()
                .map(|f| f.iter().map(s).collect())
                .unwrap_or_default();
            // Only permanent entries are plumbing; the rest is ARP's work.
            if state.iter().any(|s| s == "PERMANENT") {
                lines.insert(format!(
                    "pod {who} neigh {} dev {} lladdr {mac} permanent",
                    s(&n["dst"]),
                    s(&n["dev"])
                ));
            }
        }
    }
    lines
}

/// The lines only in `a` and only in `b`, for an assertion's message.
pub fn diff(a: &BTreeSet<String>, b: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for l in a.difference(b) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in b.difference(a) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}
