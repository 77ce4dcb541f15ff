//! `sgpath hub` against the lab's EC2 (moto, seeded from the default lab by
//! `xtask::lab::aws::FakeAws`), behind a counting proxy: agents' clients
//! (`sgpath::hub::Client`, what `sgpath agent --hub` uses) ask it for addresses, the
//! verdicts they judge equal those of a direct read, and the EC2 calls the hub makes do
//! not grow with the number of agents asking.
//!
//! Side effects: starts `python3 -m moto.server`, a metadata listener, a counting proxy
//! and the hub on 127.0.0.1 (all stopped on drop); nothing leaves loopback.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use sgpath::{
    collect::aws::{Aws, AwsConfig},
    hub::{self, Client, Hub},
    model::sg::{Catalog, Flow, Locus, Rules},
};
use xtask::lab::{
    Spec,
    aws::{FakeAws, Source},
    spec::SgDirection,
};

const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 3, 219);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const ORDINARY: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 31);
const BASTION: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

/// EC2 calls seen by the proxy, by `Action`.
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// A proxy in front of moto that counts each EC2 Query call by its `Action` (moto keeps
/// no count): what EC2 would charge the account.
async fn counting_proxy(target: SocketAddr) -> (String, Counts) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let counts: Counts = Arc::default();
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let counts = c.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let counts = counts.clone();
                    async move { Ok::<_, Infallible>(forward(req, target, &counts).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    (url, counts)
}

async fn forward(
    req: Request<Incoming>,
    target: SocketAddr,
    counts: &Counts,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.expect("the request body").to_bytes();
    let action = String::from_utf8_lossy(&body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action=").map(str::to_owned))
        .unwrap_or_default();
    *counts.lock().unwrap().entry(action).or_default() += 1;
    let stream = tokio::net::TcpStream::connect(target).await.expect("moto");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("moto's HTTP");
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .expect("moto answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("moto's body").to_bytes();
    Response::from_parts(parts, Full::new(body))
}

/// A hub on loopback reading EC2 through `ec2`; region from the configuration (no
/// instance metadata asked for it or for ENIs; the fake's metadata only lends the role's
/// credentials, the last link of the chain).
async fn start_hub(
    ec2: &str,
    imds: &str,
    region: &str,
) -> (Arc<Hub>, String, Vec<tokio::task::JoinHandle<()>>) {
    let config = hub::Config {
        aws: AwsConfig {
            ec2_endpoint: Some(ec2.to_owned()),
            imds_endpoint: imds.to_owned(),
            region: Some(region.to_owned()),
            limits: Default::default(),
        },
        address_ttl: Duration::from_secs(300),
        group_refresh: Duration::from_secs(600),
    };
    let hub = Hub::new(&config);
    // HTTPS with a self-signed certificate, as `sgpath hub` serves by default.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let url = format!("https://{addr}");
    let tls = sgpath::tls::Transport::new(&sgpath::tls::Source::SelfSigned, addr).unwrap();
    let tasks = vec![
        tokio::spawn(hub::server::serve(l, tls, hub.clone())),
        tokio::spawn(hub.clone().read_forever(config.group_refresh)),
    ];
    (hub, url, tasks)
}

/// Asks until every address is answered (the hub queued the rest for its next read).
async fn ask_until_answered(client: &Client, asked: &BTreeSet<IpAddr>) -> Catalog {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.catalog(asked).await {
            Ok(Rules::Fresh { catalog })
                if asked
                    .iter()
                    .all(|a| !matches!(catalog.locate(*a), Locus::Unknown)) =>
            {
                return catalog;
            }
            Ok(Rules::Unavailable { reason }) => panic!("the hub cannot read moto: {reason}"),
            Ok(Rules::Fresh { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub did not answer {asked:?} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The hub reads the default lab's EC2 for the addresses agents ask about; the verdicts
/// judged from its catalog equal a direct read's (instance metadata and EC2, as
/// `trace --ec2` reads), and before it has read an address the verdicts about it are never
/// confirmed. 1 agent and 25 agents asking (each 10 times) cost EC2 the same calls, per
/// action, counted by a proxy in front of moto and equal to the hub's own count.
pub fn hub_answers_agents_as_a_direct_read_does() {
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !(env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY")) {
        for k in [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            assert!(
                !env(k),
                "{k} is set: the hub would fetch credentials off loopback"
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
    let moto: SocketAddr = aws
        .ec2
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let [pod, node, ordinary, bastion] = [POD, NODE, ORDINARY, BASTION].map(IpAddr::V4);
    let asked: BTreeSet<IpAddr> = [pod, node, ordinary, bastion].into();
    let flows = [
        Flow::tcp(bastion, pod, 80),
        Flow::tcp(bastion, pod, 8080),
        Flow::tcp(node, pod, 8080),
        Flow::tcp(ordinary, pod, 8443),
        Flow::tcp(ordinary, pod, 9000),
        Flow::tcp(pod, node, 10250),
        Flow::udp(pod, ordinary, 53),
    ];
    rt.block_on(async {
        let direct = {
            let config = AwsConfig {
                ec2_endpoint: Some(aws.ec2.clone()),
                imds_endpoint: aws.imds.clone(),
                region: Some(aws.region.into()),
                limits: Default::default(),
            };
            match Aws::new(config).read(&asked).await {
                Ok(Rules::Fresh { catalog }) => catalog,
                other => panic!("the direct read: {other:?}"),
            }
        };
        let mut costs = Vec::new();
        for agents in [1usize, 25] {
            let (proxy, counts) = counting_proxy(moto).await;
            let (hub, url, tasks) = start_hub(&proxy, &aws.imds, aws.region).await;
            // Before any read: unknown, and no denial confirmed.
            let first = Client::new(&url).catalog(&asked).await.expect("the hub answers");
            let Rules::Fresh { catalog } = first else {
                panic!("{first:?}")
            };
            for f in &flows {
                if let sgpath::model::sg::Verdict::Denied(m) = catalog.judge(f) {
                    assert!(!m.is_confirmed(), "confirmed before the hub read anything: {f:?} {m:?}");
                }
            }
            let mut answered = Vec::new();
            let mut joins = Vec::new();
            for _ in 0..agents {
                let (client, asked) = (Client::new(&url), asked.clone());
                joins.push(tokio::spawn(async move {
                    let c = ask_until_answered(&client, &asked).await;
                    // Agents keep asking (every refresh, every new far end): free for EC2.
                    for _ in 0..9 {
                        client.catalog(&asked).await.expect("the hub answers");
                    }
                    c
                }));
            }
            for j in joins {
                answered.push(j.await.expect("an agent"));
            }
            for catalog in &answered {
                for f in &flows {
                    assert_eq!(
                        catalog.judge(f),
                        direct.judge(f),
                        "{f:?}: the hub's verdict differs from a direct read's\nhub: {catalog:#?}\ndirect: {direct:#?}"
                    );
                }
                assert_eq!(catalog.vpc_cidrs, direct.vpc_cidrs);
            }
            let seen = counts.lock().unwrap().clone();
            let own: BTreeMap<String, u64> = hub
                .aws
                .lock()
                .await
                .calls()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            assert_eq!(seen, own, "the proxy and the hub count different calls");
            for t in tasks {
                t.abort();
            }
            costs.push((agents, seen));
        }
        let (one, many) = (&costs[0].1, &costs[1].1);
        assert_eq!(
            one, many,
            "EC2 calls grew with the agents asking: {costs:?}"
        );
        // One batched lookup for every address, one read of the groups, one of the VPC.
        assert_eq!(one.get("DescribeNetworkInterfaces"), Some(&1), "{one:?}");
        assert_eq!(one.get("DescribeSecurityGroups"), Some(&1), "{one:?}");
        assert_eq!(one.get("DescribeVpcs"), Some(&1), "{one:?}");
        eprintln!("hub: EC2 calls for 1 and 25 agents: {costs:?}");
    });
}

/// `sgpath hub --auth none` serves catalogs and the fleet's reports to anyone: refused,
/// naming the flag, on an address other hosts reach; `--no-tls` likewise. Nothing listens
/// after either refusal.
pub fn hub_refuses_open_auth_off_loopback() {
    for (flags, named) in [
        (&["--auth", "none"][..], "--auth none"),
        (&["--no-tls"][..], "--no-tls"),
    ] {
        let out = std::process::Command::new(crate::sgpath_bin())
            .args(["hub", "--log-format", "text", "--listen", "0.0.0.0:0"])
            .args(flags)
            .env("AWS_REGION", "us-east-1")
            .env_remove("KUBECONFIG")
            .output()
            .expect("run sgpath hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
}
