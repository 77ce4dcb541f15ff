//! A real Kubernetes control plane for the tests: `kube-apiserver` built from the
//! `k8s.io/kubernetes` module and `etcd` from `go.etcd.io/etcd/server/v3`, each at a pinned
//! release, and the CRDs the agent and deploy/ need, taken from their upstream modules
//! (the VPC resource controller's `SecurityGroupPolicy`, the Prometheus Operator's
//! `PodMonitor` and `PrometheusRule`). [`install`] builds and caches them (`cargo xtask
//! setup`); [`ControlPlane::start`] runs etcd and kube-apiserver on loopback, in a network
//! namespace if asked, the way the tests need them.
//!
//! Everything Go writes lives under [`go_dir`] (`/opt/sgpath/go`, outside the clone, like the
//! Rust target directory): the module cache, the build cache, one wrapper module per built
//! release and the binaries, named by their release (`kube-apiserver-v1.36.3`,
//! `etcd-v3.6.8`), so a fresh clone on the same machine builds nothing, and changing a
//! pinned release builds only that one.
//!
//! Side effects: [`install`] runs `go mod download`, `go mod tidy` and `go build` (network:
//! the Go module proxy), writes under [`go_dir`] and may `apt-get install openssl`.
//! [`ControlPlane::start`] writes a temporary directory (certificates, keys, the token file,
//! etcd's data, both logs), binds three loopback ports and runs two processes; dropping it
//! kills both and removes the directory.

use crate::cmd;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `k8s.io/kubernetes` release whose `cmd/kube-apiserver` the tests run. Its staging modules
/// (`k8s.io/api`, `apimachinery`, ...) are taken at the matching `v0.X.Y`.
pub const KUBERNETES: &str = "v1.36.3";

/// etcd release: the one `k8s.io/kubernetes` [`KUBERNETES`] names in
/// `build/dependencies.yaml` (and `hack/lib/etcd.sh`). Debian's `etcd-server` is 3.4, which
/// Kubernetes 1.36 no longer supports.
pub const ETCD: &str = "v3.6.8";

/// `github.com/aws/amazon-vpc-resource-controller-k8s` release whose
/// `config/crd/bases/vpcresources.k8s.aws_securitygrouppolicies.yaml` is installed.
pub const VPC_RESOURCE_CONTROLLER: &str = "v1.8.2";

/// `github.com/prometheus-operator/prometheus-operator` release whose
/// `example/prometheus-operator-crd/` PodMonitor and PrometheusRule CRDs are installed (the
/// newest release of the root module the proxy serves).
pub const PROMETHEUS_OPERATOR: &str = "v0.85.0";

/// The CRD files installed: (module, release, path inside the module).
pub const CRDS: &[(&str, &str, &str)] = &[
    (
        "github.com/aws/amazon-vpc-resource-controller-k8s",
        VPC_RESOURCE_CONTROLLER,
        "config/crd/bases/vpcresources.k8s.aws_securitygrouppolicies.yaml",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator",
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator",
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
];

/// The machine's Go directory: `$SGPATH_GO_DIR`, else `/opt/sgpath/go`.
pub fn go_dir() -> PathBuf {
    std::env::var_os("SGPATH_GO_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sgpath/go"))
}

/// The cached `kube-apiserver` of [`KUBERNETES`].
pub fn kube_apiserver_bin() -> PathBuf {
    go_dir()
        .join("bin")
        .join(format!("kube-apiserver-{KUBERNETES}"))
}

/// The cached `etcd` of [`ETCD`].
pub fn etcd_bin() -> PathBuf {
    go_dir().join("bin").join(format!("etcd-{ETCD}"))
}

/// Where [`install`] copies the CRD files: one directory per set of releases.
pub fn crd_dir() -> PathBuf {
    go_dir().join("crds").join(format!(
        "vpc-resource-controller-{VPC_RESOURCE_CONTROLLER}-prometheus-operator-{PROMETHEUS_OPERATOR}"
    ))
}

/// The installed CRD files, in [`CRDS`]' order.
pub fn crd_files() -> Vec<PathBuf> {
    CRDS.iter()
        .map(|(_, _, path)| crd_dir().join(Path::new(path).file_name().unwrap()))
        .collect()
}

/// The `go` binary: on PATH, else Go's default install directory.
fn go_bin() -> Option<PathBuf> {
    cmd::which("go").or_else(|| {
        let p = PathBuf::from("/usr/local/go/bin/go");
        cmd::is_executable(&p).then_some(p)
    })
}

/// A `go` command whose caches live under [`go_dir`]; the machine's own Go
/// (`GOTOOLCHAIN=local`: no toolchain download), static binaries (`CGO_ENABLED=0`).
fn go() -> Result<Command> {
    let go = go_bin().context("no `go` on PATH or in /usr/local/go/bin")?;
    let root = go_dir();
    let mut cmd = Command::new(go);
    cmd.env("GOPATH", &root)
        .env("GOMODCACHE", root.join("mod"))
        .env("GOCACHE", root.join("build-cache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-modcacherw")
        .env("CGO_ENABLED", "0");
    Ok(cmd)
}

/// What [`install`] would do, as human-readable items; empty when everything is cached.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if go_bin().is_none() {
        missing.push("Go (`go`), to build the control plane".into());
    }
    if cmd::which("openssl").is_none() {
        missing
            .push("openssl (Debian package openssl), for the control plane's certificates".into());
    }
    if !cmd::is_executable(&kube_apiserver_bin()) {
        missing.push(format!(
            "kube-apiserver {KUBERNETES} ({})",
            kube_apiserver_bin().display()
        ));
    }
    if !cmd::is_executable(&etcd_bin()) {
        missing.push(format!("etcd {ETCD} ({})", etcd_bin().display()));
    }
    for file in crd_files() {
        if !file.is_file() {
            missing.push(format!("CRD {}", file.display()));
        }
    }
    missing
}

/// Builds and caches what [`missing`] names; skips what is there.
///
/// # Errors
/// Go missing, the module proxy unreachable, a build failing, or `apt-get` failing.
pub fn install() -> Result<()> {
    if cmd::which("openssl").is_none() {
        cmd::run(Command::new("apt-get").args(["install", "-y", "openssl"]))?;
    }
    if cmd::is_executable(&kube_apiserver_bin()) {
        println!("kube-apiserver {KUBERNETES}: cached");
    } else {
        build_kube_apiserver()?;
    }
    if cmd::is_executable(&etcd_bin()) {
        println!("etcd {ETCD}: cached");
    } else {
        build_wrapped(
            "etcd",
            "go.etcd.io/etcd/server/v3",
            ETCD,
            "go.etcd.io/etcd/server/v3",
            &[],
            "",
            &etcd_bin(),
        )?;
    }
    install_crds()
}

/// `go mod download -json module@version`'s `Dir`: the unpacked module.
fn module_dir(module: &str, version: &str) -> Result<PathBuf> {
    let out =
        cmd::output(go()?.args(["mod", "download", "-json", &format!("{module}@{version}")]))?;
    let doc: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("go mod download printed {out}"))?;
    let dir = doc["Dir"]
        .as_str()
        .with_context(|| format!("no Dir for {module}@{version}: {out}"))?;
    Ok(PathBuf::from(dir))
}

/// `k8s.io/kubernetes` replaces its staging modules with `./staging/src/...`, which `go
/// install pkg@version` refuses: build it from a wrapper module that replaces each with its
/// published `v0.X.Y` instead.
fn build_kube_apiserver() -> Result<()> {
    let dir = module_dir("k8s.io/kubernetes", KUBERNETES)?;
    let gomod = std::fs::read_to_string(dir.join("go.mod"))?;
    let staging = format!("v0.{}", KUBERNETES.trim_start_matches("v1."));
    let replaces: Vec<(String, String)> = gomod
        .lines()
        .filter_map(|l| {
            let (from, to) = l.trim().split_once("=>")?;
            to.trim()
                .starts_with("./staging/")
                .then(|| (from.trim().to_owned(), format!("{} {staging}", from.trim())))
        })
        .collect();
    if replaces.is_empty() {
        bail!("k8s.io/kubernetes {KUBERNETES}: no staging replace directives in its go.mod");
    }
    let minor = KUBERNETES.split('.').nth(1).unwrap_or("0");
    // What `hack/lib/version.sh` stamps: kubectl and clients see the release, not v0.0.0.
    let ldflags = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={KUBERNETES} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean \
         -X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES}"
    );
    build_wrapped(
        "kube-apiserver",
        "k8s.io/kubernetes",
        KUBERNETES,
        "k8s.io/kubernetes/cmd/kube-apiserver",
        &replaces,
        &ldflags,
        &kube_apiserver_bin(),
    )
}

/// Builds `package` of `module@version` from a wrapper module under `<go_dir>/src/` that
/// requires it (with `replaces`), into `out`.
fn build_wrapped(
    name: &str,
    module: &str,
    version: &str,
    package: &str,
    replaces: &[(String, String)],
    ldflags: &str,
    out: &Path,
) -> Result<()> {
    let t = Instant::now();
    let src = go_dir().join("src").join(format!("{name}-{version}"));
    std::fs::create_dir_all(&src)?;
    let mut gomod =
        format!("module sgpath.local/{name}\n\ngo 1.26.0\n\nrequire {module} {version}\n");
    if !replaces.is_empty() {
        gomod.push_str("\nreplace (\n");
        for (from, to) in replaces {
            gomod.push_str(&format!("\t{from} => {to}\n"));
        }
        gomod.push_str(")\n");
    }
    std::fs::write(src.join("go.mod"), gomod)?;
    // A main package cannot be imported, but `go mod tidy` reads tools-tagged files.
    std::fs::write(
        src.join("tools.go"),
        format!("//go:build tools\n\npackage tools\n\nimport _ \"{package}\"\n"),
    )?;
    cmd::run(go()?.current_dir(&src).args(["mod", "tidy"]))?;
    std::fs::create_dir_all(out.parent().unwrap())?;
    let tmp = out.with_extension("partial");
    cmd::run(
        go()?
            .current_dir(&src)
            .args(["build", "-trimpath", "-ldflags", ldflags, "-o"])
            .arg(&tmp)
            .arg(package),
    )?;
    std::fs::rename(&tmp, out)?;
    println!(
        "{name} {version}: built in {:.0} s -> {}",
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Copies [`CRDS`] out of their modules into [`crd_dir`].
fn install_crds() -> Result<()> {
    let files = crd_files();
    if files.iter().all(|f| f.is_file()) {
        println!("CRDs: cached in {}", crd_dir().display());
        return Ok(());
    }
    std::fs::create_dir_all(crd_dir())?;
    for ((module, version, path), file) in CRDS.iter().zip(&files) {
        let from = module_dir(module, version)?.join(path);
        std::fs::copy(&from, file).with_context(|| format!("copy {}", from.display()))?;
    }
    println!("CRDs: {}", crd_dir().display());
    Ok(())
}

/// A user of the static token file (`--token-auth-file`).
#[derive(Clone, Debug)]
pub struct StaticUser {
    pub token: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl StaticUser {
    pub fn new(token: &str, name: &str, groups: &[&str]) -> StaticUser {
        StaticUser {
            token: token.into(),
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// The bearer token of the control plane's admin (group `system:masters`).
pub const ADMIN_TOKEN: &str = "sgpath-test-admin-token";

/// The ServiceAccount issuer: as EKS's own, an https URL (the tokens' `iss`).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The Service CIDR (`kubernetes` Service at 10.100.0.1, as in an EKS cluster's default).
pub const SERVICE_CIDR: &str = "10.100.0.0/16";

/// etcd and kube-apiserver running on 127.0.0.1 (in [`ControlPlane::netns`] if set): TLS
/// with a test CA, ServiceAccount token signing, `Node,RBAC` authorization, TokenRequest and
/// TokenReview, a static token file for the admin and the test's users.
pub struct ControlPlane {
    /// The temporary directory holding certificates, keys, etcd's data and the logs.
    pub dir: PathBuf,
    /// The network namespace both run in (`/run/netns/<name>`), or the caller's.
    pub netns: Option<String>,
    /// kube-apiserver's secure port on 127.0.0.1.
    pub port: u16,
    /// etcd's client port on 127.0.0.1.
    pub etcd_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

/// Binds `n` distinct free ports of 127.0.0.1 in `netns` (or here) and lets them go.
fn free_ports(netns: Option<&str>, n: usize) -> Result<Vec<u16>> {
    let bind = move || -> Result<Vec<u16>> {
        if let Some(ns) = netns {
            let path = format!("/run/netns/{ns}");
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid descriptor, in this scoped thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
        }
        let listeners = (0..n)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect())
    };
    std::thread::scope(|s| s.spawn(bind).join().expect("port thread panicked"))
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, in network namespace `netns` if given, and waits
    /// until `/readyz` answers `ok` (up to 120 s). `users` join the admin in the token file.
    ///
    /// # Errors
    /// The binaries not installed (`cargo xtask setup`), openssl failing, a process exiting
    /// early or never ready (with the tail of its log).
    pub fn start(netns: Option<&str>, users: &[StaticUser]) -> Result<ControlPlane> {
        for bin in [kube_apiserver_bin(), etcd_bin()] {
            if !cmd::is_executable(&bin) {
                bail!("{} is not built: run `cargo xtask setup`", bin.display());
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "sgpath-control-plane-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ports = free_ports(netns, 3)?;
        let mut cp = ControlPlane {
            dir,
            netns: netns.map(str::to_owned),
            port: ports[0],
            etcd_port: ports[1],
            etcd: None,
            apiserver: None,
        };
        cp.certificates()?;
        let mut tokens = format!("{ADMIN_TOKEN},admin,admin,system:masters\n");
        for u in users {
            tokens.push_str(&format!(
                "{},{},{},\"{}\"\n",
                u.token,
                u.name,
                u.name,
                u.groups.join(",")
            ));
        }
        std::fs::write(cp.dir.join("tokens.csv"), tokens)?;
        cp.start_etcd(ports[2])?;
        cp.start_apiserver()?;
        Ok(cp)
    }

    /// `program` run in the control plane's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Writes a kubeconfig for this server authenticating with bearer `token`, default
    /// namespace `namespace`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str, namespace: &str) -> Result<()> {
        let ca = std::fs::read(self.ca_file())?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sgpath-test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             contexts:\n- name: sgpath-test\n  context:\n    cluster: sgpath-test\n    user: sgpath-test\n    namespace: {namespace}\n\
             current-context: sgpath-test\nusers:\n- name: sgpath-test\n  user:\n    token: {token}\n",
            self.url(),
            base64(&ca)
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// The test CA, the serving certificate (127.0.0.1, localhost, the `kubernetes`
    /// Service's names and address) and the ServiceAccount signing key pair, by openssl.
    fn certificates(&self) -> Result<()> {
        let d = &self.dir;
        let ssl = |args: &[&str]| -> Result<()> {
            cmd::output(Command::new("openssl").current_dir(d).args(args)).map(drop)
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        ssl(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "7",
                "-subj",
                "/CN=sgpath-test-ca",
            ],
        ]
        .concat())?;
        ssl(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "serving.key",
                "-out",
                "serving.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
        ]
        .concat())?;
        std::fs::write(
            d.join("serving.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,IP:10.100.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
             DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        )?;
        ssl(&[
            "x509",
            "-req",
            "-in",
            "serving.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "serving.crt",
            "-days",
            "7",
            "-extfile",
            "serving.ext",
        ])?;
        ssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sa.key",
        ])?;
        ssl(&["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(())
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::File::create(self.dir.join(format!("{name}.log")))?)
    }

    /// The last lines of `<name>.log`, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn start_etcd(&mut self, peer_port: u16) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = self.log("etcd")?;
        let child = self
            .command(etcd_bin())
            .args(["--name", "sgpath-test", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("sgpath-test={peer}")])
            // A test's etcd need not survive a power cut; fsync on a shared disk costs seconds.
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start etcd")?;
        self.etcd = Some(child);
        Ok(())
    }

    /// Starts kube-apiserver (again, after [`ControlPlane::stop_apiserver`]) on the same port
    /// and etcd, and waits for `/readyz`.
    ///
    /// # Errors
    /// It exits or is not ready within 120 s.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let d = &self.dir;
        let path = |f: &str| d.join(f).to_string_lossy().into_owned();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("kube-apiserver.log"))?;
        let child = self
            .command(kube_apiserver_bin())
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", path("certs")))
            .arg(format!("--tls-cert-file={}", path("serving.crt")))
            .arg(format!("--tls-private-key-file={}", path("serving.key")))
            .arg(format!("--client-ca-file={}", path("ca.crt")))
            .arg(format!("--token-auth-file={}", path("tokens.csv")))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!("--service-account-key-file={}", path("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path("sa.key")
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .args(["--authorization-mode=Node,RBAC", "--anonymous-auth=false"])
            // The `kubernetes` Service's endpoints may not be loopback: nothing needs them.
            .arg("--endpoint-reconciler-type=none")
            .args(["--profiling=false", "--v=1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start kube-apiserver")?;
        self.apiserver = Some(child);
        self.wait_ready(Duration::from_secs(120))
    }

    /// Kills kube-apiserver (etcd keeps running): its port refuses, every watch is cut.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Polls `/readyz` with the admin token until it says `ok`.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut exited = None;
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(c) = child
                    && let Some(status) = c.try_wait()?
                {
                    exited = Some((name, status));
                }
            }
            if let Some((name, status)) = exited {
                bail!("{name} exited ({status}):\n{}", self.log_tail(name));
            }
            let out = self
                .command("curl")
                .args(["-s", "--max-time", "5", "--cacert"])
                .arg(self.ca_file())
                .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
                .arg(format!("{}/readyz", self.url()))
                .stdin(Stdio::null())
                .output()?;
            if out.stdout == b"ok" {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "kube-apiserver not ready within {timeout:?} (last /readyz: {}):\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    self.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("SGPATH_KEEP_CONTROL_PLANE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "control plane kept in {}",
                self.dir.display()
            );
        }
    }
}

/// Standard base64 with padding (kubeconfig's `*-data` fields).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_as_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn binaries_are_keyed_by_release() {
        assert!(kube_apiserver_bin().ends_with(format!("kube-apiserver-{KUBERNETES}")));
        assert!(etcd_bin().ends_with(format!("etcd-{ETCD}")));
        assert_eq!(crd_files().len(), CRDS.len());
    }
}
