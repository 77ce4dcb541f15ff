//! Datapath II with exact numbers: connections that leave a path and are never answered,
//! DNS queries likewise, and branch traffic that leaves by the wrong interface. The lab's
//! VPC namespace enforces the security groups (stateful nftables), so what it drops never
//! reaches the node, exactly as with AWS; the counts below are what the test itself opened.
//! VM only: the branch pod needs 802.1Q (the host kernel has none).
//!
//! Side effects: the lab's namespaces; TCP listeners, a dnsmasq and nftables rule changes in
//! them, all gone with the lab.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use xtask::lab::{Fault, Lab, spec::RuleOn};

use crate::observe::{Observer, counters, in_netns};

/// `--syn-timeout` of these tests: a connect that fails after [`CONNECT_TIMEOUT`] has been
/// unanswered for longer, and its SYN was retransmitted once (Linux: 1 s).
const SYN_TIMEOUT: &str = "1s";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);
/// After the last request: the timeout plus a sweep (500 ms), with room for TCG.
const SETTLE: Duration = Duration::from_millis(2500);

/// A listening TCP socket in `ns`: the kernel completes handshakes into its backlog, so
/// nothing needs to accept.
fn listen(ns: &str, addr: SocketAddr) -> TcpListener {
    in_netns(ns, || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen {addr} in {ns}: {e}"))
    })
}

/// Runs `attempt(i)` for `i` in `0..n` on `n` threads at once; how many returned true.
fn at_once(n: u16, attempt: impl Fn(u16) -> bool + Sync) -> u16 {
    std::thread::scope(|s| {
        let attempt = &attempt;
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || attempt(i))).collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|&ok| ok)
            .count() as u16
    })
}

/// `n` TCP connects from `ns` to `to`, all at once; how many succeeded.
fn connects(ns: &str, to: SocketAddr, n: u16) -> u16 {
    at_once(n, |_| {
        in_netns(ns, || {
            TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).is_ok()
        })
    })
}

/// A DNS query for `name` (type A) as the bytes a stub resolver sends.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// `n` DNS queries from `ns`, each from its own socket (its own connection, as separate
/// lookups are), to `server`:53; how many got an answer.
fn dns_queries(ns: &str, server: Ipv4Addr, n: u16) -> u16 {
    // Every query of the test from its own source port: sgpath keys a query by its
    // addresses and ports, so a resolver whose next socket reuses a port within the
    // timeout of an answered query is one query to it (a limitation, said in the README).
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(41000);
    at_once(n, |i| {
        let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sock: UdpSocket = in_netns(ns, || UdpSocket::bind(("0.0.0.0", port)).unwrap());
        sock.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
        let id = 0x4000 + i;
        sock.send_to(
            &dns_query(id, "web.sg-test.svc.cluster.local"),
            (server, 53),
        )
        .unwrap();
        let mut buf = [0u8; 512];
        matches!(sock.recv(&mut buf), Ok(len) if len > 12 && buf[..2] == id.to_be_bytes())
    })
}

/// dnsmasq (Debian's) answering one name on `ip`:53 in `ns`, UDP and TCP, as CoreDNS would.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(ns: &str, ip: Ipv4Addr) -> Dnsmasq {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
            ])
            .args([
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg("--address=/web.sg-test.svc.cluster.local/192.168.7.31")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt install dnsmasq; cargo xtask setup does)");
        let d = Dnsmasq(child);
        for _ in 0..100 {
            if dns_queries(ns, ip, 1) == 1 {
                return d;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq in {ns} does not answer on {ip}:53");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The findings with `id`, by subject.
fn findings<'a>(doc: &'a Value, id: &str) -> Vec<&'a Value> {
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .collect()
}

fn subjects(doc: &Value, id: &str) -> Vec<String> {
    findings(doc, id)
        .iter()
        .map(|f| f["subject"].as_str().unwrap().to_owned())
        .collect()
}

/// A port -> count object as a map.
fn ports(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

struct Pods {
    strict: (String, Ipv4Addr),
    ordinary: (String, Ipv4Addr),
    other: (String, Ipv4Addr),
}

fn pods(lab: &Lab) -> Pods {
    let pick = |branch: bool, skip: usize| {
        let i = (0..lab.spec.pods.len())
            .filter(|&i| lab.spec.pods[i].vlan.is_some() == branch)
            .nth(skip)
            .expect("the observe lab's pods");
        (lab.layout.pod(i), lab.spec.pods[i].ip)
    };
    Pods {
        strict: pick(true, 0),
        ordinary: pick(false, 0),
        other: pick(false, 1),
    }
}

const ANSWERED: u16 = 3;
const BLOCKED: u16 = 2;
const REFUSED: u16 = 2;

/// A strict pod's connections out: those its security group lets out are answered, those
/// it blocks (TCP 8080) count once each despite their retransmitted SYNs, and
/// `sg-suspected-block` names the pod, the destination and the port. An ordinary pod blocked
/// the same way (by the node's group) counts the same but raises nothing.
pub fn pod_connections_out(lab: &Lab) {
    let p = pods(lab);
    let bastion_ns = lab.layout.bastion();
    let bastion: Ipv4Addr = lab.spec.vpc.bastion.addr();
    let _l80 = listen(&bastion_ns, (bastion, 80).into());
    let _l8080 = listen(&bastion_ns, (bastion, 8080).into());
    let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
    for (ns, _) in [&p.strict, &p.ordinary] {
        assert_eq!(connects(ns, (bastion, 80).into(), ANSWERED), ANSWERED);
        assert_eq!(connects(ns, (bastion, 8080).into(), BLOCKED), 0);
        // Port 80 of a pod where nothing listens: the groups let it through, a RST comes back.
        assert_eq!(connects(ns, (p.other.1, 80).into(), REFUSED), 0);
    }
    std::thread::sleep(SETTLE);
    let doc = observer.stop();
    for (_, ip) in [&p.strict, &p.ordinary] {
        let c = counters(&doc, *ip);
        let ctx = format!("pod {ip}: {}", serde_json::to_string_pretty(c).unwrap());
        let out = &c["from_pod"];
        assert_eq!(ports(&out["syn_answered"]), map(&[("80", 3)]), "{ctx}");
        assert_eq!(ports(&out["syn_unanswered"]), map(&[("8080", 2)]), "{ctx}");
        // Refused is neither answered nor unanswered, and never a security-group finding.
        assert_eq!(ports(&out["syn_refused"]), map(&[("80", 2)]), "{ctx}");
        assert_eq!(out["unanswered"].as_array().unwrap().len(), 1, "{ctx}");
        assert_eq!(
            out["unanswered"][0]["destination"],
            bastion.to_string(),
            "{ctx}"
        );
        assert_eq!(out["unanswered"][0]["count"], 2, "{ctx}");
        // Clients only: nothing was handed in, the node opened nothing to them.
        assert_eq!(ports(&c["to_pod"]["syn_in"]), map(&[]), "{ctx}");
        assert_eq!(ports(&c["to_pod"]["syn_unanswered"]), map(&[]), "{ctx}");
    }
    // Which way each pod's traffic left: the strict pod by its VLAN, the ordinary by eth0.
    let left = |ip: Ipv4Addr| -> Vec<String> {
        ports(&counters(&doc, ip)["from_pod"]["left_via"])
            .into_keys()
            .collect()
    };
    assert_eq!(left(p.strict.1), ["vlan.eth.1"]);
    assert_eq!(left(p.ordinary.1), ["eth0"]);
    assert_eq!(
        subjects(&doc, "sg-suspected-block"),
        [p.strict.1.to_string()]
    );
    let f = findings(&doc, "sg-suspected-block")[0];
    assert!(
        f["evidence"][0].as_str().unwrap().starts_with(&format!(
            "2 TCP connection(s) from {} to {bastion}:8080",
            p.strict.1
        )),
        "{f}"
    );
    assert!(
        f["remediation"].as_str().unwrap().contains("FromPort=8080"),
        "{f}"
    );
    // The refused connections are named as such, not as a block.
    let evidence = f["evidence"].to_string();
    assert!(
        evidence.contains("refused (something answered with a RST or an ICMP unreachable")
            && evidence.contains("80: 2"),
        "{f}"
    );
    assert!(!evidence.contains(&format!("{}:80 left", p.other.1)), "{f}");
    for id in [
        "probe-path-broken",
        "dns-path-broken",
        "branch-traffic-off-vlan",
    ] {
        assert_eq!(subjects(&doc, id), Vec::<String>::new(), "{id}");
    }
}

/// The node's own connections to a strict pod (kubelet-like probes to :80) whose security
/// group admits only the bastion: exact `syn_unanswered[80]` on that path and
/// `probe-path-broken` there only, while the same probes to an ordinary pod are answered
/// and handed in. With the rule restored: answered, handed in, no finding.
pub fn node_probes_to_a_branch_pod(lab: &mut Lab) {
    let p = pods(lab);
    let node = lab.layout.node();
    let bastion = lab.spec.vpc.bastion;
    let _a = listen(&p.strict.0, (Ipv4Addr::UNSPECIFIED, 80).into());
    let _b = listen(&p.ordinary.0, (Ipv4Addr::UNSPECIFIED, 80).into());
    let open = lab.spec.group_mut("sg-pod").unwrap().ingress.clone();
    lab.spec.group_mut("sg-pod").unwrap().ingress = vec![xtask::lab::spec::SgRule {
        proto: xtask::lab::spec::Proto::Tcp,
        ports: Some("80".into()),
        cidr: format!("{}/32", bastion.addr()).parse().unwrap(),
    }];
    lab.apply_security_groups().unwrap();

    let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
    assert_eq!(connects(&node, (p.strict.1, 80).into(), ANSWERED), 0);
    assert_eq!(
        connects(&node, (p.ordinary.1, 80).into(), ANSWERED),
        ANSWERED
    );
    std::thread::sleep(SETTLE);
    let doc = observer.stop();
    let a = &counters(&doc, p.strict.1)["to_pod"];
    assert_eq!(ports(&a["syn_unanswered"]), map(&[("80", 3)]), "{a}");
    assert_eq!(ports(&a["syn_answered"]), map(&[]), "{a}");
    assert_eq!(ports(&a["syn_in"]), map(&[]), "{a}");
    let b = &counters(&doc, p.ordinary.1)["to_pod"];
    assert_eq!(ports(&b["syn_answered"]), map(&[("80", 3)]), "{b}");
    assert_eq!(ports(&b["syn_in"]), map(&[("80", 3)]), "{b}");
    assert_eq!(ports(&b["syn_unanswered"]), map(&[]), "{b}");
    assert_eq!(
        subjects(&doc, "probe-path-broken"),
        [p.strict.1.to_string()]
    );
    assert_eq!(subjects(&doc, "sg-suspected-block"), Vec::<String>::new());

    lab.spec.group_mut("sg-pod").unwrap().ingress = open;
    lab.apply_security_groups().unwrap();
    let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
    assert_eq!(connects(&node, (p.strict.1, 80).into(), ANSWERED), ANSWERED);
    std::thread::sleep(SETTLE);
    let doc = observer.stop();
    let a = &counters(&doc, p.strict.1)["to_pod"];
    assert_eq!(ports(&a["syn_answered"]), map(&[("80", 3)]), "{a}");
    assert_eq!(ports(&a["syn_in"]), map(&[("80", 3)]), "{a}");
    assert_eq!(ports(&a["syn_unanswered"]), map(&[]), "{a}");
    assert_eq!(subjects(&doc, "probe-path-broken"), Vec::<String>::new());
}

const QUERIES: u16 = 4;

/// DNS from a strict pod and an ordinary pod to dnsmasq on a third pod: all answered; then
/// UDP 53 leaves the strict pod's security group and its next queries count exactly as
/// `dns_unanswered`, with `dns-path-broken` on that path only.
pub fn dns_from_a_branch_pod(lab: &mut Lab) {
    let p = pods(lab);
    let _dns = Dnsmasq::start(&p.other.0, p.other.1);
    let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
    for (ns, _) in [&p.strict, &p.ordinary] {
        assert_eq!(dns_queries(ns, p.other.1, QUERIES), QUERIES, "{ns}");
    }
    lab.spec
        .group_mut("sg-pod")
        .unwrap()
        .egress
        .retain(|r| r.ports.as_deref() != Some("53"));
    lab.apply_security_groups().unwrap();
    assert_eq!(dns_queries(&p.strict.0, p.other.1, QUERIES), 0);
    assert_eq!(dns_queries(&p.ordinary.0, p.other.1, QUERIES), QUERIES);
    std::thread::sleep(SETTLE);
    let doc = observer.stop();
    let a = &counters(&doc, p.strict.1)["from_pod"];
    assert_eq!(
        (a["dns_answered"].as_u64(), a["dns_unanswered"].as_u64()),
        (Some(4), Some(4)),
        "{a}"
    );
    let b = &counters(&doc, p.ordinary.1)["from_pod"];
    assert_eq!(
        (b["dns_answered"].as_u64(), b["dns_unanswered"].as_u64()),
        (Some(8), Some(0)),
        "{b}"
    );
    assert_eq!(subjects(&doc, "dns-path-broken"), [p.strict.1.to_string()]);
    assert_eq!(subjects(&doc, "sg-suspected-block"), Vec::<String>::new());
}

const OFF_VLAN: u64 = 6;

/// A strict pod whose `iif vlan<hash>` rule is gone: its datagrams leave by eth0, exactly
/// counted in `left_via`, and `branch-traffic-off-vlan` says so.
pub fn branch_traffic_off_vlan(lab: &mut Lab) {
    let p = pods(lab);
    let name = lab
        .spec
        .pods
        .iter()
        .find(|x| x.ip == p.strict.1)
        .unwrap()
        .name
        .clone();
    lab.inject(&Fault::DeleteVlanRule {
        pod: name,
        on: RuleOn::Veth,
    })
    .unwrap();
    let bastion: Ipv4Addr = lab.spec.vpc.bastion.addr();
    let sock = crate::observe::udp_in(&p.strict.0, (p.strict.1, 0).into());
    let observer = Observer::start(lab, &[]);
    crate::observe::send(&sock, (bastion, 9999).into(), OFF_VLAN, 32);
    crate::observe::settle(&[&p.strict.0, &lab.layout.node(), &lab.layout.vpc()]);
    let doc = observer.stop();
    let a = &counters(&doc, p.strict.1)["from_pod"];
    assert_eq!(ports(&a["left_via"]), map(&[("eth0", OFF_VLAN)]), "{a}");
    assert_eq!(
        subjects(&doc, "branch-traffic-off-vlan"),
        [p.strict.1.to_string()]
    );
    let f = findings(&doc, "branch-traffic-off-vlan")[0];
    assert_eq!(
        f["evidence"][0],
        format!("{OFF_VLAN} packet(s) from the pod left the node by eth0, not by vlan.eth.1")
    );
}

/// The seed's experiment on the default lab: with port 80 removed from the pod security
/// group, each ordinary pod's path counts exactly the bastion's one connection to it
/// (`syn_in[80]`) and the branch pods' none, and no finding blames anything; with 80 removed
/// from the node's group instead, the mirror image.
pub fn seed_experiment(lab: &mut Lab) {
    for (group, answering_kind_is_branch) in [("sg-pod", false), ("sg-node", true)] {
        let original = lab.spec.clone();
        lab.spec
            .group_mut(group)
            .unwrap()
            .ingress
            .retain(|r| r.ports.as_deref() != Some("80"));
        lab.apply_security_groups().unwrap();
        let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
        let seen = lab.get_from_bastion(Duration::from_secs(3));
        std::thread::sleep(SETTLE);
        let doc = observer.stop();
        for (pod, (name, answered)) in lab.spec.pods.iter().zip(seen) {
            assert_eq!(name, pod.name);
            let branch = pod.vlan.is_some();
            assert_eq!(
                answered,
                branch == answering_kind_is_branch,
                "{group} off: {name}"
            );
            let syn_in = ports(&counters(&doc, pod.ip)["to_pod"]["syn_in"]);
            let want = if answered {
                map(&[("80", 1)])
            } else {
                map(&[])
            };
            assert_eq!(syn_in, want, "{group} off: pod {} ({name})", pod.ip);
        }
        for id in [
            "sg-suspected-block",
            "probe-path-broken",
            "dns-path-broken",
            "branch-traffic-off-vlan",
        ] {
            assert_eq!(
                subjects(&doc, id),
                Vec::<String>::new(),
                "{group} off: {id}"
            );
        }
        lab.spec = original;
        lab.apply_security_groups().unwrap();
    }
}

/// The node's probes to a strict pod whose SYN-ACKs the VPC drops after they left by the
/// pod's VLAN (an nftables rule in the lab's VPC namespace; on a real node, a group or
/// `tcp_early_demux` losing them on the way back in): each SYN reaches the pod (`syn_in`)
/// and each SYN-ACK crosses its host veth, yet nothing counts as answered, because the node
/// never received one; `probe-path-broken` names the pod, with the `tcp_early_demux`
/// evidence while that sysctl is on.
pub fn node_probe_answers_lost_after_the_vlan(lab: &mut Lab) {
    let p = pods(lab);
    let node = lab.layout.node();
    let node_ip = lab.spec.node.primary_ip;
    let _a = listen(&p.strict.0, (Ipv4Addr::UNSPECIFIED, 80).into());
    lab.inject(&Fault::Sysctl {
        name: "net.ipv4.tcp_early_demux".into(),
        value: 1,
    })
    .unwrap();
    crate::observe::nft(
        &lab.layout.vpc(),
        &format!(
            "table inet sgt_synack {{\n chain answers {{\n type filter hook forward priority -10;\n \
             ip saddr {} ip daddr {node_ip} tcp sport 80 tcp flags & (syn | ack) == syn | ack drop\n }}\n}}\n",
            p.strict.1
        ),
    );
    let observer = Observer::start(lab, &["--syn-timeout", SYN_TIMEOUT]);
    assert_eq!(connects(&node, (p.strict.1, 80).into(), ANSWERED), 0);
    std::thread::sleep(SETTLE);
    let doc = observer.stop();
    let a = &counters(&doc, p.strict.1)["to_pod"];
    // The SYNs reached the pod and it answered them on its veth: not the node's answer.
    assert_eq!(ports(&a["syn_in"]), map(&[("80", ANSWERED as u64)]), "{a}");
    assert_eq!(ports(&a["syn_answered"]), map(&[]), "{a}");
    assert_eq!(ports(&a["syn_refused"]), map(&[]), "{a}");
    assert_eq!(
        ports(&a["syn_unanswered"]),
        map(&[("80", ANSWERED as u64)]),
        "{a}"
    );
    assert_eq!(
        subjects(&doc, "probe-path-broken"),
        [p.strict.1.to_string()]
    );
    let f = findings(&doc, "probe-path-broken")[0];
    let evidence = f["evidence"].to_string();
    assert!(
        evidence.contains(&format!(
            "{ANSWERED} TCP connection(s) from the node ({node_ip}) to {}:80 got no SYN-ACK",
            p.strict.1
        )),
        "{f:#}"
    );
    assert!(evidence.contains("net.ipv4.tcp_early_demux = 1"), "{f:#}");
}
