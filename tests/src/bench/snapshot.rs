//! Topology snapshot: `sgpath inspect --output json` against the iproute2 dump an SRE would
//! run for the same data, on a synthetic node with 250 pod veths, 1,000 rules and 10,000
//! routes in 300 tables, alternating.
//!
//! Side effects: namespaces `sgb-snap-node` and `sgb-snap-pods` (all pods' `eth0` ends).

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::Value;

use super::{
    pod_node::{Namespaces, conflist, pod_ip, veth},
    stats::{CONFIDENCE, Goal, Interval, Summary, Table, alternate_until, ratios},
};
use crate::feed;

const PODS: usize = 250;
/// Extra route tables, and routes in each: with the pods' 250 and the node's own, about
/// 10,000 routes.
const TABLES: usize = 300;
const ROUTES_PER_TABLE: usize = 33;
/// Pairs of runs, at least and at most (more than the other sections': each run is short).
const PAIRS: usize = 15;
const MAX_PAIRS: usize = 61;
/// B / A, wall time: inspect asks the kernel 1,250 route lookups more than the dump does.
const GOAL: f64 = 1.0;

const IPROUTE2: &str = "ip -d link show; ip rule show; ip -6 rule show; \
     ip route show table all; ip -6 route show table all";

/// The node: per pod a veth, /32 route, `512: to <ip>` and `1536: from <ip> lookup
/// <table>` rules (a pod of a secondary ENI), plus `fwmark` rules up to 1,000 rules, and
/// 300 ENI-like tables of 32 routes.
fn build(node: &str, pods_ns: &str) -> (usize, usize) {
    let mut b = String::from(
        "link add eth0 type veth peer name uplink netns sgb-snap-pods\n\
         addr add 10.98.0.10/16 dev eth0\nlink set eth0 up\n\
         route add default via 10.98.0.1 dev eth0\n",
    );
    let mut rules = 3; // local, main, default
    for i in 0..PODS {
        let (v, ip) = (veth(i), pod_ip(i));
        let table = 1000 + i % TABLES;
        b.push_str(&format!(
            "link add {v} type veth peer name p{i} netns {pods_ns}\nlink set {v} up\n\
             route add {ip} dev {v} scope link\n\
             rule add to {ip} lookup main prio 512\n\
             rule add from {ip} lookup {table} prio 1536\n"
        ));
        rules += 2;
    }
    let mut mark = 0;
    while rules < 1000 {
        b.push_str(&format!(
            "rule add fwmark {:#x} lookup {} prio {}\n",
            0x100 + mark,
            1000 + mark % TABLES,
            2000 + mark
        ));
        mark += 1;
        rules += 1;
    }
    let mut routes = PODS + 2;
    for t in 0..TABLES {
        let table = 1000 + t;
        b.push_str(&format!(
            "route add default via 10.98.0.1 dev eth0 table {table}\n"
        ));
        for r in 1..ROUTES_PER_TABLE {
            b.push_str(&format!(
                "route add 172.{}.{}.0/24 dev eth0 table {table}\n",
                16 + r / 200,
                r % 200
            ));
        }
        routes += ROUTES_PER_TABLE;
    }
    feed(&["ip", "-n", node, "-batch", "-"], &b);
    (rules, routes)
}

/// Wall time of `ip netns exec <ns> <argv...>`, output discarded, in ms.
fn timed(ns: &str, argv: &[&str]) -> f64 {
    let t = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // inspect exits 1 when it has findings; 2 would be a failure.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{argv:?} exited {status}"
    );
    ms
}

pub fn run() -> String {
    let (node, pods_ns) = ("sgb-snap-node", "sgb-snap-pods");
    let _ns = Namespaces::new(vec![node.into(), pods_ns.into()]);
    let (rules, routes) = build(node, pods_ns);
    let cni = "/tmp/sgb-snap.conflist";
    std::fs::write(cni, conflist()).expect("CNI config");
    let sgpath = crate::sgpath_bin();
    let sgpath = sgpath.to_str().unwrap();
    let inspect = [sgpath, "inspect", "--output", "json", "--cni-config", cni];
    // Once untimed: the paths must all be there, and the caches warm.
    let out = Command::new("ip")
        .args(["netns", "exec", node])
        .args(inspect)
        .output()
        .expect("inspect");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let paths = doc["paths"].as_array().map_or(0, Vec::len);
    let json_bytes = out.stdout.len();
    let listed = Command::new("ip")
        .args(["netns", "exec", node, "sh", "-c", IPROUTE2])
        .output()
        .expect("iproute2");
    timed(node, &["sh", "-c", IPROUTE2]);
    let (a, b) = alternate_until(
        PAIRS,
        MAX_PAIRS,
        |_| timed(node, &["sh", "-c", IPROUTE2]),
        |_| timed(node, &inspect),
        |a, b| Interval::of(&ratios(a, b)).is_some_and(|i| i.judge(GOAL, false) != Goal::Undecided),
    );
    let _ = std::fs::remove_file(cni);
    let ratio = Interval::of(&ratios(&a, &b)).unwrap();
    let mut t = Table::new(&["figure", "iproute2 (A)", "sgpath inspect (B)", "B / A"]);
    t.row(
        &[
            "wall time, ms".into(),
            Summary::of(&a).unwrap().show(1),
            Summary::of(&b).unwrap().show(1),
            ratio.show(2),
        ],
        &format!("B/A <= {GOAL:.1}"),
        ratio.judge(GOAL, false),
    );
    t.row(
        &[
            "output, bytes".into(),
            listed.stdout.len().to_string(),
            json_bytes.to_string(),
            String::new(),
        ],
        "",
        Goal::None,
    );
    format!(
        "A node namespace with {PODS} pod veths (their peers in one other namespace), \
         {rules} IPv4 rules and about {routes} routes in {} tables (main, local and {TABLES} \
         ENI-like tables); sgpath found {paths} paths. A = `ip netns exec <node> sh -c \
         '{IPROUTE2}'`, B = `ip netns exec <node> sgpath inspect --output json`, both to \
         /dev/null, spawn to exit; pairs A B A B ... after one warm-up each ({PAIRS} to \
         {MAX_PAIRS}, until the ratio's {CONFIDENCE} interval decides the goal).\n\n{}",
        TABLES + 2,
        t.markdown()
    )
}
