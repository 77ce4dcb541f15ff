//! Signals an on-call engineer can trust, with exact numbers: a pod sending with its
//! neighbour's address counts on its own veth only (`pod-source-spoofed`), a stale veth
//! holding a live pod's IP is `pod-ip-conflict` (and `trace` refuses to guess), and a
//! finding from counts clears one `--window` after its cause.
//! Host and VM: ordinary pods only (no 802.1Q needed).
//!
//! Side effects: the lab's namespaces; raw sockets, a veth and a route in them, all gone
//! with the lab (the veth is deleted here too).

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use serde_json::Value;
use xtask::lab::Lab;

use crate::{
    agent::Agent,
    observe::{Observer, in_netns, settle},
    run, sgpath_bin,
};

/// Spoofed datagrams one test sends.
const SPOOFED: u64 = 7;

/// The first two ordinary pods of `lab`: (namespace, address).
fn two_ordinary(lab: &Lab) -> [(String, Ipv4Addr); 2] {
    let mut it = (0..lab.spec.pods.len())
        .filter(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .map(|i| (lab.layout.pod(i), lab.spec.pods[i].ip));
    [
        it.next().expect("an ordinary pod"),
        it.next().expect("a second ordinary pod"),
    ]
}

/// IPv4 + UDP, checksum left to the kernel (IP) or off (UDP).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 29, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(40000u16.to_be_bytes());
    p.extend(port.to_be_bytes());
    p.extend(9u16.to_be_bytes());
    p.extend([0, 0, b'x']);
    p
}

/// Sends `n` UDP datagrams from namespace `ns` with source address `src`, through a raw
/// socket (what a pod with the default CAP_NET_RAW can do).
fn send_spoofed(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16, n: u64) {
    let packet = udp_packet(src, dst, port);
    send_raw(ns, &vec![(dst, packet); n as usize]);
}

/// The path whose host veth is `veth`.
fn path_by_veth<'a>(doc: &'a Value, veth: &str) -> &'a Value {
    doc["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .find(|p| p["host_veth"] == veth)
        .unwrap_or_else(|| panic!("no path on {veth}: {doc}"))
}

fn path_by_ip(doc: &Value, ip: Ipv4Addr) -> &Value {
    doc["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .find(|p| p["pod_ip"] == ip.to_string())
        .unwrap_or_else(|| panic!("no path of {ip}: {doc}"))
}

fn findings<'a>(doc: &'a Value, id: &str) -> Vec<&'a Value> {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

/// A pod sends with its neighbour's address: its own veth counts them as foreign (exactly
/// the number sent) with `pod-source-spoofed` naming the veth and the address; the
/// neighbour's path counts nothing and has no finding.
pub fn spoofed_source_counts_on_the_sender_only(lab: &Lab) {
    let [(a_ns, a_ip), (b_ns, b_ip)] = two_ordinary(lab);
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    // Something listens, so the node answers nothing (no ICMP to the neighbour).
    let _rx = in_netns(&node, || UdpSocket::bind((node_ip, 7400)).expect("bind"));
    let observer = Observer::start(lab, &[]);
    send_spoofed(&a_ns, b_ip, node_ip, 7400, SPOOFED);
    settle(&[&node, &a_ns, &b_ns]);
    let doc = observer.stop();
    let a = path_by_ip(&doc, a_ip);
    let b = path_by_ip(&doc, b_ip);
    let ctx = format!("{}\n{}", a, b);
    assert_eq!(
        a["counters"]["from_pod"]["foreign_packets"], SPOOFED,
        "{ctx}"
    );
    assert_eq!(a["counters"]["from_pod"]["forwarded_packets"], 0, "{ctx}");
    assert_eq!(
        a["counters"]["from_pod"]["foreign_source"],
        b_ip.to_string(),
        "{ctx}"
    );
    for dir in ["to_pod", "from_pod"] {
        for n in ["forwarded_packets", "dropped_packets", "foreign_packets"] {
            assert_eq!(b["counters"][dir][n], 0, "{dir} {n}: {ctx}");
        }
    }
    let veth = a["host_veth"].as_str().unwrap();
    let f = findings(&doc, "pod-source-spoofed");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["subject"], veth);
    let evidence = f[0]["evidence"][0].as_str().unwrap();
    assert!(
        evidence.starts_with(&format!("{SPOOFED} packet(s) from"))
            && evidence.contains(&b_ip.to_string())
            && evidence.contains(veth),
        "{evidence}"
    );
}

/// A stale veth routes a live pod's IP: `pod-ip-conflict` (error) names both veths, `trace`
/// refuses to pick one, and the live veth still counts its pod's packets exactly.
pub fn stale_veth_is_a_pod_ip_conflict(lab: &Lab) {
    let [(a_ns, a_ip), _] = two_ordinary(lab);
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    const STALE: &str = "eni5ta1e0000001";
    run(&[
        "ip", "-n", &node, "link", "add", STALE, "type", "veth", "peer", "name", "stale0",
    ]);
    run(&["ip", "-n", &node, "link", "set", STALE, "up"]);
    let host = format!("{a_ip}/32");
    run(&[
        "ip", "-n", &node, "route", "add", &host, "dev", STALE, "table", "77",
    ]);
    let (doc, _) = crate::inspect(lab);
    let f = findings(&doc, "pod-ip-conflict");
    assert_eq!(f.len(), 1, "{:?}", doc["findings"]);
    assert_eq!(f[0]["severity"], "error");
    assert_eq!(f[0]["subject"], a_ip.to_string());
    let evidence = f[0]["evidence"].to_string();
    assert!(evidence.contains(STALE), "{evidence}");
    let live = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == a_ip.to_string() && p["host_veth"] != STALE)
        .expect("the live path")["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(evidence.contains(&live), "{evidence}");
    let out = lab.sgpath(
        &sgpath_bin(),
        &[
            "trace",
            "--from",
            &a_ip.to_string(),
            "--to",
            &node_ip.to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "trace guessed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("pod-ip-conflict") && stderr.contains(STALE) && stderr.contains(&live),
        "{stderr}"
    );
    // Counting goes on by veth: the live one counts what its pod sends, the stale one nothing.
    const SENT: u64 = 5;
    let _rx = in_netns(&node, || UdpSocket::bind((node_ip, 7401)).expect("bind"));
    let observer = Observer::start(lab, &[]);
    let tx = in_netns(&a_ns, || UdpSocket::bind((a_ip, 0)).expect("bind"));
    for _ in 0..SENT {
        tx.send_to(b"x", (node_ip, 7401)).expect("send");
    }
    settle(&[&node, &a_ns]);
    let doc = observer.stop();
    assert_eq!(
        path_by_veth(&doc, &live)["counters"]["from_pod"]["forwarded_packets"],
        SENT
    );
    assert_eq!(
        path_by_veth(&doc, STALE)["counters"]["from_pod"]["forwarded_packets"],
        0
    );
    run(&["ip", "-n", &node, "link", "del", STALE]);
}

/// `sgpath agent --window 3s`: spoofed packets raise `pod-source-spoofed`; with no more of
/// them the finding is cleared (`finding-cleared` logged once) within one window, while the
/// since-start counter keeps its count and the window's figure drops to zero.
pub fn finding_clears_one_window_after_its_cause(lab: &Lab) {
    const WINDOW: Duration = Duration::from_secs(3);
    let [(a_ns, a_ip), (_, b_ip)] = two_ordinary(lab);
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let _rx = in_netns(&node, || UdpSocket::bind((node_ip, 7402)).expect("bind"));
    let agent = Agent::in_lab(lab, &["--window", "3s"]);
    send_spoofed(&a_ns, b_ip, node_ip, 7402, SPOOFED);
    let raised = agent.report_until(Duration::from_secs(5), |d| {
        !findings(d, "pod-source-spoofed").is_empty()
    });
    assert_eq!(
        findings(&raised, "pod-source-spoofed").len(),
        1,
        "{}",
        raised["findings"]
    );
    let start = std::time::Instant::now();
    agent.wait_event("finding-cleared", WINDOW + Duration::from_secs(3));
    let took = start.elapsed();
    let cleared: Vec<Value> = agent
        .log_events()
        .into_iter()
        .filter(|e| e["event"] == "finding-cleared" && e["finding"] == "pod-source-spoofed")
        .collect();
    assert_eq!(
        cleared.len(),
        1,
        "cleared after {took:?}: {}",
        agent.log_text()
    );
    let doc = agent.report(&[]);
    assert!(
        findings(&doc, "pod-source-spoofed").is_empty(),
        "{}",
        doc["findings"]
    );
    let a = path_by_ip(&doc, a_ip);
    assert_eq!(a["counters"]["from_pod"]["foreign_packets"], SPOOFED, "{a}");
    assert_eq!(a["window"]["from_pod"]["foreign_packets"], 0, "{a}");
    // Once: a later window without evidence logs nothing more.
    std::thread::sleep(WINDOW);
    let again = agent
        .log_events()
        .into_iter()
        .filter(|e| e["event"] == "finding-cleared" && e["finding"] == "pod-source-spoofed")
        .count();
    assert_eq!(again, 1);
}

/// Every `enum skb_drop_reason` value of the running kernel is in one of the drop-class
/// tables (`agent/src/model/drops.rs`); a kernel without reasons (5.10) has none.
pub fn drop_reasons_are_all_classified() {
    let btf = sgpath::collect::btf::Btf::from_kernel().expect("the kernel's BTF");
    let Some(reasons) = btf.enum_variants("skb_drop_reason") else {
        let (major, minor) = crate::kernel_version();
        assert!(
            (major, minor) < (5, 17),
            "kernel {major}.{minor} has drop reasons, BTF says none"
        );
        return;
    };
    let unclassified: Vec<&str> = reasons
        .values()
        .map(|n| n.strip_prefix("SKB_DROP_REASON_").unwrap_or(n))
        .filter(|n| !sgpath::model::drops::is_classified(n))
        .collect();
    assert!(
        unclassified.is_empty(),
        "drop reasons in no class table: {unclassified:?}"
    );
}

/// The Internet checksum of `data` plus `sum` (a pseudo-header's).
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP SYN from `src`:`sport` to `dst`:`port`, checksums right (the receiver checks
/// TCP's; the kernel fills in IP's).
fn syn_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(port.to_be_bytes());
    tcp.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x72, 0x10, 0, 0, 0, 0]);
    let mut pseudo = 0u32;
    for w in [src.octets(), dst.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + tcp.len() as u32;
    let sum = checksum(pseudo, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(tcp);
    p
}

/// Sends raw `packets` from namespace `ns` (each to its own IPv4 destination).
fn send_raw(ns: &str, packets: &[(Ipv4Addr, Vec<u8>)]) {
    in_netns(ns, || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        for (dst, packet) in packets {
            let to = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: valid buffer and address for the call's duration.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert_eq!(
                sent,
                packet.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    });
}

/// Ports one scan probes, per target.
const SCANNED: u16 = 1000;

/// One pod scans 1,000 closed ports (the node answers RST: refused) and 1,000 filtered ones
/// (its neighbour drops them: unanswered). Every connection counts, exactly; the port labels
/// stay at 16 plus `other` per tally, the flows at 32, and the agent's memory flat.
pub fn port_scan_stays_bounded(lab: &Lab) {
    let [(a_ns, a_ip), (b_ns, b_ip)] = two_ordinary(lab);
    let node_ip = lab.spec.node.primary_ip;
    run(&["ip", "netns", "exec", &b_ns, "nft", "add table inet sgscan"]);
    run(&[
        "ip",
        "netns",
        "exec",
        &b_ns,
        "nft",
        "add chain inet sgscan in { type filter hook input priority 0; tcp dport 30000-40000 drop; }",
    ]);
    let agent = Agent::in_lab(lab, &["--syn-timeout", "1s", "--window", "10s"]);
    let pid = agent.pid();
    let rss = || crate::agent::memory_kib(pid).0;
    let before = rss();
    let mut packets = Vec::new();
    for i in 0..SCANNED {
        packets.push((node_ip, syn_packet(a_ip, 50000 + i, node_ip, 20000 + i)));
        packets.push((b_ip, syn_packet(a_ip, 50000 + i, b_ip, 30000 + i)));
    }
    send_raw(&a_ns, &packets);
    let total = |d: &Value, tally: &str| -> u64 {
        d[tally]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    };
    let doc = agent.report_until(Duration::from_secs(20), |d| {
        let c = &path_by_ip(d, a_ip)["counters"]["from_pod"];
        total(c, "syn_refused") == u64::from(SCANNED)
            && total(c, "syn_unanswered") == u64::from(SCANNED)
    });
    let c = &path_by_ip(&doc, a_ip)["counters"]["from_pod"];
    assert_eq!(total(c, "syn_refused"), u64::from(SCANNED), "{c}");
    assert_eq!(total(c, "syn_unanswered"), u64::from(SCANNED), "{c}");
    let max_ports = sgpath::model::MAX_PORTS + 1;
    for tally in ["syn_refused", "syn_unanswered"] {
        assert_eq!(
            c[tally].as_object().unwrap().len(),
            max_ports,
            "{tally}: {c}"
        );
        assert_eq!(c[tally]["other"], u64::from(SCANNED) - 16, "{tally}: {c}");
    }
    assert_eq!(
        c["unanswered"].as_array().unwrap().len(),
        sgpath::model::conns::TOP_UNANSWERED,
        "{c}"
    );
    let (_, metrics) = agent.request("GET", "/metrics", &[]);
    let a = format!("pod_ip=\"{a_ip}\"");
    for family in [
        "sgpath_path_syn_refused_total{",
        "sgpath_path_syn_unanswered_total{",
    ] {
        let series = metrics
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(&a))
            .count();
        assert_eq!(series, max_ports, "{family}");
    }
    let grew = rss().saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "the agent grew by {grew} KiB under a port scan"
    );
    run(&[
        "ip",
        "netns",
        "exec",
        &b_ns,
        "nft",
        "delete table inet sgscan",
    ]);
}

/// An HTTP/1.0 server on `port` in namespace `ns`, answering every request with 200 and
/// closing, until dropped.
struct HttpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    fn start(ns: &str, port: u16) -> HttpServer {
        let listener = in_netns(ns, || {
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("listen")
        });
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        HttpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n` HTTP GETs from namespace `ns` to `to`, 8 at a time; how many got a 200.
fn http_gets(ns: &str, to: std::net::SocketAddr, n: u32) -> u32 {
    use std::io::{Read, Write};
    let done = std::sync::atomic::AtomicU32::new(0);
    let next = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let ok = in_netns(ns, || {
                        let Ok(mut c) =
                            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
                        else {
                            return false;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut body = String::new();
                        c.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                            && c.read_to_string(&mut body).is_ok()
                            && body.starts_with("HTTP/1.0 200")
                    });
                    if ok {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    done.into_inner()
}

/// The healthy default lab under sustained HTTP load: thousands of short connections from
/// the node (kubelet-like), the bastion and a pod, connects to closed ports (refused), and
/// the endpoint drops all that brings. The agent raises no warning or error, counts the
/// node's connections exactly, and every refused one as refused.
pub fn healthy_lab_under_http_load_raises_nothing(lab: &Lab) {
    const FROM_NODE: u32 = 100;
    const FROM_BASTION: u32 = 100;
    const FROM_POD: u32 = 50;
    const CLOSED: u16 = 10;
    let node = lab.layout.node();
    let pods: Vec<(String, Ipv4Addr)> = (0..lab.spec.pods.len())
        .map(|i| (lab.layout.pod(i), lab.spec.pods[i].ip))
        .collect();
    let servers: Vec<HttpServer> = pods
        .iter()
        .map(|(ns, _)| HttpServer::start(ns, 80))
        .collect();
    let agent = Agent::in_lab(lab, &["--syn-timeout", "1s", "--window", "30s"]);
    let bastion = lab.layout.bastion();
    let client = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    let mut sent = 0;
    for (i, (_, ip)) in pods.iter().enumerate() {
        let to = (*ip, 80).into();
        assert_eq!(http_gets(&node, to, FROM_NODE), FROM_NODE, "node -> {ip}");
        assert_eq!(
            http_gets(&bastion, to, FROM_BASTION),
            FROM_BASTION,
            "bastion -> {ip}"
        );
        if i != client {
            assert_eq!(
                http_gets(&pods[client].0, to, FROM_POD),
                FROM_POD,
                "pod -> {ip}"
            );
            sent += FROM_POD;
        }
        sent += FROM_NODE + FROM_BASTION;
        for _ in 0..CLOSED {
            let refused = in_netns(&node, || {
                std::net::TcpStream::connect_timeout(&(*ip, 81).into(), Duration::from_secs(3))
            });
            assert!(refused.is_err(), "port 81 of {ip} answered");
        }
    }
    assert!(sent >= 1000, "{sent} connections");
    let want = |d: &Value| {
        pods.iter().all(|(_, ip)| {
            let c = &path_by_ip(d, *ip)["counters"]["to_pod"];
            c["syn_answered"]["80"] == u64::from(FROM_NODE)
                && c["syn_refused"]["81"] == u64::from(CLOSED)
        })
    };
    let doc = agent.report_until(Duration::from_secs(10), want);
    for (_, ip) in &pods {
        let c = &path_by_ip(&doc, *ip)["counters"]["to_pod"];
        assert_eq!(c["syn_answered"]["80"], u64::from(FROM_NODE), "{ip}: {c}");
        assert_eq!(c["syn_refused"]["81"], u64::from(CLOSED), "{ip}: {c}");
        assert!(
            c["syn_unanswered"].as_object().unwrap().is_empty(),
            "{ip}: {c}"
        );
    }
    drop(servers);
    // Teardown after the load: still nothing.
    std::thread::sleep(Duration::from_secs(2));
    let doc = agent.report(&[]);
    let serious: Vec<&Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(
        serious.is_empty(),
        "a healthy node under load raised {serious:#?}"
    );
    let events = agent.log_events();
    let raised: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "finding-raised" && e["severity"] != "info")
        .collect();
    assert!(raised.is_empty(), "{raised:#?}");
}
