//! Metrics scrape: `/metrics` of an agent with 250 paths and drops under several reasons,
//! against Debian's prometheus-node-exporter on the same node, alternating scrapes. Latency
//! is connect to the last byte (HTTP/1.1, `Connection: close`), as Prometheus sees it.
//!
//! Side effects: datagrams between the node and its pods (some dropped by an nftables
//! table `inet sgb_scrape`, deleted at the end); prometheus-node-exporter in the node.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use super::{
    Killed, RUNS,
    pod_node::{NODE_IP, PodNode},
    start_agent,
    stats::{Goal, Summary, Table, percentile},
};
use crate::observe::{in_netns, nft, ns_run};

/// sgpath scrapes per run, and how many of them come before each node_exporter scrape:
/// node_exporter takes most of a second a scrape on this node, so it gets fewer.
const SCRAPES: usize = 40;
const SGPATH_PER_EXPORTER: usize = 5;
const EXPORTER_PORT: u16 = 9109;

/// GET `path` on 127.0.0.1:`port` of the calling thread's namespace: (status, body bytes,
/// ms from connect to the last byte).
fn get(port: u16, path: &str) -> std::io::Result<(u16, usize, f64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    let status = std::str::from_utf8(&raw[..head_end.min(raw.len())])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Ok((status, raw.len() - head_end, ms))
}

/// Drops under several reasons on every path: to each pod's closed port (`NO_SOCKET` in
/// the pod), to a port the node's nftables output hook drops (`NETFILTER_DROP`), and from
/// every fifth pod to the node's closed port (`NO_SOCKET` in the node).
fn make_drops(node: &PodNode) {
    let ns = node.node();
    nft(
        &ns,
        "table inet sgb_scrape {\n chain out {\n type filter hook output priority 0;\n \
         udp dport 7003 drop\n }\n}\n",
    );
    in_netns(&ns, || {
        let s = UdpSocket::bind((NODE_IP, 0)).expect("bind");
        for p in &node.pods {
            for _ in 0..3 {
                let _ = s.send_to(&[0u8; 8], (p.ip, 9));
                let _ = s.send_to(&[0u8; 8], (p.ip, 7003));
            }
        }
    });
    for p in node.pods.iter().step_by(5) {
        in_netns(&p.ns, || {
            let s = UdpSocket::bind((p.ip, 0)).expect("bind");
            for _ in 0..3 {
                let _ = s.send_to(&[0u8; 8], (NODE_IP, 9));
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    ns_run(&ns, &["nft", "delete", "table", "inet", "sgb_scrape"]);
}

pub fn run(node: &PodNode) -> String {
    let agent = start_agent(node);
    make_drops(node);
    let listen = format!("--web.listen-address=127.0.0.1:{EXPORTER_PORT}");
    let _exporter = Killed::spawn_in(&node.node(), &["prometheus-node-exporter", &listen]);
    let (a, b, sizes) = in_netns(&node.node(), || {
        let start = Instant::now();
        while !matches!(get(EXPORTER_PORT, "/metrics"), Ok((200, _, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node_exporter never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Warm-up of both.
        let _ = get(agent.port, "/metrics");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut sizes = (0, 0);
        for _ in 0..RUNS {
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            for i in 0..SCRAPES {
                let (s, n, ms) = get(agent.port, "/metrics").expect("scrape sgpath");
                assert_eq!(s, 200, "sgpath /metrics");
                ra.push(ms);
                sizes.0 = n;
                if i % SGPATH_PER_EXPORTER == SGPATH_PER_EXPORTER - 1 {
                    let (s, n, ms) = get(EXPORTER_PORT, "/metrics").expect("scrape node_exporter");
                    assert_eq!(s, 200, "node_exporter /metrics");
                    rb.push(ms);
                    sizes.1 = n;
                }
            }
            a.push(ra);
            b.push(rb);
        }
        (a, b, sizes)
    });
    let body = agent.request("GET", "/metrics", &[]).1;
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let drop_series = body
        .lines()
        .filter(|l| l.starts_with("sgpath_path_drops"))
        .count();
    let reasons: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| l.starts_with("sgpath_path_drops"))
        .filter_map(|l| l.split("reason=\"").nth(1)?.split('"').next())
        .collect();
    let _ = agent.terminate();
    let per_run = |runs: &[Vec<f64>], p: f64| {
        Summary::of(&runs.iter().map(|r| percentile(r, p)).collect::<Vec<_>>()).unwrap()
    };
    let (a50, a99, b50, b99) = (
        per_run(&a, 50.0),
        per_run(&a, 99.0),
        per_run(&b, 50.0),
        per_run(&b, 99.0),
    );
    let mut t = Table::new(&["figure", "sgpath agent", "node_exporter"]);
    t.row(
        &["p50, ms".into(), a50.show(2), b50.show(2)],
        "",
        Goal::None,
    );
    t.row(
        &["p99, ms".into(), a99.show(2), b99.show(2)],
        "sgpath <= 20 ms and <= node_exporter's",
        Goal::check(a99.median <= 20.0 && a99.median <= b99.median),
    );
    t.row(
        &[
            "body, bytes".into(),
            sizes.0.to_string(),
            sizes.1.to_string(),
        ],
        "",
        Goal::None,
    );
    format!(
        "`sgpath agent` with {} paths and drops under {} reasons ({}; {series} samples, \
         {drop_series} of them `sgpath_path_drops_total`) and Debian's \
         prometheus-node-exporter 1.5 (default collectors) in the same node namespace. {RUNS} \
         runs, each of {SCRAPES} sgpath scrapes with a node_exporter scrape after every \
         {SGPATH_PER_EXPORTER}th ({} of those: node_exporter takes most of a second a scrape \
         here); a run's p50 and p99 (nearest rank) over its scrapes, median (min–max) over the \
         runs. Latency = connect to the last byte, `Connection: close`, one at a time.\n\n{}",
        node.pods.len(),
        reasons.len(),
        reasons.into_iter().collect::<Vec<_>>().join(", "),
        SCRAPES / SGPATH_PER_EXPORTER,
        t.markdown()
    )
}
