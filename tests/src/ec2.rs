//! The security-group reader against a real EC2 API implementation: moto's server on
//! loopback, seeded with the default lab's groups and ENIs by `tests/moto/default_lab.py`,
//! read by `sgpath::collect::aws::Aws::read` and judged by the catalog it returns.
//!
//! Side effects: starts `python3 -m moto.server` on a free 127.0.0.1 port (killed on drop,
//! its log in the system temp dir) and a fake instance-metadata server on another; nothing
//! leaves loopback.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sgpath::{
    collect::aws::{Aws, AwsConfig},
    model::sg::{Flow, Peer, Rules, Verdict},
};
use xtask::setup::PYTHON;

/// How long moto's server may take to answer its first connection (Flask's start on a
/// loaded 2-core machine).
const START_LIMIT: Duration = Duration::from_secs(60);

/// The default lab's addresses (xtask/labs/default.toml, as `default_lab.py` seeds them).
const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 3, 219);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const BASTION: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

/// A running moto server: killed and reaped on drop, panic or not.
pub struct Moto {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free loopback port and waits until it accepts a
    /// connection. Panics, naming what failed, when moto is not installed (`cargo xtask
    /// setup` installs it), exits early, or does not answer within [`START_LIMIT`].
    pub fn start() -> Moto {
        if let Err(e) = xtask::setup::moto_importable() {
            panic!(
                "moto[server] is not installed for {PYTHON} ({e}): `cargo xtask setup` installs \
                 it (python3 -m pip install 'moto[server]')"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let log =
            std::env::temp_dir().join(format!("sgpath-moto-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().unwrap();
        let child = Command::new(PYTHON)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PYTHON} -m moto.server: {e}"));
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "{PYTHON} -m moto.server -p {port} exited ({status}) before answering; its log:\n{}",
                    moto.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return moto;
            }
            if start.elapsed() > START_LIMIT {
                panic!(
                    "{PYTHON} -m moto.server did not accept a connection on {addr} within \
                     {START_LIMIT:?}; its log:\n{}",
                    moto.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"))
    }

    /// `tests/moto/default_lab.py <url>`: the default lab's groups and ENIs; returns the
    /// node's and the pod's group ids (moto makes them up).
    pub fn seed_default_lab(&self) -> (String, String) {
        let script = xtask::workspace_root().join("tests/moto/default_lab.py");
        let out = Command::new(PYTHON)
            .arg(&script)
            .arg(&self.url)
            .output()
            .unwrap_or_else(|e| panic!("{PYTHON} {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{PYTHON} {} {} failed ({}): {}\nmoto's log:\n{}",
            script.display(),
            self.url,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        match stdout.split_whitespace().collect::<Vec<_>>()[..] {
            [node, pod] if node.starts_with("sg-") && pod.starts_with("sg-") => {
                (node.to_owned(), pod.to_owned())
            }
            _ => panic!("{} printed {stdout:?}, not two group ids", script.display()),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A fake instance-metadata service on loopback, one thread, one request per connection:
/// the node's one ENI (`NODE`, in `node_group`, VPC 192.168.0.0/16), the region, and an
/// instance role whose credentials are moto's `testing` (moto accepts any). The reader's
/// credential chain reaches the role only when the environment has no credentials of its
/// own; moto accepts those too.
fn imds(node_group: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the fake IMDS");
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let _ = r.by_ref().take(len as u64).read_to_end(&mut Vec::new());
            let path = first.split_whitespace().nth(1).unwrap_or("");
            let meta = "/latest/meta-data/";
            let mac = "network/interfaces/macs/0a:00:00:00:00:01";
            let (status, body) = match path.strip_prefix(meta) {
                None if path == "/latest/api/token" => (200, "token".to_owned()),
                Some("network/interfaces/macs/") => (200, "0a:00:00:00:00:01/".to_owned()),
                Some(p) if p == format!("{mac}/interface-id") => (200, "eni-node".to_owned()),
                Some(p) if p == format!("{mac}/security-group-ids") => (200, node_group.clone()),
                Some(p) if p == format!("{mac}/local-ipv4s") => (200, NODE.to_string()),
                Some(p) if p == format!("{mac}/vpc-ipv4-cidr-blocks") => {
                    (200, "192.168.0.0/16".to_owned())
                }
                Some("placement/region") => (200, "us-east-1".to_owned()),
                Some("iam/security-credentials/") => (200, "node-role".to_owned()),
                Some("iam/security-credentials/node-role") => (
                    200,
                    r#"{"AccessKeyId":"testing","SecretAccessKey":"testing","Token":"testing"}"#
                        .to_owned(),
                ),
                _ => (404, String::new()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// moto seeded with the default lab; the reader, pointed at it and at the fake IMDS, reads
/// the node's group from IMDS, the pod's ENI and group from `DescribeNetworkInterfaces` and
/// both groups' rules from `DescribeSecurityGroups`; the catalog admits the bastion on
/// pod:80 (a CIDR rule) and the node on pod:8080 (the rule referencing the node's group),
/// denies the bastion on pod:8080 and names the rule to add.
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
    let moto = Moto::start();
    let (node_sg, pod_sg) = moto.seed_default_lab();
    let config = AwsConfig {
        ec2_endpoint: Some(moto.url.clone()),
        imds_endpoint: imds(node_sg.clone()),
        region: Some("us-east-1".into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pod = IpAddr::V4(POD);
    let rules = rt.block_on(async {
        let mut aws = Aws::new(config).expect("the reader's HTTP client");
        aws.read(&[pod].into()).await
    });
    let rules =
        rules.unwrap_or_else(|e| panic!("reading moto: {e}\nmoto's log:\n{}", moto.log_text()));
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

    // Everything from members of the node's group: the group reference, the node's ENI
    // carrying that group (and its default egress allow-all letting it out).
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
        Peer::Group {
            id: node_sg.clone()
        }
    );

    // tcp/8080 from the bastion: no rule; the fix names the pod's group and the port.
    let v = catalog.judge(&Flow::tcp(bastion, pod, 8080));
    let Verdict::Denied(m) = &v else {
        panic!("bastion -> pod:8080 is admitted: {v:?}\n{catalog:#?}")
    };
    assert_eq!(
        m.summary(),
        format!("{pod_sg} admits no tcp/8080 from 10.0.1.10")
    );
    assert_eq!(
        m.remediation(),
        format!(
            "aws ec2 authorize-security-group-ingress --group-id {pod_sg} --protocol tcp \
             --port 8080 --cidr 10.0.1.10/32"
        )
    );
}
