//! The lab's AWS: the spec's security groups, their rules and the ENIs that carry them,
//! created in moto's EC2 server (`python3 -m moto.server`, a real implementation of the EC2
//! API from PyPI), with an instance-metadata service for the node's ENIs: what sgpath
//! reads on a real node, built from the same spec that drives the VPC namespace's
//! nftables. Step edits go to both, so the two stay one truth.
//!
//! moto runs on the host, never in a VM: under TCG its Python start (botocore's service
//! models, moto's EC2 resources) took six minutes. A VM reaches it through qemu's user
//! network (`guestfwd`, [`GUEST_MOTO`]), each connection piped by `xtask relay-stdio` to
//! the host's loopback; [`Moto::guest_url`] tells the guest where. In the lab, sgpath runs in
//! the node's namespace: a relay there ([`FakeAws`]) carries its EC2 connections to moto,
//! and the metadata service listens there itself, both on 127.0.0.1.
//!
//! Side effects: [`Moto::start`] starts moto on a free host port (killed on drop, its log
//! in the system temp dir); [`FakeAws::start`] creates a VPC, a subnet, the groups and ENIs
//! in it and two listeners in the node's namespace (closed on drop).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::spec::{PodKind, Proto, SgDirection, SgRule, Spec};
use crate::setup::PYTHON;

/// The regions labs take, one each: moto keeps each region's VPCs, groups and ENIs apart,
/// so two labs with the same addresses (tests run two at a time) never see each other's.
const REGIONS: [&str; 8] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
];

/// The next lab's region.
fn next_region() -> &'static str {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    REGIONS[NEXT.fetch_add(1, Ordering::Relaxed) % REGIONS.len()]
}

/// Where a VM guest reaches the host's moto: qemu's `guestfwd` address.
pub const GUEST_MOTO: &str = "10.0.2.100:80";

/// The environment variable that gives the guest moto's URL (set by the VM runner).
pub const MOTO_ENV: &str = "SGPATH_MOTO";

/// How long moto may take to answer its first connection (its start on a loaded host).
const START_LIMIT: Duration = Duration::from_secs(60);

/// The MAC instance metadata gives the node's primary ENI; secondary ENIs count up from it.
const FIRST_MAC: u8 = 1;

/// moto's EC2 server on the host's loopback. Killed and reaped on drop.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Moto {
    /// Starts `python3 -m moto.server` on a free 127.0.0.1 port and waits until it accepts a
    /// connection.
    ///
    /// # Errors
    /// moto not installed (`cargo xtask setup` installs it), exiting early, or silent for
    /// [`START_LIMIT`]; its log's tail says why.
    pub fn start() -> Result<Moto> {
        crate::setup::moto_importable().map_err(|e| {
            anyhow::anyhow!(
                "moto[server] is not installed for {PYTHON} ({e}): `cargo xtask setup` installs it"
            )
        })?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::env::temp_dir().join(format!(
            "sgpath-moto-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(PYTHON)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            // 1,200 public AMIs parsed at the first EC2 call: nothing here uses them.
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {PYTHON} -m moto.server"))?;
        let mut moto = Moto { child, addr, log };
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                bail!("moto exited {status}: {}", moto.log_tail());
            }
            if start.elapsed() > START_LIMIT {
                bail!(
                    "moto did not listen within {START_LIMIT:?}: {}",
                    moto.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// qemu's options that give a VM guest this server at [`GUEST_MOTO`]: a user network
    /// restricted to the forward (`restrict=on`: nothing else leaves the guest), each
    /// connection piped by `xtask relay-stdio` to this server.
    pub fn qemu_opts(&self) -> String {
        // Not current_exe(): `cargo build --workspace` may have replaced this binary since.
        let xtask = crate::target_dir().join("debug/xtask");
        format!(
            // vng splits these with shlex: the command's spaces stay in one quoted word.
            "-netdev 'user,id=sgaws,restrict=on,guestfwd=tcp:{GUEST_MOTO}-cmd:{} relay-stdio {}' -device virtio-net-pci,netdev=sgaws",
            xtask.display(),
            self.addr
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `xtask relay-stdio <addr>`: qemu's `guestfwd` runs this per guest connection; it pipes
/// stdin to a TCP connection to `addr` and the connection to stdout.
///
/// # Errors
/// When `addr` does not accept.
pub fn relay_stdio(addr: &str) -> Result<()> {
    let up = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut down = up.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut down);
        let _ = down.shutdown(std::net::Shutdown::Write);
    });
    let mut up = up;
    let _ = std::io::copy(&mut up, &mut std::io::stdout());
    drop(t);
    Ok(())
}

/// A listener serving connections on threads until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Server {
    /// Listens on 127.0.0.1 of namespace `netns` (`None`: this thread's) and hands each
    /// connection to `serve` on its own thread. The accepting thread is this thread's child,
    /// so it stays in this thread's namespace: `serve` may dial out from here.
    fn start(
        netns: Option<&str>,
        serve: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Result<Server> {
        let listener = listen_in(netns)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let serve = serve.clone();
                        let _ = s.set_nonblocking(false);
                        std::thread::spawn(move || serve(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Server { stop, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A listener on 127.0.0.1 of `netns`: bound by a thread that enters the namespace (a
/// socket belongs to the namespace it was created in) and then ends.
fn listen_in(netns: Option<&str>) -> Result<TcpListener> {
    let Some(ns) = netns else {
        return Ok(TcpListener::bind("127.0.0.1:0")?);
    };
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<TcpListener> {
        let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on this short-lived thread only, with a namespace fd we own.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpListener::bind("127.0.0.1:0")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread entering {ns} panicked"))?
}

/// Pipes a connection to `to` both ways until either side closes.
fn relay(down: TcpStream, to: SocketAddr) {
    let Ok(up) = TcpStream::connect(to) else {
        return;
    };
    let (Ok(mut up2), Ok(mut down2)) = (up.try_clone(), down.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut down2, &mut up2);
        let _ = up2.shutdown(std::net::Shutdown::Write);
    });
    let (mut up, mut down) = (up, down);
    let _ = std::io::copy(&mut up, &mut down);
    let _ = down.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// Reads one HTTP request's method and path (and skips its headers and body).
fn read_request(s: &TcpStream) -> Option<(String, String, Option<String>)> {
    let mut r = BufReader::new(s);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut len = 0u64;
    let mut token = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("x-aws-ec2-metadata-token") {
                token = Some(v.trim().to_owned());
            }
        }
    }
    let _ = r.by_ref().take(len).read_to_end(&mut Vec::new());
    let mut w = first.split_whitespace();
    Some((w.next()?.to_owned(), w.next()?.to_owned(), token))
}

/// The token the metadata service hands out and then requires (IMDSv2).
const IMDS_TOKEN: &str = "lab-token";

/// Answers one instance-metadata request from `answers` (path -> body).
fn imds(mut s: TcpStream, answers: &BTreeMap<String, String>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let Some((method, path, token)) = read_request(&s) else {
        return;
    };
    let (status, body) = match (method.as_str(), path.as_str()) {
        ("PUT", "/latest/api/token") => (200, IMDS_TOKEN),
        ("GET", _) if token.as_deref() != Some(IMDS_TOKEN) => (401, ""),
        ("GET", p) => answers.get(p).map_or((404, ""), |b| (200, b.as_str())),
        _ => (405, ""),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// One EC2 Query API call to moto in `region` (moto checks no signature, and takes the
/// region from the credential scope); the answer's XML, or moto's error code and message.
fn call(
    moto: SocketAddr,
    region: &str,
    action: &str,
    params: &[(String, String)],
) -> Result<String> {
    let mut body = format!("Action={action}&Version=2016-11-15");
    for (k, v) in params {
        body.push('&');
        body.push_str(k);
        body.push('=');
        body.push_str(&form_encode(v));
    }
    let mut s = TcpStream::connect(moto).with_context(|| format!("moto at {moto}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST / HTTP/1.1\r\nhost: {moto}\r\nauthorization: AWS4-HMAC-SHA256 \
         Credential=testing/20260101/{region}/ec2/aws4_request, SignedHeaders=host, \
         Signature=0\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let xml = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if let Some(code) = tag(xml, "Code") {
        bail!(
            "EC2 {action}: {code}: {}",
            tag(xml, "Message").unwrap_or_default()
        );
    }
    if !answer.starts_with("HTTP/1.1 200") {
        bail!(
            "EC2 {action}: {}",
            answer.lines().next().unwrap_or("no answer")
        );
    }
    Ok(xml.to_owned())
}

/// The text of the first `<name>` element.
fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find('<')? + start;
    Some(xml[start..end].to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a form value, a URL
/// query).
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The lab's groups and ENIs in moto, and the servers sgpath reads them through.
pub struct FakeAws {
    /// moto, when this process started it (no VM host gave one).
    _moto: Option<Moto>,
    moto: SocketAddr,
    /// This lab's region in moto (instance metadata says it too).
    pub region: &'static str,
    _servers: Vec<Server>,
    /// moto's EC2 endpoint and the metadata service, as sgpath's `--ec2-endpoint` and
    /// `--imds-endpoint` take them (in the namespace given to [`FakeAws::start`]).
    pub ec2: String,
    pub imds: String,
    /// The spec's group names -> the ids moto gave them (`sg-0123...`).
    pub group_ids: BTreeMap<String, String>,
    /// The lab's VPC and subnet in moto, for what a test adds beside the spec.
    vpc: String,
    subnet: String,
}

/// A rule's far end, as [`FakeAws::authorize`] takes it.
pub enum Source<'a> {
    Cidr(ipnet::Ipv4Net),
    /// Members of a group of the spec, by name.
    Group(&'a str),
}

impl FakeAws {
    /// Creates the spec's groups and ENIs in moto (the VM host's, [`MOTO_ENV`], or one this
    /// process starts) and serves EC2 and instance metadata on 127.0.0.1 of `netns`
    /// (`None`: this process's namespace).
    ///
    /// # Errors
    /// moto missing or refusing a call (named), or the namespace not there.
    pub fn start(spec: &Spec, netns: Option<&str>) -> Result<FakeAws> {
        let started = Instant::now();
        let (own, moto) = match std::env::var(MOTO_ENV) {
            Ok(url) if !url.is_empty() => {
                let addr = url.trim_start_matches("http://").trim_end_matches('/');
                let addr: SocketAddr = addr
                    .parse()
                    .with_context(|| format!("{MOTO_ENV}={url:?} is not http://<ip>:<port>"))?;
                (None, addr)
            }
            _ => {
                let m = Moto::start()?;
                let addr = m.addr;
                (Some(m), addr)
            }
        };
        let mut aws = FakeAws {
            _moto: own,
            moto,
            region: next_region(),
            _servers: Vec::new(),
            ec2: String::new(),
            imds: String::new(),
            group_ids: BTreeMap::new(),
            vpc: String::new(),
            subnet: String::new(),
        };
        let answers = Arc::new(aws.seed(spec)?);
        // In another namespace, moto is reached through a relay there.
        let ec2_port = match netns {
            Some(_) => {
                let relay = Server::start(netns, move |s| relay(s, moto))?;
                let port = relay.port;
                aws._servers.push(relay);
                port
            }
            None => moto.port(),
        };
        let meta = Server::start(netns, move |s| imds(s, &answers))?;
        aws.ec2 = format!("http://127.0.0.1:{ec2_port}");
        aws.imds = format!("http://127.0.0.1:{}", meta.port);
        aws._servers.push(meta);
        eprintln!(
            "lab: EC2 (moto at {moto}, {}) at {} and instance metadata at {} in {}, {} groups, seeded in {:.1} s",
            aws.region,
            aws.ec2,
            aws.imds,
            netns.unwrap_or("this namespace"),
            aws.group_ids.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(aws)
    }

    /// The VPC, its subnet, the groups with their rules (the allow-all egress that
    /// `CreateSecurityGroup` adds replaced by the spec's), and the ENIs: the node's primary
    /// and secondary ENIs holding the node's and its ordinary pods' addresses, one branch
    /// ENI per branch pod. Returns what instance metadata answers for the node's ENIs.
    fn seed(&mut self, spec: &Spec) -> Result<BTreeMap<String, String>> {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let vpc_cidr = spec.vpc.cidr.to_string();
        let vpc = tag(
            &call(
                self.moto,
                self.region,
                "CreateVpc",
                &[p("CidrBlock", &vpc_cidr)],
            )?,
            "vpcId",
        )
        .context("CreateVpc gave no vpcId")?;
        let subnet = tag(
            &call(
                self.moto,
                self.region,
                "CreateSubnet",
                &[p("VpcId", &vpc), p("CidrBlock", &vpc_cidr)],
            )?,
            "subnetId",
        )
        .context("CreateSubnet gave no subnetId")?;
        self.vpc.clone_from(&vpc);
        self.subnet.clone_from(&subnet);
        for g in &spec.security_groups {
            let xml = call(
                self.moto,
                self.region,
                "CreateSecurityGroup",
                &[
                    p("GroupName", &g.id),
                    p("GroupDescription", &g.id),
                    p("VpcId", &vpc),
                ],
            )?;
            let id = tag(&xml, "groupId").context("CreateSecurityGroup gave no groupId")?;
            self.group_ids.insert(g.id.clone(), id.clone());
            let all = SgRule {
                proto: Proto::All,
                ports: None,
                cidr: "0.0.0.0/0".parse().expect("a CIDR"),
            };
            self.edit(false, &g.id, SgDirection::Egress, &all)?;
        }
        for g in &spec.security_groups {
            for (direction, rules) in [
                (SgDirection::Ingress, &g.ingress),
                (SgDirection::Egress, &g.egress),
            ] {
                for r in rules {
                    self.edit(true, &g.id, direction, r)?;
                }
            }
        }
        let ordinary_on = |eni: Option<&str>| -> Vec<String> {
            spec.pods
                .iter()
                .filter(|p| p.kind == PodKind::Ordinary && p.eni.as_deref() == eni)
                .map(|p| p.ip.to_string())
                .collect()
        };
        // (addresses, groups, MAC for the instance's ENIs)
        let mut enis: Vec<(Vec<String>, &[String], Option<u8>)> = Vec::new();
        let mut primary = vec![spec.node.primary_ip.to_string()];
        primary.extend(ordinary_on(None));
        enis.push((primary, &spec.node.security_groups, Some(FIRST_MAC)));
        for (i, e) in spec.node.secondary_enis.iter().enumerate() {
            let mut addresses = vec![e.ip.to_string()];
            addresses.extend(ordinary_on(Some(&e.name)));
            enis.push((
                addresses,
                &spec.node.security_groups,
                Some(FIRST_MAC + 1 + i as u8),
            ));
        }
        for pod in spec.pods.iter().filter(|p| p.kind == PodKind::Branch) {
            enis.push((vec![pod.ip.to_string()], &pod.security_groups, None));
        }
        let meta = "/latest/meta-data/";
        let mut answers = BTreeMap::new();
        answers.insert(format!("{meta}placement/region"), self.region.to_owned());
        answers.insert(
            format!("{meta}iam/security-credentials/"),
            "lab-node-role".to_owned(),
        );
        answers.insert(
            format!("{meta}iam/security-credentials/lab-node-role"),
            r#"{"Code":"Success","AccessKeyId":"testing","SecretAccessKey":"testing","Token":"testing"}"#
                .to_owned(),
        );
        let mut macs = Vec::new();
        for (addresses, groups, mac) in enis {
            let mut params = vec![p("SubnetId", &subnet)];
            for (i, a) in addresses.iter().enumerate() {
                params.push(p(
                    &format!("PrivateIpAddresses.{}.PrivateIpAddress", i + 1),
                    a,
                ));
                params.push(p(
                    &format!("PrivateIpAddresses.{}.Primary", i + 1),
                    if i == 0 { "true" } else { "false" },
                ));
            }
            let ids: Vec<String> = groups.iter().map(|g| self.group_ids[g].clone()).collect();
            for (i, g) in ids.iter().enumerate() {
                params.push(p(&format!("SecurityGroupId.{}", i + 1), g));
            }
            let xml = call(self.moto, self.region, "CreateNetworkInterface", &params)?;
            let eni = tag(&xml, "networkInterfaceId")
                .context("CreateNetworkInterface gave no networkInterfaceId")?;
            if let Some(n) = mac {
                let mac = format!("0a:00:00:00:00:{n:02x}");
                let base = format!("{meta}network/interfaces/macs/{mac}/");
                answers.insert(format!("{base}interface-id"), eni);
                answers.insert(format!("{base}security-group-ids"), ids.join("\n"));
                answers.insert(format!("{base}local-ipv4s"), addresses.join("\n"));
                answers.insert(format!("{base}vpc-ipv4-cidr-blocks"), vpc_cidr.clone());
                macs.push(format!("{mac}/"));
            }
        }
        answers.insert(format!("{meta}network/interfaces/macs/"), macs.join("\n"));
        Ok(answers)
    }

    /// Adds (`add`) or removes a rule of a group, as the step's edit did to nftables.
    ///
    /// # Errors
    /// What EC2 (moto) said, e.g. `InvalidPermission.NotFound`.
    pub fn edit(
        &mut self,
        add: bool,
        group: &str,
        direction: SgDirection,
        rule: &SgRule,
    ) -> Result<()> {
        let (proto, ports) = match rule.proto {
            Proto::All => ("-1", None),
            Proto::Icmp => ("icmp", Some((-1, -1))),
            p => (
                if p == Proto::Tcp { "tcp" } else { "udp" },
                Some(
                    rule.port_range()?
                        .map_or((0, 65535), |(lo, hi)| (i32::from(lo), i32::from(hi))),
                ),
            ),
        };
        self.permission(add, group, direction, proto, ports, Source::Cidr(rule.cidr))
    }

    /// Adds a rule the lab's nftables cannot enforce (one naming a group): for tests of
    /// the reader alone.
    ///
    /// # Errors
    /// As [`FakeAws::edit`].
    pub fn authorize(
        &mut self,
        group: &str,
        direction: SgDirection,
        tcp_ports: (u16, u16),
        from: Source<'_>,
    ) -> Result<()> {
        let ports = Some((i32::from(tcp_ports.0), i32::from(tcp_ports.1)));
        self.permission(true, group, direction, "tcp", ports, from)
    }

    fn permission(
        &mut self,
        add: bool,
        group: &str,
        direction: SgDirection,
        proto: &str,
        ports: Option<(i32, i32)>,
        from: Source<'_>,
    ) -> Result<()> {
        let id = self
            .group_ids
            .get(group)
            .with_context(|| format!("no group {group:?} in the lab"))?;
        let k = "IpPermissions.1";
        let mut params = vec![
            ("GroupId".to_owned(), id.clone()),
            (format!("{k}.IpProtocol"), proto.to_owned()),
        ];
        if let Some((lo, hi)) = ports {
            params.push((format!("{k}.FromPort"), lo.to_string()));
            params.push((format!("{k}.ToPort"), hi.to_string()));
        }
        match from {
            Source::Cidr(c) => params.push((format!("{k}.IpRanges.1.CidrIp"), c.to_string())),
            Source::Group(g) => {
                let gid = self
                    .group_ids
                    .get(g)
                    .with_context(|| format!("no group {g:?} in the lab"))?;
                params.push((format!("{k}.Groups.1.GroupId"), gid.clone()));
            }
        }
        let action = match (add, direction) {
            (true, SgDirection::Ingress) => "AuthorizeSecurityGroupIngress",
            (true, SgDirection::Egress) => "AuthorizeSecurityGroupEgress",
            (false, SgDirection::Ingress) => "RevokeSecurityGroupIngress",
            (false, SgDirection::Egress) => "RevokeSecurityGroupEgress",
        };
        call(self.moto, self.region, action, &params).map(drop)
    }

    /// Removes a rule added by [`FakeAws::authorize`].
    ///
    /// # Errors
    /// As [`FakeAws::edit`].
    pub fn revoke(
        &mut self,
        group: &str,
        direction: SgDirection,
        tcp_ports: (u16, u16),
        from: Source<'_>,
    ) -> Result<()> {
        let ports = Some((i32::from(tcp_ports.0), i32::from(tcp_ports.1)));
        self.permission(false, group, direction, "tcp", ports, from)
    }

    /// Creates a group beside the spec's (no ingress, EC2's allow-all egress), named `name`
    /// for [`FakeAws::authorize`]; its id.
    ///
    /// # Errors
    /// What EC2 (moto) said.
    pub fn create_group(&mut self, name: &str) -> Result<String> {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let xml = call(
            self.moto,
            self.region,
            "CreateSecurityGroup",
            &[
                p("GroupName", name),
                p("GroupDescription", name),
                p("VpcId", &self.vpc),
            ],
        )?;
        let id = tag(&xml, "groupId").context("CreateSecurityGroup gave no groupId")?;
        self.group_ids.insert(name.to_owned(), id.clone());
        Ok(id)
    }

    /// Creates an ENI beside the spec's, in the lab's subnet, with one private address
    /// and groups by name (a database's ENI, say); its id.
    ///
    /// # Errors
    /// What EC2 (moto) said, or a group not in the lab.
    pub fn create_eni(&mut self, address: std::net::Ipv4Addr, groups: &[&str]) -> Result<String> {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut params = vec![
            p("SubnetId", &self.subnet),
            p("PrivateIpAddress", &address.to_string()),
        ];
        for (i, g) in groups.iter().enumerate() {
            let id = self
                .group_ids
                .get(*g)
                .with_context(|| format!("no group {g:?} in the lab"))?;
            params.push(p(&format!("SecurityGroupId.{}", i + 1), id));
        }
        let xml = call(self.moto, self.region, "CreateNetworkInterface", &params)?;
        tag(&xml, "networkInterfaceId").context("CreateNetworkInterface gave no networkInterfaceId")
    }

    /// The arguments that point `sgpath trace|agent` at these servers.
    pub fn sgpath_args(&self) -> Vec<String> {
        vec![
            "--ec2".into(),
            "--ec2-endpoint".into(),
            self.ec2.clone(),
            "--imds-endpoint".into(),
            self.imds.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_form_encoded_and_tags_read() {
        assert_eq!(form_encode("0.0.0.0/0"), "0.0.0.0%2F0");
        assert_eq!(form_encode("sg-1 a"), "sg-1%20a");
        let xml = "<R><groupId>sg-0a</groupId><x><groupId>sg-0b</groupId></x></R>";
        assert_eq!(tag(xml, "groupId").as_deref(), Some("sg-0a"));
        assert_eq!(tag(xml, "vpcId"), None);
    }
}
