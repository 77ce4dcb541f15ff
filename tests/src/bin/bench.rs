//! `cargo xtask bench`: measures sgpath's costs on this machine and prints a Markdown
//! report (xtask writes it to BENCHMARKS.md).
//!
//! - Packet path: the kernel's mean run time of each tc hook per packet
//!   (BPF_PROG_TEST_RUN, 1 000 000 runs, median of 5), for an IPv4/UDP frame and an ARP frame.
//! - Snapshot: `collect::node` + classification + checks of a node namespace with N pods
//!   (veth pairs, main routes, 512 rules), an `eth0` with a default route and a NodeLocal
//!   DNSCache address, so every pod gets its five route lookups (gateway, node IP,
//!   169.254.20.10 and its answer, instance metadata); median of 15 runs.
//!
//! Side effects: loads BPF programs (not attached); creates namespaces `sgb-*` and deletes them.

use std::{process::Command, time::Instant};

use sgpath::{checks, collect, ebpf::IfProbes};
use sgpath_tests::NetNs;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// 14 + 20 + 8 + 64 bytes: the eBPF smoke test's datagram.
fn udp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 106];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&92u16.to_be_bytes());
    f[23] = 17;
    f
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f
}

fn packet_path(out: &mut String) {
    let probes = IfProbes::load().unwrap_or_else(|e| panic!("load: {e}"));
    out.push_str(
        "| hook | frame | ns per packet (median of 5 × 1 000 000 runs) |\n|---|---|---|\n",
    );
    for name in ["if_ingress", "if_egress"] {
        for (label, frame) in [("IPv4/UDP 106 B", udp_frame()), ("ARP 42 B", arp_frame())] {
            let runs: Vec<f64> = (0..5)
                .map(|_| {
                    probes
                        .time_per_packet(name, &frame, 1_000_000)
                        .expect("test run")
                        .as_nanos() as f64
                })
                .collect();
            out.push_str(&format!("| `{name}` | {label} | {:.0} |\n", median(runs)));
        }
    }
}

fn snapshot(out: &mut String, pods: usize) {
    let node = NetNs::new("sgb-node");
    let peer = NetNs::new("sgb-pods");
    // The node's uplink and NodeLocal DNSCache (veths: this machine's kernel has no dummy).
    let mut batch = String::from(
        "link add eth0 type veth peer name uplink netns sgb-pods\naddr add 10.0.0.10/16 dev eth0\nlink set eth0 up\nroute add default via 10.0.0.1 dev eth0\nlink add nodelocaldns type veth peer name nld netns sgb-pods\naddr add 169.254.20.10/32 dev nodelocaldns\nlink set nodelocaldns up\n",
    );
    for i in 0..pods {
        let ip = format!("192.168.{}.{}", i / 250, i % 250 + 2);
        batch.push_str(&format!("link add eni{i:011x} type veth peer name p{i} netns sgb-pods\nlink set eni{i:011x} up\n"));
        batch.push_str(&format!(
            "route add {ip} dev eni{i:011x} scope link\nrule add pref 512 to {ip} table main\n"
        ));
    }
    let mut child = Command::new("ip")
        .args(["-n", "sgb-node", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "building {pods} pods");
    let times = node.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sources = collect::Sources::default();
        (0..15)
            .map(|_| {
                let t = Instant::now();
                let (n, topo) = rt
                    .block_on(collect::node_with_topology(&sources))
                    .expect("collect");
                let findings = checks::run(&n, &topo);
                assert_eq!(topo.paths.len(), pods);
                assert_eq!(n.lookups.len(), 4 * pods, "gateway, node, DNS, metadata");
                std::hint::black_box(findings);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<f64>>()
    });
    out.push_str(&format!("| {pods} | {:.1} |\n", median(times)));
    drop(peer);
}

fn main() {
    let mut out = String::new();
    let kernel = collect::kernel_release();
    out.push_str(&format!(
        "# sgpath benchmarks\n\nMeasured by `cargo xtask bench` on kernel {kernel} ({} CPUs), release build.\n\n## Packet path\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    out.push_str("The kernel's own timer around the program (BPF_PROG_TEST_RUN), so a figure includes the\ntest-run loop; the hook is one per-CPU hash lookup and two adds, no lock, no event to userspace.\n\n");
    packet_path(&mut out);
    out.push_str("\n## Snapshot (`inspect` without output): collect (5 route lookups per pod) + classify + check\n\n| pods | ms (median of 15) |\n|---|---|\n");
    for pods in [10, 110, 250] {
        snapshot(&mut out, pods);
    }
    print!("{out}");
}
