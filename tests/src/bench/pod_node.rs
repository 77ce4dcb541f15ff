//! A node namespace laid out as the VPC CNI lays out ordinary pods (standard mode): per pod
//! a host veth `eni…` in the node, `eth0` with a /32 in the pod's own namespace, the
//! node's `<ip> dev eni… scope link` route and `512: from all to <ip> lookup main` rule, and
//! in the pod `default via 169.254.1.1` with a permanent neighbour for it. The node's
//! `eth0` is one end of a veth to a `-vpc` namespace (this kernel has no dummy links).
//!
//! Addresses: node 10.98.0.10/16, pods 10.98.1.2 upwards (250 per /24).
//!
//! Side effects: creates namespaces `<prefix>-node`, `<prefix>-vpc`, `<prefix>-p<i>` and a
//! CNI config `/tmp/<prefix>.conflist`; [`PodNode`]'s drop deletes them all.

use std::{net::Ipv4Addr, path::PathBuf, process::Command, time::Instant};

use crate::feed;

/// The node's address, on its `eth0`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 10);

/// Namespaces created in one `ip -batch` and deleted in one on drop (even on a panic).
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn new(names: Vec<String>) -> Namespaces {
        let del: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        // Leftovers of an interrupted run; `-force` goes on past the missing ones.
        let _ = run_batch_quiet(&["ip", "-force", "-batch", "-"], &del);
        let add: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        feed(&["ip", "-batch", "-"], &add);
        let up: String = names
            .iter()
            .map(|n| format!("netns exec {n} ip link set lo up\n"))
            .collect();
        feed(&["ip", "-batch", "-"], &up);
        Namespaces(names)
    }

    pub fn push(&mut self, name: String) {
        self.0.push(name);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let del: String = self.0.iter().map(|n| format!("netns del {n}\n")).collect();
        let _ = run_batch_quiet(&["ip", "-force", "-batch", "-"], &del);
    }
}

fn run_batch_quiet(argv: &[&str], input: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    child.wait()?;
    Ok(())
}

/// One pod: its namespace, host veth and address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
}

/// The node and its pods; everything is deleted on drop.
pub struct PodNode {
    pub prefix: String,
    pub pods: Vec<Pod>,
    /// The CNI config the agent reads (`vethPrefix` eni, standard mode).
    pub cni: PathBuf,
    namespaces: Namespaces,
}

/// Pod `i`'s address: 10.98.1.2 upwards, 250 per /24.
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 98, 1 + (i / 250) as u8, (i % 250 + 2) as u8)
}

impl PodNode {
    /// A node with `pods` pods, each in its own namespace.
    pub fn new(prefix: &str, pods: usize) -> PodNode {
        let node = format!("{prefix}-node");
        let vpc = format!("{prefix}-vpc");
        let mut names = vec![node.clone(), vpc.clone()];
        names.extend((0..pods).map(|i| format!("{prefix}-p{i}")));
        let namespaces = Namespaces::new(names);
        feed(
            &["ip", "-n", &node, "-batch", "-"],
            &format!(
                "link add eth0 type veth peer name uplink netns {vpc}\n\
                 addr add {NODE_IP}/16 dev eth0\nlink set eth0 up\n"
            ),
        );
        feed(
            &["ip", "-n", &vpc, "-batch", "-"],
            "addr add 10.98.0.1/16 dev uplink\nlink set uplink up\n",
        );
        let cni = PathBuf::from(format!("/tmp/{prefix}.conflist"));
        std::fs::write(&cni, conflist()).expect("write the CNI config");
        let mut node = PodNode {
            prefix: prefix.to_owned(),
            pods: Vec::new(),
            cni,
            namespaces,
        };
        let batch: String = (0..pods).map(|i| node.node_side(i)).collect();
        feed(&["ip", "-n", &node.node(), "-batch", "-"], &batch);
        for i in 0..pods {
            node.pod_side(i);
        }
        node
    }

    /// The node's namespace.
    pub fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// Adds pod `i` (its namespace too) as the CNI's ADD does, returning once it is laid
    /// out; returns when its host veth was created (the node-side commands began).
    pub fn add_pod(&mut self, i: usize) -> Instant {
        let ns = format!("{}-p{i}", self.prefix);
        feed(
            &["ip", "-batch", "-"],
            &format!("netns add {ns}\nnetns exec {ns} ip link set lo up\n"),
        );
        self.namespaces.push(ns);
        let script = self.node_side(i);
        let created = Instant::now();
        feed(&["ip", "-n", &self.node(), "-batch", "-"], &script);
        self.pod_side(i);
        created
    }

    /// The node half of pod `i`: the veth pair (its `eth0` moved into the pod), the /32
    /// route, the 512 rule and a permanent neighbour (no ARP in the floods).
    fn node_side(&self, i: usize) -> String {
        let (veth, ip, ns) = (veth(i), pod_ip(i), format!("{}-p{i}", self.prefix));
        format!(
            "link add {veth} address {host} type veth peer name eth0 netns {ns} address {pod}\n\
             link set {veth} up\n\
             route add {ip} dev {veth} scope link\n\
             rule add to {ip} lookup main prio 512\n\
             neigh add {ip} lladdr {pod} dev {veth} nud permanent\n",
            host = mac(0xa, i),
            pod = mac(0xb, i),
        )
    }

    fn pod_side(&mut self, i: usize) -> &Pod {
        let (ip, ns) = (pod_ip(i), format!("{}-p{i}", self.prefix));
        feed(
            &["ip", "-n", &ns, "-batch", "-"],
            &format!(
                "addr add {ip}/32 dev eth0\nlink set eth0 up\n\
                 route add 169.254.1.1 dev eth0 scope link\n\
                 route add default via 169.254.1.1 dev eth0\n\
                 neigh add 169.254.1.1 lladdr {} dev eth0 nud permanent\n",
                mac(0xa, i)
            ),
        );
        self.pods.push(Pod {
            ns,
            veth: veth(i),
            ip,
        });
        self.pods.last().unwrap()
    }
}

/// Host veth of pod `i`: `eni` and 11 hex digits, 15 characters like the CNI's.
pub fn veth(i: usize) -> String {
    format!("eni{:011x}", 0x5b_0000_0000 + i)
}

fn mac(side: u8, i: usize) -> String {
    format!(
        "02:98:{side:02x}:00:{:02x}:{:02x}",
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// The CNI config of an ordinary node (`/etc/cni/net.d/10-aws.conflist`).
pub fn conflist() -> &'static str {
    r#"{"cniVersion":"0.4.0","name":"aws-cni","disableCheck":true,"plugins":[{"name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"9001","podSGEnforcingMode":"standard"},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}"#
}

impl Drop for PodNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cni);
    }
}
