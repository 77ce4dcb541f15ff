//! The security-group reader against a real EC2 API implementation: the lab's fake AWS
//! (`xtask::lab::aws`: moto's EC2 server and an instance-metadata service on loopback),
//! seeded from the default lab's spec, read by `sgpath::collect::aws::Aws::read` and
//! judged by the catalog it returns.
//!
//! Side effects: starts `python3 -m moto.server` and a metadata listener on 127.0.0.1
//! (stopped on drop); nothing leaves loopback.

use std::net::{IpAddr, Ipv4Addr};

use sgpath::{
    collect::aws::{Aws, AwsConfig},
    model::sg::{Flow, Peer, Rules, Verdict},
};
use xtask::lab::{
    Spec,
    aws::{FakeAws, Source},
    spec::SgDirection,
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
        region: Some(xtask::lab::aws::REGION.into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pod = IpAddr::V4(POD);
    let rules = rt.block_on(async {
        let mut reader = Aws::new(config);
        reader.read(&[pod].into()).await
    });
    let rules = rules.unwrap_or_else(|e| panic!("reading moto: {e}"));
    let Rules::Fresh { catalog, vpc_cidrs } = rules else {
        panic!("not fresh: {rules:?}")
    };
    assert_eq!(
        vpc_cidrs,
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
}
