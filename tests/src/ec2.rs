//! The security-group reader against a real EC2 API implementation: the lab's fake AWS
//! (`xtask::lab::aws`: moto's EC2 server and an instance-metadata service on loopback),
//! seeded from the default lab's spec, read by `sgpath::collect::aws::Aws::read` and
//! judged by the catalog it returns.
//!
//! [`agent_finds_a_probe_its_groups_block_and_clears_it`] runs the whole agent on the default
//! lab with the fake API server and the lab's EC2.
//!
//! Side effects: starts `python3 -m moto.server` and a metadata listener on 127.0.0.1
//! (stopped on drop); the agent test, the lab's own (in its node namespace), a fake API
//! server there and `sgpath agent`; nothing leaves loopback.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use serde_json::json;

use sgpath::{
    collect::aws::{Aws, AwsConfig},
    model::sg::{Flow, Peer, Rules, Verdict},
};
use xtask::lab::{
    Action, Lab, Spec, Step,
    aws::{FakeAws, Source},
    spec::{Proto, SgDirection, SgRule},
};

use crate::{
    agent::Agent,
    kube::{self, FakeApi, Kind, count_events, findings, pod, wait_report},
};

/// The default lab's addresses (xtask/labs/default.toml).
const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 3, 219);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const BASTION: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

/// moto seeded with the default lab, plus one rule referencing the node's group (tcp/8443
/// from members of sg-node, which the lab's nftables cannot enforce); the reader, pointed
/// at it and at the fake IMDS, reads the node's group from IMDS, the pod's ENI and group
/// from `DescribeNetworkInterfaces` and both groups' rules from `DescribeSecurityGroups`.
/// The catalog admits the bastion on pod:80 (a CIDR rule), the node on pod:8080 (its /32)
/// and on pod:8443 (the group reference), denies the bastion on pod:8080 and names the
/// rule to add, with the group's name.
pub fn moto_verdicts_on_the_default_lab() {
    // The credential chain's links that would leave loopback (STS, a Pod Identity agent)
    // come after the environment's keys; with neither, the fake IMDS's role answers.
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !(env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY")) {
        for k in [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            assert!(
                !env(k),
                "{k} is set: the reader would fetch credentials through it, off loopback; \
                 unset it or set AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
            );
        }
    }
    let mut aws = FakeAws::start(&Spec::default_lab(), None)
        .unwrap_or_else(|e| panic!("the lab's EC2 (cargo xtask setup installs moto): {e:#}"));
    aws.authorize(
        "sg-pod",
        SgDirection::Ingress,
        (8443, 8443),
        Source::Group("sg-node"),
    )
    .expect("a rule referencing sg-node");
    let (node_sg, pod_sg) = (
        aws.group_ids["sg-node"].clone(),
        aws.group_ids["sg-pod"].clone(),
    );
    let config = AwsConfig {
        ec2_endpoint: Some(aws.ec2.clone()),
        imds_endpoint: aws.imds.clone(),
        region: Some(aws.region.into()),
        limits: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pod = IpAddr::V4(POD);
    let rules = rt.block_on(async {
        let mut reader = Aws::new(config.clone());
        reader.read(&[pod].into()).await
    });
    let rules = rules.unwrap_or_else(|e| panic!("reading moto: {e}"));
    let Rules::Fresh { catalog } = rules else {
        panic!("not fresh: {rules:?}")
    };
    assert_eq!(
        catalog.vpc_cidrs,
        ["192.168.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
    let (node, bastion) = (IpAddr::V4(NODE), IpAddr::V4(BASTION));
    assert_eq!(
        catalog.groups_of(pod),
        Some(&[pod_sg.clone()][..]),
        "{catalog:#?}"
    );
    assert_eq!(
        catalog.groups_of(node),
        Some(&[node_sg.clone()][..]),
        "{catalog:#?}"
    );

    // tcp/80 from anywhere: the CIDR rule.
    let v = catalog.judge(&Flow::tcp(bastion, pod, 80));
    let Verdict::Allowed {
        ingress: Some(a), ..
    } = &v
    else {
        panic!("bastion -> pod:80 is not admitted: {v:?}\n{catalog:#?}")
    };
    assert_eq!(a.group, pod_sg);
    assert_eq!(
        a.rule.peer,
        Peer::Cidr {
            cidr: "0.0.0.0/0".parse().unwrap()
        }
    );

    // The node itself: the /32 rule for kubelet probes; the node's egress allow-all.
    let v = catalog.judge(&Flow::tcp(node, pod, 8080));
    let Verdict::Allowed {
        egress: Some(e),
        ingress: Some(a),
    } = &v
    else {
        panic!("node -> pod:8080 is not admitted on both sides: {v:?}\n{catalog:#?}")
    };
    assert_eq!(e.group, node_sg);
    assert_eq!(a.group, pod_sg);
    assert_eq!(
        a.rule.peer,
        Peer::Cidr {
            cidr: "192.168.1.10/32".parse().unwrap()
        }
    );

    // An ordinary pod, an address of the node's ENI (instance metadata), so a member of
    // sg-node: tcp/8443 by the group reference, and tcp/9000 by nothing.
    let ordinary = IpAddr::V4(Ipv4Addr::new(192, 168, 7, 31));
    let v = catalog.judge(&Flow::tcp(ordinary, pod, 8443));
    let Verdict::Allowed {
        ingress: Some(a), ..
    } = &v
    else {
        panic!("ordinary pod -> pod:8443 is not admitted: {v:?}\n{catalog:#?}")
    };
    assert_eq!(
        a.rule.peer,
        Peer::Group {
            id: node_sg.clone()
        }
    );
    let v = catalog.judge(&Flow::tcp(ordinary, pod, 9000));
    let Verdict::Denied(m) = &v else {
        panic!("ordinary pod -> pod:9000 is admitted: {v:?}\n{catalog:#?}")
    };
    assert_eq!(
        m.summary(),
        format!("{pod_sg} (sg-pod) admits no tcp/9000 from members of {node_sg}")
    );

    // tcp/8080 from the bastion: no rule; the fix names the pod's group and the port.
    let v = catalog.judge(&Flow::tcp(bastion, pod, 8080));
    let Verdict::Denied(m) = &v else {
        panic!("bastion -> pod:8080 is admitted: {v:?}\n{catalog:#?}")
    };
    assert_eq!(
        m.summary(),
        format!("{pod_sg} (sg-pod) admits no tcp/8080 from 10.0.1.10")
    );
    assert_eq!(
        m.remediation(),
        format!(
            "aws ec2 authorize-security-group-ingress --group-id {pod_sg} --protocol tcp \
             --port 8080 --cidr 10.0.1.10/32"
        )
    );
    assert!(m.is_confirmed(), "the bastion is outside the VPC: {m:?}");

    database_in_another_group(&mut aws, &rt, &config);
}

/// Issue 29: a branch pod's database in the same VPC, in its own group `sg-db` that admits
/// members of sg-pod on tcp/5432. The reader looks the database's address up and the group
/// rule admits the flow; an address of the VPC that no ENI owns is never a confirmed
/// denial; with sg-db's rule revoked the denial is confirmed and names sg-pod as the
/// source group.
fn database_in_another_group(aws: &mut FakeAws, rt: &tokio::runtime::Runtime, config: &AwsConfig) {
    const DB: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 5);
    const NOBODY: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 99);
    let db_sg = aws
        .create_group("sg-db")
        .expect("CreateSecurityGroup sg-db");
    aws.create_eni(DB, &["sg-db"]).expect("the database's ENI");
    let to_db = (SgDirection::Ingress, (5432, 5432), "sg-pod");
    aws.authorize("sg-db", to_db.0, to_db.1, Source::Group(to_db.2))
        .expect("sg-db admits members of sg-pod");
    let pod_sg = aws.group_ids["sg-pod"].clone();
    let read = || {
        let rules = rt.block_on(async {
            Aws::new(config.clone())
                .read(&[IpAddr::V4(POD), IpAddr::V4(DB), IpAddr::V4(NOBODY)].into())
                .await
        });
        match rules.unwrap_or_else(|e| panic!("reading moto: {e}")) {
            Rules::Fresh { catalog } => catalog,
            r => panic!("not fresh: {r:?}"),
        }
    };
    let catalog = read();
    assert_eq!(
        catalog.groups_of(IpAddr::V4(DB)),
        Some(&[db_sg.clone()][..])
    );
    let flow = Flow::tcp(IpAddr::V4(POD), IpAddr::V4(DB), 5432);
    let v = catalog.judge(&flow);
    let Verdict::Allowed {
        egress: Some(e),
        ingress: Some(i),
    } = &v
    else {
        panic!("pod -> database:5432 is not admitted on both sides: {v:?}\n{catalog:#?}")
    };
    assert_eq!(e.group, pod_sg, "sg-pod's egress lets it out");
    assert_eq!(i.rule.peer, Peer::Group { id: pod_sg.clone() });
    // From inside the VPC, an address looked up that no ENI owns, to the pod's tcp/8443,
    // which only members of sg-node may open: unverified, never confirmed.
    let v = catalog.judge(&Flow::tcp(IpAddr::V4(NOBODY), IpAddr::V4(POD), 8443));
    let Verdict::Denied(m) = &v else {
        panic!("{NOBODY} -> pod:8443 is admitted: {v:?}")
    };
    assert!(!m.is_confirmed(), "{m:?}");
    assert!(m.summary().contains("EC2 names no ENI"), "{}", m.summary());
    // sg-db no longer admits sg-pod: confirmed, with the group as the source.
    aws.revoke("sg-db", to_db.0, to_db.1, Source::Group(to_db.2))
        .expect("revoke sg-db's rule");
    let v = read().judge(&flow);
    let Verdict::Denied(m) = &v else {
        panic!("pod -> database:5432 is still admitted: {v:?}")
    };
    assert!(m.is_confirmed(), "{m:?}");
    assert_eq!(
        m.remediation(),
        format!(
            "aws ec2 authorize-security-group-ingress --group-id {db_sg} --protocol tcp \
             --port 5432 --source-group {pod_sg}"
        )
    );
}

/// The default lab's first branch pod, as the API server has it: strict mode (aws-node's
/// env), the CNI's `pod-eni` annotation, and a container whose liveness probe kubelet opens
/// on tcp/8080 and readiness probe on tcp/80.
fn put_probed_branch_pod(api: &FakeApi, lab: &Lab) -> (String, String) {
    let p = &lab.spec.pods[0];
    assert_eq!(
        p.vlan,
        Some(1),
        "the default lab's first pod is the branch pod on VLAN 1"
    );
    let ip = p.ip.to_string();
    let mut obj = pod(
        &p.namespace,
        &p.name,
        kube::NODE,
        &ip,
        json!({"app": "sg-test-app"}),
        json!({"vpc.amazonaws.com/pod-eni": format!(
            "[{{\"eniId\":\"eni-0b1\",\"ifAddress\":\"02:00:00:00:00:01\",\"privateIp\":\"{ip}\",\"vlanId\":1,\"subnetCidr\":\"192.168.0.0/16\"}}]"
        )}),
    );
    obj["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": 8080}});
    obj["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 80}});
    api.put(Kind::Pod, obj);
    api.put(
        Kind::Node,
        json!({"metadata": {"name": kube::NODE, "labels": {"vpc.amazonaws.com/has-trunk-attached": "true"}}}),
    );
    api.put(Kind::DaemonSet, json!({"metadata": {"name": "aws-node", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"k8s-app": "aws-node"}}, "template": {"spec": {
            "containers": [{"name": "aws-node", "image": "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.2-eksbuild.1",
                "env": [{"name": "ENABLE_POD_ENI", "value": "true"},
                        {"name": "POD_SECURITY_GROUP_ENFORCING_MODE", "value": "strict"}]}]}}}}));
    api.put(
        Kind::ServiceAccount,
        json!({"metadata": {"name": "default", "namespace": p.namespace}}),
    );
    (ip, format!("{}/{}", p.namespace, p.name))
}

/// `sgpath agent --ec2` on the default lab, with a fake API server holding its strict branch
/// pod whose liveness probe is tcp/8080, and the lab's EC2: healthy while sg-pod admits
/// everything from the node (its `/32` rule), after two reads of the rules; removing that
/// rule (from EC2 and the VPC's nftables, one step) raises `sg-blocks-kubelet-probe` on the
/// pod, naming tcp/8080 and the command that adds it to sg-pod's id, before any probe ran;
/// putting it back clears it.
pub fn agent_finds_a_probe_its_groups_block_and_clears_it(lab: &mut Lab) {
    lab.start_aws()
        .unwrap_or_else(|e| panic!("the lab's EC2 (moto): {e:#}"));
    let node = lab.layout.node();
    let api = FakeApi::start(&node);
    let (ip, key) = put_probed_branch_pod(&api, lab);
    let dir = std::env::temp_dir().join(format!("sgpath-ec2-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let aws = lab.aws.as_ref().unwrap();
    let pod_sg = aws.group_ids["sg-pod"].clone();
    let cni = lab.cni_config();
    let mut args = vec![
        "--cni-config".to_string(),
        cni.to_string_lossy().into_owned(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--node-name".into(),
        kube::NODE.into(),
        "--ec2-refresh".into(),
        "10s".into(),
        "--summary-interval".into(),
        "1s".into(),
    ];
    args.extend(aws.sgpath_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&node, &args);
    let probe_finding = |doc: &serde_json::Value| {
        findings(doc)
            .iter()
            .any(|(id, subject)| id == "sg-blocks-kubelet-probe" && *subject == ip)
    };

    // Healthy: the pod named, two reads of the rules (the second after the cluster came).
    wait_report(&agent, Duration::from_secs(60), "the pod named", |doc| {
        doc["paths"].as_array().unwrap().iter().any(|p| {
            p["pod_ip"] == ip.as_str()
                && format!(
                    "{}/{}",
                    p["pod"]["namespace"].as_str().unwrap_or(""),
                    p["pod"]["name"].as_str().unwrap_or("")
                ) == key
        })
    });
    let reads = count_events(&agent, "ec2-read");
    wait_report(
        &agent,
        Duration::from_secs(30),
        "one more read of the rules",
        |_| count_events(&agent, "ec2-read") > reads,
    );
    let doc = agent.report(&[]);
    let got = findings(&doc);
    assert!(
        !got.iter()
            .any(|(id, _)| id.starts_with("sg-blocks") || id == "ec2-unavailable"),
        "a healthy node with rules raised {got:?}\n{}",
        agent.log_text()
    );

    // The node's rule gone from sg-pod: the probe's port is blocked, before kubelet tries.
    let node_rule = SgRule {
        proto: Proto::All,
        ports: None,
        cidr: "192.168.1.10/32".parse().unwrap(),
    };
    let edit = |action: Action| Step {
        title: "sg-pod: the node's rule".into(),
        actions: vec![action],
    };
    lab.run_step(&edit(Action::RemoveRule {
        group: "sg-pod".into(),
        direction: SgDirection::Ingress,
        rule: node_rule.clone(),
    }))
    .unwrap();
    let doc = wait_report(
        &agent,
        Duration::from_secs(40),
        "sg-blocks-kubelet-probe after the node's rule went",
        probe_finding,
    );
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "sg-blocks-kubelet-probe")
        .unwrap()
        .to_string();
    assert!(f.contains("tcp/8080") && f.contains(&key), "{f}");
    assert!(
        f.contains(&format!(
            "aws ec2 authorize-security-group-ingress --group-id {pod_sg}"
        )) && f.contains("--port 8080"),
        "{f}"
    );
    assert!(
        !f.contains("tcp/80 "),
        "the readiness probe's port is admitted from anywhere: {f}"
    );

    // Back: the finding clears.
    lab.run_step(&edit(Action::AddRule {
        group: "sg-pod".into(),
        direction: SgDirection::Ingress,
        rule: node_rule,
    }))
    .unwrap();
    wait_report(
        &agent,
        Duration::from_secs(40),
        "sg-blocks-kubelet-probe cleared after the rule came back",
        |doc| !probe_finding(doc),
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
