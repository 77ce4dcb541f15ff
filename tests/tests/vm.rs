//! Integration tests that need 802.1Q VLANs: run by `cargo xtask test` inside virtme-ng
//! VMs on Debian 5.10, 6.1 and 6.12 (Amazon Linux 2 and 2023), as root, with
//! `SGPATH_BIN` and `SGPATH_KERNEL` set. On a kernel without 802.1Q they fail loudly.

use sgpath_tests::{expected_paths, inspect, lab, path_keys, spec};

fn kernel() -> String {
    std::env::var("SGPATH_KERNEL").unwrap_or_else(|_| "host".into())
}

/// Trunk eth1 with VLANs 1, 7 and 120; two strict branch pods, one standard branch pod and
/// two ordinary pods, named and numbered as the VPC CNI does.
#[test]
fn inspect_mixed_node_gives_exactly_its_paths() {
    let spec = spec("mixed");
    let lab = lab(spec.clone(), "sgt-m");
    let (doc, code) = inspect(&lab);
    assert_eq!(doc["mode"], "strict", "on {}", kernel());
    assert_eq!(
        doc["kernel"].as_str().map(|k| k.starts_with(&kernel())),
        Some(true),
        "{}",
        doc["kernel"]
    );
    let trunks = doc["trunks"].as_array().unwrap();
    assert_eq!(trunks.len(), 1);
    assert_eq!(trunks[0]["name"], "eth1");
    assert_eq!(trunks[0]["vlans"], serde_json::json!([1, 7, 120]));
    assert_eq!(trunks[0]["mtu"], 9001);
    let got = path_keys(&doc);
    assert_eq!(
        got,
        expected_paths(&spec),
        "paths differ on {}:\n{}",
        kernel(),
        serde_json::to_string_pretty(&doc["paths"]).unwrap()
    );
    // Spelled out once without the expectation helper: strict pod on VLAN 7.
    let p = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == "192.168.26.147")
        .unwrap();
    assert_eq!(p["vlan_link"], "vlan.eth.7");
    assert_eq!(p["route_table"], 107);
    // `printf %s sg-test.strict-b | sha1sum | cut -c1-11`, computed outside this code base.
    assert_eq!(p["host_veth"], "vlanea96923728b");
    assert_eq!(p["rules"].as_array().unwrap().len(), 2);
    assert_eq!(
        code,
        0,
        "a healthy node exits 0: {}",
        serde_json::to_string_pretty(&doc["findings"]).unwrap()
    );
}

/// The seed scenario's three steps, each flow judged twice: by the packets (the VPC
/// namespace's nftables enforcing the spec's groups) and by sgpath (`trace --ec2`, the
/// groups' rules read from the lab's EC2, moto, seeded from the same spec and edited with
/// it). From the bastion, all 8 pods answer; without 80 in sg-pod only the 4 ordinary pods
/// do; with 80 back but gone from sg-node only the 4 branch pods do. For every HTTP GET,
/// DNS query and kubelet connect of every step, sgpath's verdict is what the packets did,
/// and each denial names the group and the missing rule.
#[test]
fn seed_scenario_verdicts_from_ec2_match_the_packets() {
    use xtask::lab::{Host, Seen};
    let mut lab = lab(spec("default"), "sgt-d");
    lab.start_aws()
        .unwrap_or_else(|e| panic!("the lab's EC2 (moto): {e:#}"));
    let names = |branch: bool| -> Vec<String> {
        let mut v: Vec<String> = lab
            .spec
            .pods
            .iter()
            .filter(|p| p.vlan.is_some() == branch)
            .map(|p| p.name.clone())
            .collect();
        v.sort();
        v
    };
    let (branch, ordinary) = (names(true), names(false));
    let mut all = [branch.clone(), ordinary.clone()].concat();
    all.sort();
    let expected_answering = [all, ordinary.clone(), branch.clone()];
    // The groups each step's denials must name (moto's id, then the lab's name).
    let expected_denier = [None, Some("sg-pod"), Some("sg-node")];
    let steps = lab.spec.steps.clone();
    assert_eq!(steps.len(), 3);
    let mut mismatches = Vec::new();
    let mut judged = 0;
    for (i, step) in steps.iter().enumerate() {
        let outcome = lab
            .run_step(step)
            .unwrap_or_else(|e| panic!("step {}: {e:#}", i + 1));
        let mut answering: Vec<String> = outcome
            .seen
            .iter()
            .filter_map(|s| match s {
                Seen::Http {
                    from: Host::Bastion,
                    answers,
                } => Some(answers),
                _ => None,
            })
            .flatten()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| n.clone())
            .collect();
        answering.sort();
        assert_eq!(
            answering,
            expected_answering[i],
            "step {} ({}) on {}: who answers the bastion",
            i + 1,
            step.title,
            kernel()
        );
        let addr = |h: &Host| -> String {
            match h {
                Host::Bastion => lab.spec.vpc.bastion.addr().to_string(),
                Host::Node => lab.spec.node.primary_ip.to_string(),
                Host::Pod(p) => lab.pod_ip(p).to_string(),
            }
        };
        let dns_ip = lab.spec.dns_pod().expect("the default lab has [dns]").1.ip;
        let mut flows: Vec<(String, String, &str, bool)> = Vec::new();
        for seen in &outcome.seen {
            match seen {
                Seen::Http { from, answers } => {
                    for (pod, ok) in answers {
                        flows.push((addr(from), format!("{}:80", lab.pod_ip(pod)), "tcp", *ok));
                    }
                }
                Seen::Dns { from, answer, .. } => {
                    flows.push((addr(from), format!("{dns_ip}:53"), "udp", answer.is_some()))
                }
                Seen::Connect {
                    from,
                    to,
                    connected,
                } => flows.push((addr(from), to.to_string(), "tcp", *connected)),
                Seen::Edit { .. } => {}
            }
        }
        let mut denials = Vec::new();
        for (from, to, proto, ok) in flows {
            let (doc, _) = trace(&lab, &from, &to, proto);
            let v = &doc["security_groups"]["verdict"];
            let verdict = v["verdict"].as_str().unwrap_or("?");
            assert!(
                matches!(verdict, "allowed" | "denied" | "none"),
                "step {}: {from} -> {to}/{proto} not judged on {}: {doc:#}",
                i + 1,
                kernel()
            );
            judged += 1;
            // `none` (no group judged it) agrees with the packets only for a flow that
            // stayed on the node, both ways: one that crossed the VPC was judged by groups
            // sgpath should have read.
            let stayed = doc["trace"]["security_groups"] == "none"
                && matches!(
                    doc["trace"]["receiver_security_groups"].as_str(),
                    None | Some("none")
                );
            if verdict == "none" && !stayed {
                mismatches.push(format!(
                    "step {}: {from} -> {to}/{proto}: no verdict for a flow that left the node: {doc:#}",
                    i + 1
                ));
            }
            if (verdict != "denied") != ok {
                mismatches.push(format!(
                    "step {}: {from} -> {to}/{proto}: the packets {}, sgpath says {verdict}: {v}",
                    i + 1,
                    if ok { "got through" } else { "did not" }
                ));
            }
            if verdict == "denied" {
                denials.push(v["summary"].as_str().unwrap_or("?").to_string());
            }
        }
        match expected_denier[i] {
            None => assert!(denials.is_empty(), "step {}: {denials:?}", i + 1),
            Some(g) => {
                let id = &lab.aws.as_ref().unwrap().group_ids[g];
                let want = format!("{id} ({g}) admits no tcp/80 from 10.0.1.10");
                assert_eq!(denials, vec![want; 4], "step {} on {}", i + 1, kernel());
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "sgpath's verdicts differ from the packets on {}:\n{}",
        kernel(),
        mismatches.join("\n")
    );
    // 3 steps x (8 GETs + 2 DNS queries + 1 connect).
    assert_eq!(judged, 33);
}

/// `sgpath agent --ec2` with the cluster and the lab's EC2: `sg-blocks-kubelet-probe` only
/// while sg-pod does not admit the node on the pod's probe port (tests/src/ec2.rs).
#[test]
fn agent_finds_a_probe_its_groups_block_and_clears_it() {
    let mut lab = lab(spec("default"), "sgt-kp");
    sgpath_tests::ec2::agent_finds_a_probe_its_groups_block_and_clears_it(&mut lab);
}

fn trace(lab: &xtask::lab::Lab, from: &str, to: &str, proto: &str) -> (serde_json::Value, i32) {
    let out = lab.sgpath(
        &sgpath_tests::sgpath_bin(),
        &[
            "trace", "--from", from, "--to", to, "--proto", proto, "--output", "json",
        ],
    );
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trace printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (doc, out.status.code().unwrap_or(-1))
}

/// NodeLocal DNSCache on the node: a strict branch pod's DNS to 169.254.20.10 leaves
/// through its VLAN by table N+100, an ordinary pod's stays on the node.
#[test]
fn trace_nodelocal_dns_strict_pod_leaves_through_its_vlan() {
    let mut s = spec("small");
    s.faults.push(xtask::lab::Fault::NodelocalDns {
        address: "169.254.20.10".parse().unwrap(),
    });
    let lab = xtask::lab::Lab::build(s, "sgt-tr").unwrap();
    let strict_veth = xtask::lab::names::host_veth(&lab.spec, lab.spec.pod("strict-a").unwrap());

    let (t, code) = trace(&lab, "192.168.3.219", "169.254.20.10:53", "udp");
    assert_eq!(t["forward"]["egress"], "vlan.eth.1", "{t:#}");
    assert_eq!(t["forward"]["egress_kind"], "branch-vlan");
    assert_eq!(t["forward"]["table"], 101);
    assert_eq!(t["forward"]["rule"]["priority"], 10);
    assert_eq!(
        t["forward"]["rule"]["selector"],
        format!("from all iif {strict_veth}")
    );
    assert_eq!(t["security_groups"], "branch-eni");
    assert!(
        t["verdict"].as_str().unwrap().contains("never reaches"),
        "{t:#}"
    );
    assert_eq!(
        t["reply"],
        serde_json::json!([]),
        "no answer to follow: {t:#}"
    );
    assert_eq!(code, 1);

    let (t, code) = trace(&lab, "192.168.7.31", "169.254.20.10:53", "udp");
    assert_eq!(t["forward"]["egress_kind"], "local", "{t:#}");
    assert_eq!(t["forward"]["table"], 255);
    assert_eq!(t["security_groups"], "none");
    assert_eq!(t["same_path"], true, "{t:#}");
    assert_eq!(code, 0);
}

/// A strict pod's traffic to the bastion leaves through its VLAN and the answer comes
/// back through it; deleting the `iif vlan.eth.1` rule breaks the way back.
#[test]
fn trace_strict_pod_to_bastion_round_trip_and_broken_return() {
    let mut lab = xtask::lab::Lab::build(spec("small"), "sgt-tr2").unwrap();
    let (t, code) = trace(&lab, "192.168.3.219", "10.0.1.10:443", "tcp");
    assert_eq!(
        (
            t["forward"]["egress"].as_str(),
            t["forward"]["table"].as_u64()
        ),
        (Some("vlan.eth.1"), Some(101)),
        "{t:#}"
    );
    assert_eq!(t["reply"][0]["ingress"], "vlan.eth.1");
    assert_eq!(t["same_path"], true, "{t:#}");
    assert_eq!(code, 0);

    lab.inject(&xtask::lab::Fault::DeleteVlanRule {
        pod: "strict-a".into(),
        on: xtask::lab::spec::RuleOn::Vlan,
    })
    .unwrap();
    let (t, code) = trace(&lab, "192.168.3.219", "10.0.1.10:443", "tcp");
    assert_eq!(t["same_path"], false, "{t:#}");
    assert_eq!(code, 1);
}

/// An ordinary pod leaves through the node ENI: the node's groups decide.
#[test]
fn trace_ordinary_pod_uses_the_node_eni() {
    let lab = xtask::lab::Lab::build(spec("small"), "sgt-tr3").unwrap();
    let (t, code) = trace(&lab, "192.168.7.31", "10.0.1.10:80", "tcp");
    assert_eq!(t["forward"]["egress"], "eth0", "{t:#}");
    assert_eq!(t["security_groups"], "node-eni");
    assert_eq!(t["same_path"], true);
    assert_eq!(code, 0);
}

/// Kubelet-style traffic between the node and a strict pod: the pod's packet to the node's
/// own address leaves through the VLAN (branch ENI outbound, node ENI inbound), and the
/// node's answer leaves eth0 and hairpins through the VPC back in through vlan.eth.1.
#[test]
fn trace_strict_pod_to_node_hairpins_through_the_vpc() {
    let lab = xtask::lab::Lab::build(spec("small"), "sgt-tr4").unwrap();
    let (t, code) = trace(&lab, "192.168.3.219", "192.168.1.10:10250", "tcp");
    assert_eq!(t["forward"]["egress"], "vlan.eth.1", "{t:#}");
    assert_eq!(
        (
            t["security_groups"].as_str(),
            t["receiver_security_groups"].as_str()
        ),
        (Some("branch-eni"), Some("node-eni"))
    );
    let reply = t["reply"].as_array().unwrap();
    assert_eq!(reply.len(), 2, "{t:#}");
    assert!(reply[0]["ingress"].is_null(), "the node itself answers");
    assert_eq!(reply[0]["egress"], "eth0");
    assert_eq!(reply[1]["ingress"], "vlan.eth.1");
    assert_eq!(t["same_path"], true);
    assert_eq!(code, 0);
}

/// The NodeLocal DNSCache workaround of VPC CNI #1662 on a strict pod: `local
/// 169.254.20.10` in its table 101 and a rule at 9 for the answers. The kernel delivers the
/// query on the node and the answer goes back to the pod's veth: `inspect` reports nothing
/// (it did, re-deriving from table 101) and `trace` says local.
#[test]
fn nodelocal_dns_workaround_no_finding_and_trace_says_local() {
    let mut s = spec("small");
    let address = "169.254.20.10".parse().unwrap();
    s.faults.push(xtask::lab::Fault::NodelocalDns { address });
    s.faults.push(xtask::lab::Fault::NodelocalDnsWorkaround {
        pod: "strict-a".into(),
        address,
    });
    let lab = xtask::lab::Lab::build(s, "sgt-tr5").unwrap();
    let strict_veth = xtask::lab::names::host_veth(&lab.spec, lab.spec.pod("strict-a").unwrap());

    let (doc, code) = inspect(&lab);
    let serious: Vec<&serde_json::Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(serious.is_empty(), "on {}: {serious:#?}", kernel());
    let l = doc["lookups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["pod_ip"] == "192.168.3.219" && l["address"] == "169.254.20.10")
        .expect("a lookup of 169.254.20.10 for the strict pod");
    assert_eq!(l["forward"]["egress_kind"], "local", "{l:#}");
    assert_eq!(l["forward"]["table"], 101);
    assert_eq!(l["reply"]["egress"], strict_veth.as_str(), "{l:#}");
    assert_eq!(code, 0);

    let (t, code) = trace(&lab, "192.168.3.219", "169.254.20.10:53", "udp");
    assert_eq!(
        t["forward"]["egress_kind"],
        "local",
        "on {}: {t:#}",
        kernel()
    );
    assert_eq!(t["forward"]["table"], 101);
    assert_eq!(
        t["forward"]["rule"]["selector"],
        format!("from all iif {strict_veth}")
    );
    assert_eq!(t["reply"][0]["rule"]["priority"], 9, "{t:#}");
    assert_eq!(t["reply"][0]["egress"], strict_veth.as_str());
    assert_eq!(t["security_groups"], "none");
    assert_eq!(
        t["decided_by"],
        "No security group: the flow stays on the node."
    );
    assert_eq!(
        t["verdict"],
        format!(
            "The packet reaches 169.254.20.10, and the answer comes back the same way to {strict_veth}."
        )
    );
    assert_eq!(code, 0);
}

/// A stale `iif vlan<hash>` rule (VPC CNI #1375) sends strict-a's traffic to strict-b's
/// table 107. With rp_filter off the packet leaves by strict-b's VLAN and the VPC drops it
/// by its source/destination check; with rp_filter on the kernel refuses it (EXDEV) and
/// trace names the stale rule and table 107 as the cause.
#[test]
fn trace_stale_vlan_rule_vpc_drop_then_reverse_path_refusal() {
    let mut s = spec("mixed");
    let veth = xtask::lab::names::host_veth(&s, s.pod("strict-a").unwrap());
    s.faults.push(xtask::lab::Fault::StaleVlanRule {
        iif: veth.clone(),
        table: 107,
    });
    let mut lab = xtask::lab::Lab::build(s, "sgt-tr6").unwrap();

    let (t, code) = trace(&lab, "192.168.3.219", "10.0.1.10:80", "tcp");
    assert_eq!(
        t["forward"]["egress"],
        "vlan.eth.7",
        "on {}: {t:#}",
        kernel()
    );
    assert_eq!(t["forward"]["table"], 107);
    assert_eq!(t["forward"]["vpc_drop"]["link"], "vlan.eth.7", "{t:#}");
    assert_eq!(
        t["forward"]["vpc_drop"]["owns"],
        serde_json::json!(["192.168.26.147"])
    );
    assert_eq!(
        t["verdict"],
        "The pod's packet goes no further: it leaves by the branch ENI on VLAN 7 (vlan.eth.7), whose only address is 192.168.26.147; its source 192.168.3.219 is not one of them, so the VPC's source/destination check drops it."
    );
    assert_eq!(
        t["reply"],
        serde_json::json!([]),
        "not followed past the VPC"
    );
    assert_eq!(code, 1);

    lab.inject(&xtask::lab::Fault::Sysctl {
        name: "net.ipv4.conf.all.rp_filter".into(),
        value: 1,
    })
    .unwrap();
    let (t, code) = trace(&lab, "192.168.3.219", "10.0.1.10:80", "tcp");
    let f = &t["forward"];
    assert_eq!(
        f["error"],
        "EXDEV (reverse path filter)",
        "on {}: {t:#}",
        kernel()
    );
    assert_eq!(f["rule"]["priority"], 10);
    assert_eq!(f["rule"]["selector"], format!("from all iif {veth}"));
    assert_eq!(f["rule"]["table"], 107);
    assert_eq!(f["table"], 107);
    assert_eq!(
        f["route"],
        "default via 192.168.0.1 dev vlan.eth.7 table 107"
    );
    assert_eq!(f["cause"], f["rule"], "{t:#}");
    let why = f["why"].as_str().unwrap();
    assert!(
        why.ends_with(&format!(
            "The cause is rule \"10: from all iif {veth} lookup 107\": it sends the pod's traffic to table 107, which does not route 192.168.3.219 back through {veth}."
        )),
        "{why}"
    );
    assert_eq!(code, 1);
}

fn built(spec_name: &str, prefix: &str) -> xtask::lab::Lab {
    xtask::lab::Lab::build(spec(spec_name), prefix)
        .unwrap_or_else(|e| panic!("lab {prefix} did not come up on {}: {e:#}", kernel()))
}

/// Exact forwarded and dropped counts per path and direction; drops named by reason where
/// the kernel has them (6.1, 6.12), by location on 5.10.
#[test]
fn observe_counts_exact_packets_per_path() {
    let lab = built("observe", "sgt-o");
    sgpath_tests::observe::observe_counts_exact_packets(&lab, None, None);
}

/// `--drop-source location --header-read probe`: the 5.10 way, on every kernel.
#[test]
fn observe_counts_exact_packets_by_location() {
    let lab = built("observe", "sgt-ol");
    sgpath_tests::observe::observe_counts_exact_packets(&lab, Some("location"), Some("probe"));
}

/// Drops inside the lab's VPC namespace stay as invisible as AWS's.
#[test]
fn observe_never_sees_the_vpcs_drops() {
    let lab = built("observe", "sgt-ov");
    sgpath_tests::observe::observe_never_sees_the_vpcs_drops(&lab);
}

/// The network policy agent's priority-1 filter passes everything: counts stay exact.
#[test]
fn observe_behind_a_priority_1_filter_that_passes() {
    let lab = built("observe", "sgt-pok");
    sgpath_tests::observe::observe_coexists_with_a_priority_1_filter(&lab, "ok");
}

/// The priority-1 filter drops everything: each packet is a drop in the right direction.
#[test]
fn observe_behind_a_priority_1_filter_that_drops() {
    let lab = built("observe", "sgt-pdr");
    sgpath_tests::observe::observe_coexists_with_a_priority_1_filter(&lab, "drop");
}

/// A stale rule makes a strict pod's own address local on the way back: each of its packets
/// is a martian source, freed without a reason on 6.1 and 6.12, and `path-drops` says so.
#[test]
fn observe_martian_drops_behind_a_stale_rule() {
    let lab = built("observe", "sgt-om");
    sgpath_tests::observe::a_martian_drop_raises_path_drops(&lab);
}

/// `--drop-source reason` is refused by name on 5.10 and honoured on 6.1 and 6.12.
#[test]
fn observe_drop_source_reason() {
    sgpath_tests::observe::drop_source_reason_is_refused_without_reasons();
}

/// A strict pod's blocked connections out: exact unanswered counts (retransmits once) and
/// `sg-suspected-block`; an ordinary pod's the same counts and no finding.
#[test]
fn conns_pod_connections_out() {
    let lab = built("observe", "sgt-co");
    sgpath_tests::conns::pod_connections_out(&lab);
}

/// The node's probes to a strict pod its group does not admit: `probe-path-broken`.
#[test]
fn conns_node_probes_to_a_branch_pod() {
    let mut lab = built("observe", "sgt-cp");
    sgpath_tests::conns::node_probes_to_a_branch_pod(&mut lab);
}

/// The node's probes to a strict pod whose SYN-ACKs the VPC drops after they leave by the
/// VLAN: unanswered although they crossed the pod's veth, `probe-path-broken` with the
/// `tcp_early_demux` evidence.
#[test]
fn conns_node_probe_answers_lost_after_the_vlan() {
    let mut lab = built("observe", "sgt-cpa");
    sgpath_tests::conns::node_probe_answers_lost_after_the_vlan(&mut lab);
}

/// DNS to dnsmasq on an ordinary pod, blocked for the strict pod: `dns-path-broken`.
#[test]
fn conns_dns_from_a_branch_pod() {
    let mut lab = built("observe", "sgt-cd");
    sgpath_tests::conns::dns_from_a_branch_pod(&mut lab);
}

/// A deleted `iif vlan<hash>` rule sends the strict pod out of eth0: `left_via`, finding.
#[test]
fn conns_branch_traffic_off_vlan() {
    let mut lab = built("observe", "sgt-cv");
    sgpath_tests::conns::branch_traffic_off_vlan(&mut lab);
}

/// The seed's experiment: who the bastion reaches, as `syn_in` per path.
#[test]
fn conns_seed_experiment() {
    let mut lab = xtask::lab::Lab::up(spec("default"), "sgt-cs")
        .unwrap_or_else(|e| panic!("lab did not come up on {}: {e:#}", kernel()));
    sgpath_tests::conns::seed_experiment(&mut lab);
}

/// SIGKILL and restart, and two agents at once, on this kernel: exact counts in each, the
/// killed agent's programs and links freed, and the node's links, qdiscs, filters (another
/// program's priority-1 filters included) and pins as before.
#[test]
fn agent_crash_restart_and_overlap() {
    let lab = built("observe", "sgt-acr");
    sgpath_tests::agent::agent_crash_restart_and_overlap(&lab);
}

/// `sgpath agent` on a node with a branch pod, scraped by a real Prometheus: exact counts
/// stored, a pod's series appearing and going stale, a finding raised and cleared, and
/// nothing left in the kernel after SIGTERM.
#[test]
fn agent_scraped_by_prometheus() {
    let lab = built("observe", "sgt-ap");
    sgpath_tests::agent::agent_scraped_by_prometheus(&lab);
}

/// Trust on this kernel: a spoofed source counts on the sender's veth only, the finding
/// clears one `--window` later, a stale veth holding a live pod's IP is `pod-ip-conflict`,
/// a port scan keeps tallies and series bounded.
#[test]
fn trust_spoofing_windows_and_ip_conflicts() {
    let lab = built("observe", "sgt-t");
    sgpath_tests::trust::spoofed_source_counts_on_the_sender_only(&lab);
    sgpath_tests::trust::finding_clears_one_window_after_its_cause(&lab);
    sgpath_tests::trust::stale_veth_is_a_pod_ip_conflict(&lab);
    sgpath_tests::trust::port_scan_stays_bounded(&lab);
}

/// Every drop reason of this kernel has a class (path or endpoint).
#[test]
fn drop_reasons_are_all_classified() {
    sgpath_tests::trust::drop_reasons_are_all_classified();
}

/// The healthy default lab under thousands of short HTTP connections and refused connects:
/// no warning, no error, the node's connections counted exactly.
#[test]
fn healthy_lab_under_http_load_raises_nothing() {
    let lab = built("default", "sgt-hl");
    sgpath_tests::trust::healthy_lab_under_http_load_raises_nothing(&lab);
}

/// `/readyz`, `/v1/report` and `/metrics` of an agent on a VLAN node: exact counts of an
/// ordinary pod's datagrams (the arm64 stage's agent test; no Prometheus needed).
#[test]
fn agent_serves_metrics_and_readyz() {
    let lab = built("observe", "sgt-am");
    sgpath_tests::agent::agent_serves_metrics_and_readyz(&lab);
}
