//! Integration tests on the host kernel (no 802.1Q here): network namespaces only.
//! Run as root by `cargo xtask test` (`cargo test -p sgpath-tests --test host`).

use sgpath_tests::{expected_paths, inspect, lab, path_keys, spec};

/// Two ordinary pods, a standard-mode branch pod whose VLAN link does not exist, and an
/// ordinary pod on secondary ENI eth2 (table 3).
#[test]
fn inspect_host_lab_gives_exactly_its_paths() {
    let spec = spec("host");
    let lab = lab(spec.clone(), "sgt-h");
    let (doc, code) = inspect(&lab);
    assert_eq!(doc["schema"], "sgpath.report/v1");
    assert_eq!(doc["mode"], "standard");
    // The branch pod's VLAN link does not exist (no 802.1Q here): that, and only that, is an error.
    let serious: Vec<(&str, &str)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| (f["id"].as_str().unwrap(), f["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(serious, [("vlan-parent-missing", "vlan.eth.5")]);
    assert_eq!(code, 1);
    assert_eq!(doc["trunks"].as_array().unwrap().len(), 0);
    let got = path_keys(&doc);
    assert_eq!(
        got,
        expected_paths(&spec),
        "paths differ:\n{}",
        serde_json::to_string_pretty(&doc["paths"]).unwrap()
    );
    // Spelled out once, without the expectation helper:
    let std = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == "192.168.41.23")
        .unwrap();
    assert_eq!(
        (
            std["kind"].as_str(),
            std["vlan_id"].as_u64(),
            std["route_table"].as_u64()
        ),
        (Some("branch-eni"), Some(5), Some(105))
    );
    assert!(std["vlan_link"].is_null() && std["trunk"].is_null());
    let sec = doc["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_ip"] == "192.168.60.6")
        .unwrap();
    assert_eq!(
        (sec["kind"].as_str(), sec["route_table"].as_u64()),
        (Some("node-eni"), Some(3))
    );
    assert_eq!(doc["sysctls"]["net.ipv4.ip_forward"], 1);
    assert_eq!(doc["sysctls"]["net.ipv4.conf.eth0.rp_filter"], 2);
}

/// The VPC delivers to ordinary pods through the node ENIs (eth0, and eth2 whose pod
/// answers through table 3) and their security group; a
/// branch pod whose VLAN does not exist is unreachable, as on a node whose branch ENI
/// never got attached.
#[test]
fn bastion_reaches_ordinary_pods_through_the_node_security_group() {
    let mut lab = lab(spec("host"), "sgt-h2");
    let answered = |lab: &xtask::lab::Lab| -> Vec<String> {
        lab.get_from_bastion(std::time::Duration::from_secs(2))
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(answered(&lab), ["ordinary-a", "ordinary-b", "secondary-d"]);
    // Remove every ingress rule of the node's group: nothing answers any more.
    lab.spec.group_mut("sg-node").unwrap().ingress.clear();
    lab.apply_security_groups().unwrap();
    assert_eq!(answered(&lab), Vec::<String>::new());
}

fn sgpath(ns: Option<&str>, args: &[&str]) -> std::process::Output {
    let bin = sgpath_tests::sgpath_bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    cmd.args(args).output().expect("run sgpath")
}

#[test]
fn bad_flags_exit_2_naming_the_problem() {
    let out = sgpath(None, &["inspect", "--output", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'yaml'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = sgpath(
        None,
        &["trace", "--from", "192.168.7.31", "--to", "nope:xx"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--to \"nope:xx\" is not <ip>"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Zero, too small and overflowing durations are refused by name (exit 2), never a panic.
#[test]
fn bad_durations_exit_2_naming_the_flag() {
    for args in [
        &["agent", "--summary-interval", "0s"][..],
        &["agent", "--syn-timeout", "0"],
        &["observe", "--syn-timeout", "0"],
        &["observe", "--duration", "18446744073709551615m"],
        &["agent", "--summary-interval", "307445734561825861m"],
    ] {
        let out = sgpath(None, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(args[1]) && err.contains("out of range"),
            "{args:?}: {err}"
        );
    }
}

/// `--from` an address that is no pod here traces a request to `--to`, which then must be
/// a pod here: when it is not, exit 2 naming the pods.
#[test]
fn trace_from_an_unknown_pod_exits_2_and_lists_the_pods() {
    let lab = lab(spec("host"), "sgt-h3");
    let out = lab.sgpath(
        &sgpath_tests::sgpath_bin(),
        &["trace", "--from", "192.168.99.99", "--to", "10.0.1.10"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--from 192.168.99.99 is no pod on this node, so --to must be one")
            && err.contains("pods here: ")
            && err.contains("192.168.7.31"),
        "{err}"
    );

    // A node without pods says so, instead of an empty list.
    let empty = sgpath_tests::NetNs::new("sgt-h3-empty");
    let out = sgpath(
        Some(&empty.0),
        &["trace", "--from", "192.168.99.99", "--to", "10.0.1.10"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this node has no pod paths"), "{err}");
}

/// A malformed CNI config is a warning naming the file; the rest of the report stands.
#[test]
fn malformed_cni_config_is_a_named_warning_not_a_failure() {
    let lab = lab(spec("host"), "sgt-h4");
    let bad = lab.dir.join("broken.conflist");
    std::fs::write(&bad, "{\"plugins\": [ {\"type\": \"aws-cni\", ").unwrap();
    let out = sgpath(
        Some(&lab.layout.node()),
        &[
            "inspect",
            "--output",
            "json",
            "--cni-config",
            bad.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.conflist is not valid JSON"), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["paths"].as_array().unwrap().len(), 4);
    assert!(doc["cni_config"].is_null());
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "node-read-incomplete");
    assert_eq!(
        f.map(|f| f["severity"].as_str()),
        Some(Some("info")),
        "{doc:#}"
    );
    // The info finding changes nothing: 1, for the missing VLAN link, as with a good config.
    assert_eq!(out.status.code(), Some(1));
}

/// Without CAP_NET_ADMIN the pod namespaces cannot be read: sgpath says so and still
/// reports every path it learned from the node's own routes.
#[test]
fn missing_capability_is_named_and_inspect_goes_on() {
    let lab = lab(spec("host"), "sgt-h5");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.layout.node(),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(sgpath_tests::sgpath_bin())
        .args(["inspect", "--output", "json", "--cni-config"])
        .arg(lab.cni_config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs CAP_NET_ADMIN"), "{err}");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(doc["paths"].as_array().unwrap().len(), 4);
}

fn built(spec_name: &str, prefix: &str) -> xtask::lab::Lab {
    xtask::lab::Lab::build(spec(spec_name), prefix)
        .unwrap_or_else(|e| panic!("lab {prefix} did not come up: {e:#}"))
}

/// Exact forwarded and dropped counts per path and direction, drops named by reason.
#[test]
fn observe_counts_exact_packets_per_path() {
    let lab = built("host", "sgt-o");
    sgpath_tests::observe::observe_counts_exact_packets(&lab, None, None);
}

/// The same the 5.10 way, on a kernel that has drop reasons and typed reads: drops named by
/// location, headers read with the helper (`--header-read probe`).
#[test]
fn observe_counts_exact_packets_by_location() {
    let lab = built("host", "sgt-ol");
    sgpath_tests::observe::observe_counts_exact_packets(&lab, Some("location"), Some("probe"));
}

// The priority-1 filter coexistence cases (`observe_behind_a_priority_1_filter_*`) run in
// the VM matrix only: this machine's kernel has no cls_matchall and no act_gact
// (CONFIG_NET_CLS_MATCHALL and CONFIG_NET_ACT_GACT are not set), so `tc ... matchall action
// ok|drop` cannot be built here.

/// A pod that appears while observe runs is counted from its first packets.
#[test]
fn observe_counts_a_pod_created_while_it_runs() {
    let lab = built("host", "sgt-lt");
    sgpath_tests::observe::observe_counts_a_pod_created_while_it_runs(&lab);
}

/// Two observers neither double-count nor disturb each other.
#[test]
fn two_observers_count_the_same_packets() {
    let lab = built("host", "sgt-2o");
    sgpath_tests::observe::two_observers_count_the_same_packets(&lab);
}

/// `--drop-source reason` works here (6.18 has reasons); refused by name on 5.10 (VM test).
#[test]
fn observe_drop_source_reason() {
    sgpath_tests::observe::drop_source_reason_is_refused_without_reasons();
}

/// `sgpath agent` in the host lab: exact counts in `/v1/report` and `/metrics`, 404, 405,
/// a pod created and removed while it runs (report, metrics, log lines), SIGTERM -> 0.
#[test]
fn agent_counts_serves_and_stops() {
    let lab = built("host", "sgt-ag");
    sgpath_tests::agent::agent_counts_serves_and_stops(&lab);
}

/// `--token-file` guards `/metrics` and `/v1/report`, never the health checks.
#[test]
fn agent_token_guards_all_but_health_checks() {
    sgpath_tests::agent::agent_token_guards_all_but_health_checks();
}

/// Without CAP_BPF: alive (`/healthz`), not ready (`/readyz` 503 with the reason), exit 0.
#[test]
fn agent_without_capabilities_is_alive_but_not_ready() {
    sgpath_tests::agent::agent_without_capabilities_is_alive_but_not_ready();
}

/// Slow loris, non-HTTP bytes, a body, a thousand scrapes at once: `/healthz` within 100 ms,
/// every hostile connection closed by the server, peak memory bounded.
#[test]
fn agent_survives_hostile_clients() {
    sgpath_tests::agent::agent_survives_hostile_clients();
}

/// A flood of made-up tokens (JWT-shaped and not) on the agent's HTTPS port against a real
/// API server: probes on `--probe-listen` all 200 within 1 s, non-JWTs 401 before any
/// review, reviews within their budget, the rest 503 with Retry-After.
#[test]
fn agent_probes_get_through_a_token_flood() {
    sgpath_tests::agent::agent_probes_get_through_a_token_flood();
}

/// Two agents at once (a rolling update), the old one SIGKILLed, a restart after a crash:
/// exact counts throughout, nothing of a dead agent left in the kernel.
#[test]
fn agent_crash_restart_and_overlap() {
    let lab = built("host", "sgt-agr");
    sgpath_tests::agent::agent_crash_restart_and_overlap(&lab);
}

/// 5,000 route and rule changes at once overflow the agent's netlink socket: it says so,
/// re-reads the node, and its report equals a fresh `inspect`.
#[test]
fn agent_resyncs_after_netlink_overflow() {
    let lab = built("host", "sgt-agn");
    sgpath_tests::agent::agent_resyncs_after_netlink_overflow(&lab);
}

/// 20 pods a second created and deleted for 60 s: the agent stays up, its descriptors and
/// memory flat, its report exactly the live pods within a second of the end.
#[test]
fn agent_under_pod_churn() {
    let lab = built("host", "sgt-agc");
    sgpath_tests::agent::agent_under_pod_churn(&lab);
}

/// More DNS queries awaiting an answer than the connection map holds: each is counted
/// unanswered or as a `ConnMapFull` error, `probe-map-full` is raised, and tracking
/// resumes once the map empties.
/// `--max-paths 2 --max-drop-keys 1` on four pods: what fits counts exactly, the rest is
/// named (finding, metric) and counted as errors, and a freed slot is taken at once.
#[test]
fn agent_with_small_maps_counts_what_fits() {
    let lab = built("host", "sgt-ags");
    sgpath_tests::agent::agent_with_small_maps_counts_what_fits(&lab);
}

#[test]
fn agent_under_map_pressure() {
    let lab = built("host", "sgt-agm");
    sgpath_tests::agent::agent_under_map_pressure(&lab);
}

/// `sgpath agent --auth kubernetes` against a real API server's TokenReview and
/// SubjectAccessReview, judged by deploy/'s RBAC as applied: 401, 403, 200, no report built
/// for a refused request.
#[test]
fn agent_kubernetes_auth_refuses_without_building_a_report() {
    let lab = built("host", "sgt-hka");
    sgpath_tests::fleet::agent_kubernetes_auth_refuses_without_building_a_report(&lab);
}

/// `--auth` modes that cannot work: exit 2 naming the flag.
#[test]
fn agent_auth_mode_errors_are_named() {
    sgpath_tests::fleet::agent_auth_mode_errors_are_named();
}

/// deploy/: the reviews' RBAC, the plugin's roles, the scraper's token.
#[test]
fn deploy_rbac_lets_only_the_named_subjects_ask() {
    sgpath_tests::fleet::deploy_rbac_lets_only_the_named_subjects_ask();
}

/// `kubectl sgpath` (and `kubectl` finding it on PATH) through the fake API server's pods
/// proxy: agents ready, down, slow and answering garbage, each shown as such.
#[test]
fn kubectl_sgpath_asks_the_fleet() {
    let lab = built("host", "sgt-hkf");
    sgpath_tests::fleet::kubectl_sgpath_asks_the_fleet(&lab);
}

/// The faults a real API server cannot be made to produce on demand, on the fake
/// (tests/src/kube.rs): `500` to every request, and a server that accepts and never answers.
#[test]
fn agent_survives_a_failing_and_a_hanging_api_server() {
    let lab = built("host", "sgt-k8");
    sgpath_tests::kube::agent_survives_a_failing_and_a_hanging_api_server(&lab);
}

/// `kubectl sgpath` (and `kubectl` finding it on PATH) through a real kube-apiserver's
/// pods proxy, deploy/base's RBAC and a real TokenRequest: an agent ready, a refused port,
/// a node without agent, a user without RBAC refused.
#[test]
fn kubectl_sgpath_through_a_real_api_server() {
    let lab = built("host", "sgt-hkr");
    sgpath_tests::fleet::kubectl_sgpath_through_a_real_api_server(&lab);
}

/// `sgpath agent --kubeconfig` against a real kube-apiserver (deploy/'s RBAC, the real
/// SecurityGroupPolicy CRD): paths named after pods, the malformed annotation and policy and
/// a policy's pod without branch ENI as findings, a deleted policy clearing its finding; the
/// API server killed, a pod deleted behind its back and etcd compacted, then back: `410`,
/// relist, no stale labels; a pod created afterwards named; every watch cut mid-stream
/// (`ss -K`), a pod deleted afterwards unnamed.
#[test]
fn agent_watches_a_real_api_server() {
    let lab = built("host", "sgt-kr");
    sgpath_tests::kube::agent_watches_a_real_api_server(&lab);
}

/// Exactly the DaemonSet's capabilities, then without CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN in
/// turn: each named once, degraded or partial, never dead.
#[test]
fn agent_names_each_missing_capability() {
    let lab = built("host", "sgt-agk");
    sgpath_tests::agent::agent_names_each_missing_capability(&lab);
}

/// No BTF: named once, degraded, topology and checks still served.
#[test]
fn agent_without_btf_runs_degraded() {
    let lab = built("host", "sgt-agb");
    sgpath_tests::agent::agent_without_btf_runs_degraded(&lab);
}

/// The security-group reader against moto's EC2 API on loopback, seeded from the default
/// lab's spec by the lab's fake AWS: bastion -> pod:80 admitted by the CIDR rule, an
/// ordinary pod -> pod:8443 by a rule referencing the node's group, bastion -> pod:8080
/// denied with the `aws ec2 authorize-security-group-ingress` that would admit it. Fails
/// (never skips) without moto: `cargo xtask setup` installs it.
#[test]
fn ec2_rules_from_moto_judge_the_default_lab() {
    sgpath_tests::ec2::moto_verdicts_on_the_default_lab();
}

/// Issue 31: `sgpath hub` reads the default lab's EC2 (moto, behind a counting proxy) for
/// the addresses agents ask about; the verdicts its catalog gives equal a direct read's,
/// none is confirmed before the hub read the address, and 1 or 25 agents asking cost EC2
/// the same calls (one batched DescribeNetworkInterfaces, one DescribeSecurityGroups, one
/// DescribeVpcs). Fails (never skips) without moto.
#[test]
fn hub_answers_agents_as_a_direct_read_does() {
    sgpath_tests::hub::hub_answers_agents_as_a_direct_read_does();
}

/// Issue 31: the hub's open modes (`--auth none`, `--no-tls`) only on loopback.
#[test]
fn hub_refuses_open_auth_off_loopback() {
    sgpath_tests::hub::hub_refuses_open_auth_off_loopback();
}

// deploy/ (tests/src/deploy.rs): the manifests, the alerts, the dashboard, the image.

/// Every YAML and JSON file under deploy/ parses; `kubectl kustomize` renders each part.
#[test]
fn deploy_manifests_parse_and_render() {
    sgpath_tests::deploy::deploy_manifests_parse_and_render();
}

/// `kubectl apply --server-side --validate=strict -k` of deploy/base and deploy/agent against
/// a real kube-apiserver with the upstream CRDs; an unknown field is refused.
#[test]
fn deploy_applies_to_a_real_api_server() {
    sgpath_tests::deploy::deploy_applies_to_a_real_api_server();
}

/// The rendered DaemonSet: no privileged, exactly the named capabilities over drop ALL,
/// read-only root and host mounts, downward API, probes, image.
#[test]
fn deploy_daemonset_holds_only_the_named_capabilities() {
    sgpath_tests::deploy::deploy_daemonset_holds_only_the_named_capabilities();
}

/// The ClusterRole and Role: get/list/watch of exactly what the agent watches.
#[test]
fn deploy_rbac_reads_exactly_what_the_agent_watches() {
    sgpath_tests::deploy::deploy_rbac_reads_exactly_what_the_agent_watches();
}

/// `promtool check rules` and `promtool test rules` on the PrometheusRule's groups.
#[test]
fn deploy_alert_rules_pass_promtool() {
    sgpath_tests::deploy::deploy_alert_rules_pass_promtool();
}

/// The dashboard's and the alerts' PromQL names only families a running agent exports.
#[test]
fn deploy_queries_name_only_exported_metrics() {
    let lab = built("host", "sgt-dq");
    sgpath_tests::deploy::deploy_queries_name_only_exported_metrics(&lab);
}

/// The agent with exactly the DaemonSet's capabilities is ready, counts, reads pod
/// namespaces and names drops; prints the resource figures (`SGPATH_MEASURE_SECS`).
#[test]
fn deploy_agent_runs_with_the_daemonset_capabilities() {
    let lab = built("host", "sgt-dc");
    sgpath_tests::deploy::deploy_agent_runs_with_the_daemonset_capabilities(&lab);
}

/// Without any one of BPF, PERFMON, NET_ADMIN, SYSLOG the agent loses what it is for.
#[test]
fn deploy_agent_needs_each_capability() {
    let lab = built("host", "sgt-dn");
    sgpath_tests::deploy::deploy_agent_needs_each_capability(&lab);
}

/// deploy/krew/sgpath.yaml: a krew Plugin whose bin is the plugin binary, linux/amd64 and
/// linux/arm64, each with its release tarball's uri and the sha256 placeholder `cargo xtask
/// image` fills in.
#[test]
fn deploy_krew_manifest_installs_the_plugin() {
    sgpath_tests::deploy::deploy_krew_manifest_installs_the_plugin();
}

/// `cargo xtask image`'s index holds linux/amd64 and linux/arm64, each config (entrypoint,
/// user, tag, architecture) matches the DaemonSet, each layer holds static sgpath and
/// kubectl-sgpath of its ELF machine, the plugin's release files of both check out, and the image's
/// own sgpath, given a private CA by SSL_CERT_FILE, reads EC2 and STS (moto) over HTTPS
/// and refuses the endpoint without it. Builds the release musl binaries of both
/// architectures (README's host stage figures include it).
#[test]
fn deploy_image_matches_the_daemonset() {
    sgpath_tests::deploy::deploy_image_matches_the_daemonset();
}

/// Trust: a spoofed source counts on the sender's veth only (`pod-source-spoofed`), the
/// finding clears one `--window` after the spoofing stops, and a stale veth holding a live
/// pod's IP is `pod-ip-conflict` (trace refuses to guess), and a port scan keeps tallies
/// and series bounded. One lab, in that order.
#[test]
fn trust_spoofing_windows_and_ip_conflicts() {
    let lab = built("host", "sgt-t");
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
