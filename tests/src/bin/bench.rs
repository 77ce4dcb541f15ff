//! `cargo xtask bench`: measures sgpath's costs on this machine and prints a Markdown
//! report (xtask writes it to BENCHMARKS.md).
//!
//! - Packet path: the kernel's mean run time of each tc hook per packet
//!   (BPF_PROG_TEST_RUN, 1 000 000 runs, median of 5), for an IPv4/UDP frame and an ARP frame.
//! - Path probes: the kernel's own accounting (BPF_ENABLE_STATS run time / run count) of
//!   `path_rx`, `path_tx` and the drop handler while 200 000 datagrams cross a veth pair
//!   shaped like a pod path each way, to a port nobody listens on (so every datagram is
//!   also a drop).
//! - Snapshot: `collect::node` + classification + checks of a node namespace with N pods
//!   (veth pairs, main routes, 512 rules), an `eth0` with a default route and a NodeLocal
//!   DNSCache address, so every pod gets its five route lookups (gateway, node IP,
//!   169.254.20.10 and its answer, instance metadata); median of 15 runs.
//!
//! Side effects: loads BPF programs (not attached); creates namespaces `sgb-*` and deletes them.

use std::time::Instant;

use sgpath::{
    checks,
    collect::{self, btf::Btf},
    ebpf::{
        IfProbes,
        paths::{DropSource, PathProbes, probe_config},
    },
};
use sgpath_ebpf::packet::{NetnsRole, PodAddr};
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

/// `ip -n <ns> -batch -` with `script` on stdin; panics if any line fails.
fn ip_batch(ns: &str, script: &str) {
    sgpath_tests::feed(&["ip", "-n", ns, "-batch", "-"], script);
}

const FLOOD: u64 = 200_000;

fn path_probes(out: &mut String) {
    use std::os::unix::fs::MetadataExt;
    let node = NetNs::new("sgb-pnode");
    let pod = NetNs::new("sgb-ppod");
    let script = "\
        link add hv0 address 02:00:00:00:00:0a type veth peer name eth0 netns sgb-ppod address 02:00:00:00:00:0b\n\
        addr add 10.98.0.1/24 dev hv0\n\
        neigh add 10.98.0.2 lladdr 02:00:00:00:00:0b dev hv0 nud permanent\n\
        link set hv0 up\n";
    ip_batch("sgb-pnode", script);
    ip_batch(
        "sgb-ppod",
        "addr add 10.98.0.2/24 dev eth0\n\
         neigh add 10.98.0.1 lladdr 02:00:00:00:00:0a dev eth0 nud permanent\n\
         link set eth0 up\n",
    );
    let ino = |ns: &str| std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino() as u32;
    let btf = Btf::from_kernel().expect("BTF");
    let source = if btf.enum_variants("skb_drop_reason").is_some() {
        DropSource::Reason
    } else {
        DropSource::Location
    };
    let ifindex = node.enter(|| nix::net::if_::if_nametoindex("hv0").unwrap());
    let mut probes = PathProbes::attach(
        probe_config(&btf, ino("sgb-pnode")).unwrap(),
        source,
        Default::default(),
    )
    .expect("attach");
    probes
        .sync(
            &[(PodAddr::v4([10, 98, 0, 2]), 0)],
            &[(ifindex, sgpath_ebpf::IfaceRole::HostVeth)],
            &[
                (ino("sgb-pnode"), NetnsRole::Node),
                (ino("sgb-ppod"), NetnsRole::Pod),
            ],
        )
        .expect("maps");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let flood = |ns: &NetNs, from: [u8; 4], to: [u8; 4]| {
        ns.enter(|| {
            let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::from(from), 0)).unwrap();
            let dst = (std::net::Ipv4Addr::from(to), 9999);
            for _ in 0..FLOOD {
                let _ = s.send_to(&[0u8; 18], dst);
            }
        })
    };
    let t = Instant::now();
    flood(&pod, [10, 98, 0, 2], [10, 98, 0, 1]);
    flood(&node, [10, 98, 0, 1], [10, 98, 0, 2]);
    let secs = t.elapsed().as_secs_f64();
    out.push_str(&format!(
        "Drops named by {}; {FLOOD} datagrams each way in {secs:.1} s.\n\n| program | hook | runs | ns per run |\n|---|---|---|---|\n",
        match source {
            DropSource::Reason => "reason",
            DropSource::Location => "location",
        }
    ));
    for (name, runs, time) in probes.run_stats().expect("stats") {
        let hook = match name {
            "path_rx" => "tp_btf/netif_receive_skb",
            "path_tx" => "tp_btf/net_dev_start_xmit",
            _ => "tp_btf/kfree_skb",
        };
        out.push_str(&format!(
            "| `{name}` | {hook} | {runs} | {:.0} |\n",
            time.as_nanos() as f64 / runs.max(1) as f64
        ));
    }
    drop(probes);
    drop(pod);
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
    ip_batch("sgb-node", &batch);
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
    out.push_str("\n## Path probes (`observe`)\n\nThe kernel's own accounting (BPF_ENABLE_STATS): run time over run count of each program\nwhile datagrams cross a pod-shaped veth pair; every datagram is also a drop (no listener).\nThe tracepoints fire for every packet of the machine, so a run includes the early exits.\n\n");
    path_probes(&mut out);
    out.push_str("\n## Snapshot (`inspect` without output): collect (5 route lookups per pod) + classify + check\n\n| pods | ms (median of 15) |\n|---|---|\n");
    for pods in [10, 110, 250] {
        snapshot(&mut out, pods);
    }
    print!("{out}");
}
