//! `sgpath observe` with exact numbers: the test sends and drops a known number of
//! datagrams on a lab's pod paths while observe counts, then compares every counter.
//! Shared by the host test (6.18) and the VM matrix (5.10, 6.1, 6.12).
//!
//! Side effects: a lab (namespaces `<prefix>-*`), nftables tables and tc filters inside the
//! lab's namespaces, all gone with the lab.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use xtask::lab::{Lab, observe::Observing};

use crate::{kernel_version, run, sgpath_bin};

/// Runs `f` on a thread that has entered the named namespace (`/run/netns/<ns>`).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// The kernel's packet counters of namespace `ns` (`/proc/net/snmp` and `/proc/net/dev` as
/// its thread sees them).
fn net_counters(ns: &str) -> String {
    in_netns(ns, || {
        ["snmp", "dev"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()
            })
            .collect()
    })
}

/// Waits until the packets just sent have crossed the softirqs of `namespaces` (and their
/// ICMP answers have come back): polls their kernel packet counters every 100 ms until they
/// have not moved for 300 ms (a softirq deferred under TCG load resumes well within that),
/// at most 5 s. For counts that `observe` only reports at its end.
pub fn settle(namespaces: &[&str]) {
    let read = || {
        namespaces
            .iter()
            .map(|ns| net_counters(ns))
            .collect::<Vec<_>>()
    };
    let start = std::time::Instant::now();
    let (mut last, mut still) = (read(), 0);
    while still < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

/// A UDP socket bound in namespace `ns` (it stays there whichever thread uses it).
pub fn udp_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    in_netns(ns, || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    })
}

/// Sends `n` datagrams of `payload` bytes from `from` to `to`.
pub fn send(from: &UdpSocket, to: SocketAddr, n: u64, payload: usize) {
    for _ in 0..n {
        from.send_to(&vec![0u8; payload], to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }
}

/// Sends `n` datagrams that a local nftables rule drops: the kernel answers each `sendto`
/// with EPERM, which is the point.
pub fn send_dropped(from: &UdpSocket, to: SocketAddr, n: u64) {
    for _ in 0..n {
        let _ = from.send_to(&[0u8], to);
    }
}

/// Receives exactly `n` datagrams on `sock` (panics naming the one missing).
pub fn receive(sock: &UdpSocket, n: u64) {
    let mut buf = [0u8; 2048];
    for i in 0..n {
        sock.recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {} of {n} not received: {e}", i + 1));
    }
}

/// A running `sgpath observe` in the lab's node (the lab's [`Observing`], panicking).
pub struct Observer(Observing);

impl Observer {
    /// Starts `sgpath observe --output json <extra>` in the node and returns once it says it
    /// is counting.
    pub fn start(lab: &Lab, extra: &[&str]) -> Observer {
        Observer(
            Observing::start(lab, &sgpath_bin(), extra)
                .unwrap_or_else(|e| panic!("sgpath observe did not start counting: {e:#}")),
        )
    }

    /// SIGTERM, then the report it prints (exit status 0 or 1).
    pub fn stop(self) -> Value {
        self.0
            .stop()
            .unwrap_or_else(|e| panic!("sgpath observe: {e:#}"))
            .report
    }
}

/// The `counters` of the path of `pod_ip`.
pub fn counters(doc: &Value, pod_ip: Ipv4Addr) -> &Value {
    let p = doc["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .find(|p| p["pod_ip"] == pod_ip.to_string())
        .unwrap_or_else(|| panic!("no path for {pod_ip}"));
    &p["counters"]
}

/// Whether the running kernel names drops by reason (5.17+).
pub fn has_drop_reasons() -> bool {
    kernel_version() >= (5, 17)
}

/// How the agent reads headers on this kernel: BTF-typed loads from 6.2 (`bpf_rdonly_cast`),
/// a helper read before.
pub fn expected_header_read() -> &'static str {
    if kernel_version() >= (6, 2) {
        "typed"
    } else {
        "probe"
    }
}

/// One direction's drops named `name`, by reason or by location as the report says.
pub fn drops_named(dir: &Value, name: &str) -> u64 {
    dir["drops_by_reason"][name]
        .as_u64()
        .or_else(|| dir["drops_by_location"][name].as_u64())
        .unwrap_or(0)
}

/// `nft -f -` in namespace `ns`.
pub fn nft(ns: &str, script: &str) {
    crate::feed(&["ip", "netns", "exec", ns, "nft", "-f", "-"], script);
}

/// `tc filter show dev <dev> <dir>` in `ns`.
pub fn tc_filters(ns: &str, dev: &str, dir: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "filter", "show", "dev", dev, dir])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec <ns> <argv...>`, panicking on failure.
pub fn ns_run(ns: &str, argv: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full);
}

/// Datagram counts and payload sizes of [`observe_counts_exact_packets`].
const TO_POD: u64 = 40;
const TO_POD_PAYLOAD: usize = 100;
const FROM_POD: u64 = 30;
const FROM_POD_PAYLOAD: usize = 200;
/// Dropped by an nftables rule in the node's output hook.
const NFT_DROPPED: u64 = 12;
/// Sent to a pod port nobody listens on: dropped inside the pod's namespace.
const NO_SOCKET: u64 = 5;
const NO_SOCKET_PAYLOAD: usize = 10;
/// Sent by a second pod to an address the node has no route for.
const NO_ROUTE: u64 = 3;
/// An address of the lab's VPC CIDR nothing owns; an `unreachable` rule stops it in the node.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 250);

/// Sends known datagrams on two ordinary pods' paths while `sgpath observe` counts, and
/// checks every counter of every path. `drop_source` forces `--drop-source`, `header_read`
/// `--header-read`.
pub fn observe_counts_exact_packets(
    lab: &Lab,
    drop_source: Option<&str>,
    header_read: Option<&str>,
) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let ordinary: Vec<usize> = (0..lab.spec.pods.len())
        .filter(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .take(2)
        .collect();
    let [a, b] = ordinary[..] else {
        panic!("the lab needs two ordinary pods on the primary ENI");
    };
    let (a_ns, b_ns) = (lab.layout.pod(a), lab.layout.pod(b));
    let (a_ip, b_ip) = (lab.spec.pods[a].ip, lab.spec.pods[b].ip);
    // One ICMP port unreachable per refused datagram, not a rate-limited few.
    ns_run(&a_ns, &["sysctl", "-qw", "net.ipv4.icmp_ratemask=0"]);
    nft(
        &node,
        "table inet sgt_observe {\n chain out {\n type filter hook output priority 0;\n \
         udp dport 7003 drop\n }\n}\n",
    );
    ns_run(
        &node,
        &[
            "ip",
            "rule",
            "add",
            "to",
            &NOWHERE.to_string(),
            "unreachable",
            "prio",
            "50",
        ],
    );
    let node_rx = udp_in(&node, (node_ip, 7001).into());
    let node_tx = udp_in(&node, (node_ip, 0).into());
    let a_rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7002).into());
    let a_tx = udp_in(&a_ns, (a_ip, 0).into());
    let b_tx = udp_in(&b_ns, (b_ip, 0).into());

    let mut extra = Vec::new();
    if let Some(s) = drop_source {
        extra.extend(["--drop-source", s]);
    }
    if let Some(h) = header_read {
        extra.extend(["--header-read", h]);
    }
    let observer = Observer::start(lab, &extra);
    send(&node_tx, (a_ip, 7002).into(), TO_POD, TO_POD_PAYLOAD);
    receive(&a_rx, TO_POD);
    send(&a_tx, (node_ip, 7001).into(), FROM_POD, FROM_POD_PAYLOAD);
    receive(&node_rx, FROM_POD);
    send_dropped(&node_tx, (a_ip, 7003).into(), NFT_DROPPED);
    send(&node_tx, (a_ip, 7004).into(), NO_SOCKET, NO_SOCKET_PAYLOAD);
    send(&b_tx, (NOWHERE, 7005).into(), NO_ROUTE, 1);
    // The refused datagrams and their ICMP answers cross softirqs after send returns.
    settle(&[&node, &a_ns, &b_ns]);
    let doc = observer.stop();

    let reasons = drop_source != Some("location") && has_drop_reasons();
    assert_eq!(
        doc["drop_source"],
        if reasons { "reason" } else { "location" },
        "{}",
        doc["probes"]
    );
    // The counts below hold for both ways of reading headers; this says which one ran (the
    // 5.10 and 6.1 stages run the helper read, 6.12 and the host the typed loads unless
    // told otherwise).
    assert_eq!(
        doc["header_read"],
        header_read.unwrap_or(expected_header_read()),
        "{}",
        doc["probes"]
    );
    let udp = |payload: usize| (20 + 8 + payload) as u64;
    let ca = counters(&doc, a_ip);
    let ctx = format!("pod {a_ip}: {}", serde_json::to_string_pretty(ca).unwrap());
    // To the pod: the delivered datagrams and the ones its empty port refused (handed over,
    // then dropped inside the pod); the nftables drops never reached the veth.
    assert_eq!(
        ca["to_pod"]["forwarded_packets"],
        TO_POD + NO_SOCKET,
        "{ctx}"
    );
    assert_eq!(
        ca["to_pod"]["forwarded_bytes"],
        TO_POD * udp(TO_POD_PAYLOAD) + NO_SOCKET * udp(NO_SOCKET_PAYLOAD),
        "{ctx}"
    );
    assert_eq!(
        ca["to_pod"]["dropped_packets"],
        NFT_DROPPED + NO_SOCKET,
        "{ctx}"
    );
    if reasons {
        assert_eq!(
            drops_named(&ca["to_pod"], "NETFILTER_DROP"),
            NFT_DROPPED,
            "{ctx}"
        );
        assert_eq!(drops_named(&ca["to_pod"], "NO_SOCKET"), NO_SOCKET, "{ctx}");
    }
    // Freed by netfilter: nf_hook_slow on 5.10 to 6.12, nft_do_chain on newer kernels.
    let in_netfilter: u64 = ca["to_pod"]["drops_by_location"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(f, _)| f.starts_with("nf_") || f.starts_with("nft_"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(in_netfilter, NFT_DROPPED, "{ctx}");
    assert_eq!(
        ca["to_pod"]["drops_by_location"]["__udp4_lib_rcv"], NO_SOCKET,
        "{ctx}"
    );
    // From the pod: its datagrams and one ICMP port unreachable (20 + 8 + the refused
    // datagram) per refused datagram.
    assert_eq!(
        ca["from_pod"]["forwarded_packets"],
        FROM_POD + NO_SOCKET,
        "{ctx}"
    );
    assert_eq!(
        ca["from_pod"]["forwarded_bytes"],
        FROM_POD * udp(FROM_POD_PAYLOAD) + NO_SOCKET * (28 + udp(NO_SOCKET_PAYLOAD)),
        "{ctx}"
    );
    assert_eq!(ca["from_pod"]["dropped_packets"], 0, "{ctx}");

    let cb = counters(&doc, b_ip);
    let ctx = format!("pod {b_ip}: {}", serde_json::to_string_pretty(cb).unwrap());
    assert_eq!(cb["from_pod"]["dropped_packets"], NO_ROUTE, "{ctx}");
    // Received from the pod, then dropped: both counted, neither subtracted.
    assert_eq!(cb["from_pod"]["forwarded_packets"], NO_ROUTE, "{ctx}");
    if reasons {
        assert_eq!(
            drops_named(&cb["from_pod"], "IP_INNOROUTES"),
            NO_ROUTE,
            "{ctx}"
        );
    }
    assert_eq!(
        cb["from_pod"]["drops_by_location"]["ip_error"], NO_ROUTE,
        "{ctx}"
    );
    // The node answers each with an ICMP net unreachable, rate-limited: at most one each.
    assert_eq!(cb["to_pod"]["dropped_packets"], 0, "{ctx}");
    assert!(
        cb["to_pod"]["forwarded_packets"].as_u64().unwrap() <= NO_ROUTE,
        "{ctx}"
    );

    // No other path's counters move.
    for p in doc["paths"].as_array().unwrap() {
        let ip = p["pod_ip"].as_str().unwrap_or_default();
        if ip == a_ip.to_string() || ip == b_ip.to_string() {
            continue;
        }
        for dir in ["to_pod", "from_pod"] {
            for key in ["forwarded_packets", "dropped_packets"] {
                assert_eq!(
                    p["counters"][dir][key], 0,
                    "{ip} {dir} {key}: {}",
                    p["counters"]
                );
            }
        }
    }
    // The finding names the drops.
    let finding = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "path-drops" && f["subject"] == a_ip.to_string())
        .unwrap_or_else(|| panic!("no path-drops finding for {a_ip}: {}", doc["findings"]));
    // Only netfilter's drops are the path's: the closed port's (NO_SOCKET) are the
    // endpoint's, counted beside them.
    let evidence = finding["evidence"][0].as_str().unwrap();
    assert!(
        evidence.starts_with(&format!("{NFT_DROPPED} packets to the pod (host veth "))
            && evidence.contains(&format!("({} drops in all)", NFT_DROPPED + NO_SOCKET)),
        "{finding}"
    );
}

/// What the AWS network policy agent does on EKS: a priority-1 tc filter on a pod's host
/// veth that returns a verdict. With `action ok` every packet still counts as forwarded;
/// with `action drop` every packet counts as a drop on the right path and direction. The
/// other filter is still there, unchanged, after observe exits.
pub fn observe_coexists_with_a_priority_1_filter(lab: &Lab, action: &str) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let a = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    let pod = &lab.spec.pods[a];
    let (a_ns, a_ip) = (lab.layout.pod(a), pod.ip);
    let veth = xtask::lab::names::host_veth(&lab.spec, pod);
    // `protocol all` drops ARP too: give the node the pod's MAC up front.
    // Not /sys/class/net: sysfs shows the namespace it was mounted in, not the thread's.
    let link = Command::new("ip")
        .args(["-n", &a_ns, "-o", "link", "show", "eth0"])
        .output()
        .expect("ip link show");
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_owned();
    ns_run(
        &node,
        &[
            "ip",
            "neigh",
            "replace",
            &a_ip.to_string(),
            "lladdr",
            mac.trim(),
            "dev",
            &veth,
            "nud",
            "permanent",
        ],
    );
    ns_run(&node, &["tc", "qdisc", "add", "dev", &veth, "clsact"]);
    for dir in ["ingress", "egress"] {
        ns_run(
            &node,
            &[
                "tc", "filter", "add", "dev", &veth, dir, "prio", "1", "protocol", "all",
                "matchall", "action", action,
            ],
        );
    }
    let before = [
        tc_filters(&node, &veth, "ingress"),
        tc_filters(&node, &veth, "egress"),
    ];
    assert!(
        before[0].contains("matchall") && before[1].contains("matchall"),
        "{before:?}"
    );

    let node_rx = udp_in(&node, (node_ip, 7001).into());
    let node_tx = udp_in(&node, (node_ip, 0).into());
    let a_rx = udp_in(&a_ns, (Ipv4Addr::UNSPECIFIED, 7002).into());
    let a_tx = udp_in(&a_ns, (a_ip, 0).into());
    let observer = Observer::start(lab, &[]);
    send(&node_tx, (a_ip, 7002).into(), TO_POD, TO_POD_PAYLOAD);
    send(&a_tx, (node_ip, 7001).into(), FROM_POD, FROM_POD_PAYLOAD);
    let passes = action == "ok";
    if passes {
        receive(&a_rx, TO_POD);
        receive(&node_rx, FROM_POD);
    } else {
        settle(&[&node, &a_ns]);
    }
    let doc = observer.stop();
    let c = counters(&doc, a_ip);
    let ctx = format!(
        "matchall action {action}, pod {a_ip}: {}",
        serde_json::to_string_pretty(c).unwrap()
    );
    // path_rx fires before tc ingress: what the pod sent crossed its veth and counts as
    // received, and its drop beside it (never subtracted: counters only grow). path_tx fires
    // after tc egress: a packet dropped there never reached the pod's veth.
    let (fwd_to, fwd_from, drop_to, drop_from) = if passes {
        (TO_POD, FROM_POD, 0, 0)
    } else {
        (0, FROM_POD, TO_POD, FROM_POD)
    };
    assert_eq!(c["to_pod"]["forwarded_packets"], fwd_to, "{ctx}");
    assert_eq!(c["from_pod"]["forwarded_packets"], fwd_from, "{ctx}");
    assert_eq!(c["to_pod"]["dropped_packets"], drop_to, "{ctx}");
    assert_eq!(c["from_pod"]["dropped_packets"], drop_from, "{ctx}");
    if !passes && doc["drop_source"] == "reason" {
        assert_eq!(drops_named(&c["to_pod"], "TC_EGRESS"), TO_POD, "{ctx}");
        assert_eq!(drops_named(&c["from_pod"], "TC_INGRESS"), FROM_POD, "{ctx}");
    }
    let after = [
        tc_filters(&node, &veth, "ingress"),
        tc_filters(&node, &veth, "egress"),
    ];
    assert_eq!(before, after, "the priority-1 filters changed");
}

/// Datagrams each pod sends to the bastion on a port its security group does not let out.
const TO_VPC: u64 = 20;

/// A strict branch pod and an ordinary pod send datagrams the VPC's security groups drop
/// (in the lab's VPC namespace, on a real node inside AWS): they leave their paths as
/// forwarded and never count as kernel drops, exactly as a real node sees them.
pub fn observe_never_sees_the_vpcs_drops(lab: &Lab) {
    let bastion: Ipv4Addr = lab.spec.vpc.bastion.addr();
    let strict = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_some())
        .expect("a branch pod");
    let ordinary = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none())
        .expect("an ordinary pod");
    let senders: Vec<(Ipv4Addr, UdpSocket)> = [strict, ordinary]
        .iter()
        .map(|&i| {
            let ip = lab.spec.pods[i].ip;
            (ip, udp_in(&lab.layout.pod(i), (ip, 0).into()))
        })
        .collect();
    let observer = Observer::start(lab, &[]);
    for (_, sock) in &senders {
        send(sock, (bastion, 9999).into(), TO_VPC, 64);
    }
    settle(&[&lab.layout.node(), &lab.layout.vpc()]);
    let doc = observer.stop();
    for (ip, _) in &senders {
        let c = counters(&doc, *ip);
        let ctx = format!("pod {ip}: {}", serde_json::to_string_pretty(c).unwrap());
        assert_eq!(c["from_pod"]["forwarded_packets"], TO_VPC, "{ctx}");
        assert_eq!(c["from_pod"]["dropped_packets"], 0, "{ctx}");
        assert_eq!(c["to_pod"]["dropped_packets"], 0, "{ctx}");
    }
    assert!(
        !doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "path-drops"),
        "{}",
        doc["findings"]
    );
}

/// Lays out a pod in `ns` as the CNI's ADD does (veth `eni<hash of default/late-pod>`,
/// address 192.168.33.33/32, routes, the node's route and `512: to <ip>` rule) and returns
/// its address.
pub fn create_pod(lab: &Lab, ns: &crate::NetNs) -> Ipv4Addr {
    let node = lab.layout.node();
    let ip = Ipv4Addr::new(192, 168, 33, 33);
    let veth = format!(
        "eni{}",
        xtask::lab::names::veth_suffix("default", "late-pod")
    );
    let mac = "02:00:00:00:33:33";
    for argv in [
        vec![
            "ip", "-n", &node, "link", "add", &veth, "address", mac, "type", "veth", "peer",
            "name", "eth0", "netns", &ns.0,
        ],
        vec![
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            "192.168.33.33/32",
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", &ns.0, "link", "set", "eth0", "up"],
        vec![
            "ip",
            "-n",
            &ns.0,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
        vec![
            "ip",
            "-n",
            &ns.0,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
        vec![
            "ip",
            "-n",
            &ns.0,
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
        vec!["ip", "-n", &node, "link", "set", &veth, "up"],
        vec![
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "192.168.33.33",
            "dev",
            &veth,
            "scope",
            "link",
        ],
        vec![
            "ip",
            "-n",
            &node,
            "rule",
            "add",
            "to",
            "192.168.33.33",
            "lookup",
            "main",
            "prio",
            "512",
        ],
    ] {
        run(&argv);
    }
    ip
}

/// Datagrams the pod created during the observation sends.
const LATE_POD: u64 = 25;

/// A pod whose namespace, veth, address, routes and rule appear while `observe` counts
/// (as the CNI's ADD lays them out) is counted from its first packets after its veth
/// appears: the netlink notification re-reads the node and puts the new path in the maps.
pub fn observe_counts_a_pod_created_while_it_runs(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let ns = crate::NetNs::new(&format!("{}-late", lab.layout.prefix));
    let node_rx = udp_in(&node, (node_ip, 7001).into());
    let observer = Observer::start(lab, &[]);
    let created = std::time::Instant::now();
    let ip = create_pod(lab, &ns);
    // The CNI is done; the pod starts talking at once, well within a second.
    std::thread::sleep(Duration::from_millis(500));
    let tx = udp_in(&ns.0, (ip, 0).into());
    send(&tx, (node_ip, 7001).into(), LATE_POD, 32);
    receive(&node_rx, LATE_POD);
    let took = created.elapsed();
    let doc = observer.stop();
    let c = counters(&doc, ip);
    assert_eq!(
        c["from_pod"]["forwarded_packets"], LATE_POD,
        "pod created {took:?} before its last datagram: {c}"
    );
    assert_eq!(
        c["from_pod"]["forwarded_bytes"],
        LATE_POD * (20 + 8 + 32),
        "{c}"
    );
    drop(ns);
}

/// Two `observe` at once (a debugging session beside the DaemonSet): each counts every
/// packet once, and stopping the first leaves the second counting.
pub fn two_observers_count_the_same_packets(lab: &Lab) {
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let a = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_none() && lab.spec.pods[i].eni.is_none())
        .expect("an ordinary pod");
    let a_ip = lab.spec.pods[a].ip;
    let node_rx = udp_in(&node, (node_ip, 7001).into());
    let a_tx = udp_in(&lab.layout.pod(a), (a_ip, 0).into());
    let first = Observer::start(lab, &[]);
    let second = Observer::start(lab, &[]);
    send(&a_tx, (node_ip, 7001).into(), FROM_POD, 16);
    receive(&node_rx, FROM_POD);
    let one = first.stop();
    send(&a_tx, (node_ip, 7001).into(), FROM_POD, 16);
    receive(&node_rx, FROM_POD);
    let two = second.stop();
    assert_eq!(
        counters(&one, a_ip)["from_pod"]["forwarded_packets"],
        FROM_POD,
        "first"
    );
    assert_eq!(
        counters(&two, a_ip)["from_pod"]["forwarded_packets"],
        2 * FROM_POD,
        "second, which kept counting after the first exited"
    );
}

/// `--drop-source reason` where the kernel has no drop reasons (5.10) is refused with a
/// message naming the kernel and the way out; where it has them, observe names drops so.
pub fn drop_source_reason_is_refused_without_reasons() {
    let ns = crate::NetNs::new("sgt-dsr");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(sgpath_bin())
        .args([
            "observe",
            "--duration",
            "1s",
            "--drop-source",
            "reason",
            "--output",
            "json",
        ])
        .output()
        .expect("run observe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if has_drop_reasons() {
        // 0 or 1: an empty namespace has findings (ip_forward off) but no error of sgpath's.
        assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(doc["drop_source"], "reason");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr
                .contains("has no drop reasons (they arrived in 5.17); use --drop-source location"),
            "{stderr}"
        );
    }
}

/// Datagrams a pod sends behind the stale rule of [`a_martian_drop_raises_path_drops`].
const MARTIAN: u64 = 12;
/// The stale rule's priority and table: before the VLAN rules (10), after `0: lookup local`.
const STALE_PRIO: &str = "9";
const STALE_TABLE: &str = "250";

/// A stale rule sends the reverse lookup of a strict pod's address to a table where that
/// address is local (an old owner's leftover): the kernel's input route refuses each of the
/// pod's packets as a martian source (`fib_validate_source`: -EINVAL) and frees it without a
/// reason on 6.1 and 6.12 (`NOT_SPECIFIED` in `ip_rcv_finish`), by location on 5.10. Each is
/// counted exactly as a path drop, and `path-drops` names the pod.
pub fn a_martian_drop_raises_path_drops(lab: &Lab) {
    let node = lab.layout.node();
    let bastion: Ipv4Addr = lab.spec.vpc.bastion.addr();
    let i = (0..lab.spec.pods.len())
        .find(|&i| lab.spec.pods[i].vlan.is_some())
        .expect("a branch pod");
    let ip = lab.spec.pods[i].ip;
    let pod = ip.to_string();
    ns_run(
        &node,
        &[
            "ip",
            "route",
            "add",
            "local",
            &pod,
            "dev",
            "lo",
            "table",
            STALE_TABLE,
        ],
    );
    ns_run(
        &node,
        &[
            "ip",
            "rule",
            "add",
            "to",
            &pod,
            "lookup",
            STALE_TABLE,
            "prio",
            STALE_PRIO,
        ],
    );
    let sock = udp_in(&lab.layout.pod(i), (ip, 0).into());
    let observer = Observer::start(lab, &[]);
    send(&sock, (bastion, 9999).into(), MARTIAN, 32);
    settle(&[&lab.layout.pod(i), &node]);
    let doc = observer.stop();
    let c = counters(&doc, ip);
    let ctx = format!(
        "pod {ip} on {:?}: {}",
        crate::kernel_version(),
        serde_json::to_string_pretty(c).unwrap()
    );
    let out = &c["from_pod"];
    assert_eq!(out["forwarded_packets"], MARTIAN, "{ctx}");
    assert_eq!(out["dropped_packets"], MARTIAN, "{ctx}");
    assert_eq!(out["path_dropped_packets"], MARTIAN, "{ctx}");
    if has_drop_reasons() {
        // 6.1 and 6.12 give the input route's failures no reason of their own.
        assert_eq!(drops_named(out, "NOT_SPECIFIED"), MARTIAN, "{ctx}");
    }
    let at_route: u64 = out["drops_by_location"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(f, _)| sgpath::model::drops::is_route_location(f))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        at_route, MARTIAN,
        "freed where the input route failed: {ctx}"
    );
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "path-drops" && f["subject"] == pod)
        .unwrap_or_else(|| panic!("no path-drops for {pod}: {:#}", doc["findings"]));
    let evidence = f["evidence"][0].as_str().unwrap();
    assert!(
        evidence.starts_with(&format!("{MARTIAN} packets from the pod (host veth ")),
        "{f:#}"
    );
}
