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
    in_netns(ns, || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let packet = udp_packet(src, dst, port);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        for i in 0..n {
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
                "spoofed datagram {i}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
    });
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
