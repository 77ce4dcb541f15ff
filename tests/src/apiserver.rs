//! [`RealApi`]: a real kube-apiserver (and etcd) for the Kubernetes tests, built by `cargo
//! xtask setup` at the releases pinned in `xtask/src/control_plane.rs`, with the real CRDs
//! (SecurityGroupPolicy, PodMonitor, PrometheusRule) installed. Objects go in through
//! `kubectl` as the admin; pods are created with `spec.nodeName` set and their status
//! patched as a kubelet would (no kubelet runs). Unlike the fake in [`crate::kube`], the
//! server authenticates (static tokens for people, signed ServiceAccount tokens from
//! TokenRequest), authorizes with `Node,RBAC` and validates every object against its schema.
//!
//! Side effects: runs etcd and kube-apiserver on 127.0.0.1 in the given network namespace
//! (or the test's own), and `kubectl` against them; a temporary directory for certificates,
//! data, logs and kubeconfigs. Dropping it stops both and removes the directory.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xtask::control_plane::{ADMIN_TOKEN, ControlPlane, StaticUser};

/// A running control plane and the admin's kubeconfig.
pub struct RealApi {
    pub cp: ControlPlane,
    admin: PathBuf,
}

impl RealApi {
    /// Starts etcd and kube-apiserver in network namespace `netns` (or here) with `users` in
    /// the static token file, and installs the CRDs. Panics (naming `cargo xtask setup`)
    /// when they are not built.
    pub fn start(netns: Option<&str>, users: &[StaticUser]) -> RealApi {
        let t = Instant::now();
        let cp = ControlPlane::start(netns, users)
            .unwrap_or_else(|e| panic!("the real control plane did not start: {e:#}"));
        let admin = cp.dir.join("admin.kubeconfig");
        cp.write_kubeconfig(&admin, ADMIN_TOKEN, "default").unwrap();
        let api = RealApi { cp, admin };
        api.install_crds();
        eprintln!(
            "real kube-apiserver {} at {} ready with CRDs in {:.1} s",
            xtask::control_plane::KUBERNETES,
            api.cp.url(),
            t.elapsed().as_secs_f64()
        );
        api
    }

    /// The admin's kubeconfig (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// Writes a kubeconfig for bearer `token` under the control plane's directory.
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.cp.dir.join(format!("{name}.kubeconfig"));
        self.cp.write_kubeconfig(&path, token, "default").unwrap();
        path
    }

    /// `kubectl --kubeconfig <admin> args...` in the control plane's namespace, with `stdin`.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.cp.command("kubectl");
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        run_with_stdin(&mut cmd, stdin)
    }

    /// `kubectl` as the admin; panics with its stderr unless it succeeds; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    /// [`RealApi::kubectl`] with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_as(&self.admin, args, stdin);
        assert!(
            out.status.success(),
            "kubectl {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `obj` (a full object with `apiVersion` and `kind`) as the admin.
    pub fn create(&self, obj: &Value) {
        self.kubectl_stdin(&["create", "-f", "-"], Some(&obj.to_string()));
    }

    /// `kubectl get <args> -o json`.
    pub fn get(&self, args: &[&str]) -> Value {
        let out = self.kubectl(&[&["get"], args, &["-o", "json"]].concat());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get {args:?}: {e}: {out}"))
    }

    /// `GET path` as the admin, the body as text.
    pub fn get_raw(&self, path: &str) -> String {
        self.kubectl(&["get", "--raw", path])
    }

    /// Applies the CRD files and waits until each is `Established`.
    fn install_crds(&self) {
        for file in xtask::control_plane::crd_files() {
            let f = file.to_str().unwrap();
            self.kubectl(&["apply", "--server-side", "-f", f]);
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                f,
            ]);
        }
    }

    /// Creates namespace `ns` and its `default` ServiceAccount (no controller-manager runs
    /// to make it, and the ServiceAccount admission plugin refuses pods without it).
    pub fn namespace(&self, ns: &str) {
        if ns != "default" && ns != "kube-system" {
            self.create(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
        }
        self.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns}}));
    }

    /// Creates `pod` (with `spec.nodeName`) and patches its `status` (phase, podIP, podIPs,
    /// conditions) through the status subresource, as the kubelet on that node would.
    pub fn create_pod(&self, pod: &Value) {
        let mut spec_only = pod.clone();
        let status = spec_only
            .as_object_mut()
            .unwrap()
            .remove("status")
            .unwrap_or_else(|| json!({}));
        spec_only["apiVersion"] = json!("v1");
        spec_only["kind"] = json!("Pod");
        if let Some(m) = spec_only["metadata"].as_object_mut() {
            m.remove("uid");
        }
        self.create(&spec_only);
        self.patch_pod_status(
            spec_only["metadata"]["namespace"].as_str().unwrap(),
            spec_only["metadata"]["name"].as_str().unwrap(),
            status,
        );
    }

    /// Patches a pod's status as its kubelet would: `Running`, `Ready`, and `status`'s fields.
    pub fn patch_pod_status(&self, ns: &str, name: &str, status: Value) {
        let mut full = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "startTime": "2026-12-05T00:00:00Z"});
        for (k, v) in status.as_object().unwrap() {
            full[k] = v.clone();
        }
        let patch = json!({"status": full}).to_string();
        self.kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// A token of ServiceAccount `ns/name` (TokenRequest, as `kubectl create token`).
    pub fn token(&self, ns: &str, name: &str) -> String {
        self.kubectl(&["create", "token", name, "-n", ns, "--duration=1h"])
            .trim()
            .to_owned()
    }

    /// The value of the API server's own counter `name` with exactly these `labels` among
    /// its labels, summed over the other labels (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.get_raw("/metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// etcd's current revision (its v3 JSON gateway).
    pub fn etcd_revision(&self) -> u64 {
        let doc = self.etcd("/v3/kv/range", &json!({"key": "AA=="}));
        doc["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {doc}"))
    }

    /// Compacts etcd's history up to its current revision: a watch from an older
    /// resourceVersion is then `410 Gone`.
    pub fn compact_etcd(&self) -> u64 {
        let rev = self.etcd_revision();
        self.etcd(
            "/v3/kv/compaction",
            &json!({"revision": rev.to_string(), "physical": true}),
        );
        rev
    }

    /// Deletes key `/registry/<key>` straight from etcd, behind the API server's back (as
    /// another API server instance would have, while this one was down).
    pub fn etcd_delete(&self, key: &str) {
        let key = xtask::control_plane::base64(format!("/registry/{key}").as_bytes());
        let doc = self.etcd("/v3/kv/deleterange", &json!({"key": key}));
        assert_eq!(doc["deleted"], "1", "etcd deleted nothing for {key}: {doc}");
    }

    fn etcd(&self, path: &str, body: &Value) -> Value {
        let out = self
            .cp
            .command("curl")
            .args(["-s", "--max-time", "10", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:{}{path}", self.cp.etcd_port))
            .stdin(Stdio::null())
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("etcd {path}: {e}: {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Waits until `ok` holds for `kubectl get args -o json` (or panics after `limit`).
    pub fn wait_for(&self, args: &[&str], limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get(args);
            if ok(&v) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "kubectl get {args:?}: not within {limit:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn run_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (cargo xtask setup installs kubectl)"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}
