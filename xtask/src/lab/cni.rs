//! The container runtime's side of the lab: the real VPC CNI plugin
//! (`routed-eni-cni-plugin`, [`crate::cni_plugin`]) plumbs the lab's pods, asked exactly as
//! containerd asks it, and a fake ipamd answers its gRPC with the lab's assignments.
//!
//! The split is the one of a real node: ipamd and AWS (the lab's script) make the ENIs, the
//! trunk, the secondary ENIs' tables and rules, the node's sysctls and SNAT; the plugin makes
//! each pod's veth, addresses, VLAN link (for a branch pod), rules and routes.
//!
//! Side effects: [`Cni::start`] writes `assignments.json` into the lab's directory and starts
//! `fake-ipamd` in the node's namespace (TCP 127.0.0.1:50051, what v1.7 dials, and
//! `<dir>/aws-node/ipamd.sock`); [`Cni::add`] and [`Cni::del`] run the plugin in the node's
//! namespace with that directory bind-mounted on `/run/aws-node` (newer plugins dial
//! `/var/run/aws-node/ipamd.sock`; the bind lives only in the plugin's mount namespace).
//! The plugin logs to `<dir>/plugin.log`, the fake ipamd's requests go to `<dir>/ipamd.log`.
//! Dropping the [`Cni`] stops the fake ipamd.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    Layout,
    build::{self, branch_eni_mac},
    spec::{Mode, Pod, PodKind, Spec},
};
use crate::cni_plugin::Release;

/// The running fake ipamd and what the runtime remembers of each pod's sandbox.
pub struct Cni {
    pub release: Release,
    dir: PathBuf,
    ipamd: Child,
    /// Pod name -> (sandbox generation, the ADD's result: the runtime's cached prevResult).
    sandboxes: HashMap<String, (u32, Value)>,
}

/// The fake ipamd's assignments for the lab (see `xtask/go/fake-ipamd/main.go`): a branch
/// pod's VLAN, ENI MAC, subnet gateway and the trunk's ifindex; an ordinary pod's device
/// number and route table.
pub fn assignments(spec: &Spec, trunk_ifindex: Option<u32>) -> Value {
    let gw = spec.vpc.gateway();
    let pods: Vec<Value> = spec
        .pods
        .iter()
        .map(|p| match (p.kind, p.vlan) {
            (PodKind::Branch, Some(vlan)) => json!({
                "namespace": p.namespace, "name": p.name, "ip": p.ip.to_string(),
                "vlan": vlan, "eni_mac": branch_eni_mac(vlan), "subnet_gw": gw.to_string(),
                "parent_ifindex": trunk_ifindex.unwrap_or(0),
            }),
            _ => {
                let (device, table) = spec
                    .eni_of(p)
                    .map_or((0, 1), |e| (e.device_index, e.table()));
                json!({
                    "namespace": p.namespace, "name": p.name, "ip": p.ip.to_string(),
                    "device_number": device, "route_table": table,
                })
            }
        })
        .collect();
    json!({ "vpc_cidrs": [spec.vpc.cidr.to_string()], "pods": pods })
}

/// The network configuration the runtime hands the plugin on stdin: the conflist's first
/// plugin with the list's `name` and `cniVersion`, the pod's enforcing mode (a node whose
/// mode changed between two pods' creations, as the mixed lab has), the log in the lab's
/// directory, and on DEL the ADD's result as `prevResult`.
pub fn netconf(spec: &Spec, pod: &Pod, log: &Path, prev: Option<&Value>) -> Value {
    let list: Value = serde_json::from_str(&build::conflist(spec)).expect("the lab's conflist");
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["podSGEnforcingMode"] = json!(spec.mode_of(pod).as_str());
    conf["pluginLogFile"] = json!(log.to_string_lossy());
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// The sandbox id containerd would give the pod's `generation`-th sandbox (64 hex digits).
pub fn container_id(prefix: &str, pod: &Pod, generation: u32) -> String {
    let key = format!("{prefix}/{}/{}/{generation}", pod.namespace, pod.name);
    let a = sha1_smol::Sha1::from(&key).digest().to_string();
    let b = sha1_smol::Sha1::from(format!("{key}/2"))
        .digest()
        .to_string();
    format!("{a}{}", &b[..24])
}

/// The CNI environment of one call, as containerd sets it.
pub fn env(
    command: &str,
    id: &str,
    netns: &str,
    pod: &Pod,
    cni_path: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={}",
                pod.namespace,
                pod.name,
                &id[..36]
            ),
        ),
        ("CNI_PATH", cni_path.to_string_lossy().into_owned()),
    ]
}

impl Cni {
    /// Write the assignments (reading the trunk's ifindex in the node) and start the fake
    /// ipamd of `release`; returns once it listens.
    ///
    /// # Errors
    /// When the release is not built (`cargo xtask setup`), a standard-mode branch pod meets
    /// a release without standard mode, or the fake ipamd does not come up.
    pub fn start(spec: &Spec, l: &Layout, dir: &Path, release: Release) -> Result<Cni> {
        if !release.is_built() {
            bail!(
                "VPC CNI {} is not built: run `cargo xtask setup`",
                release.version
            );
        }
        if !release.standard_mode
            && let Some(p) = spec.pods.iter().find(|p| {
                p.kind == PodKind::Branch
                    && spec.mode_of(p) == Mode::Standard
                    && build::plugin_can_plumb(spec, p)
            })
        {
            bail!(
                "pod {} is a standard-mode branch pod; VPC CNI {} has strict mode only",
                p.name,
                release.version
            );
        }
        let trunk_ifindex = match &spec.node.trunk {
            Some(t) => Some(ifindex(&l.node(), t)?),
            None => None,
        };
        let sockdir = dir.join("aws-node");
        std::fs::create_dir_all(&sockdir)?;
        let file = dir.join("assignments.json");
        std::fs::write(&file, assignments(spec, trunk_ifindex).to_string())?;
        let mut ipamd = Command::new("ip")
            .args(["netns", "exec", &l.node()])
            .arg(release.fake_ipamd())
            .arg("-assignments")
            .arg(&file)
            .arg("-socket")
            .arg(sockdir.join("ipamd.sock"))
            .arg("-log")
            .arg(dir.join("ipamd.log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the fake ipamd")?;
        let mut line = String::new();
        BufReader::new(ipamd.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the fake ipamd's ready line")?;
        if line.trim() != "ready" {
            let _ = ipamd.kill();
            let out = ipamd.wait_with_output()?;
            bail!(
                "the fake ipamd did not come up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Cni {
            release,
            dir: dir.to_path_buf(),
            ipamd,
            sandboxes: HashMap::new(),
        })
    }

    /// `CNI_COMMAND=ADD` for pod `i` into its namespace; returns the plugin's result.
    ///
    /// # Errors
    /// The plugin's error (its stdout is the CNI error JSON) and the tail of its log.
    pub fn add(&mut self, spec: &Spec, l: &Layout, i: usize) -> Result<Value> {
        let pod = &spec.pods[i];
        let generation = self.sandboxes.get(&pod.name).map_or(0, |s| s.0 + 1);
        let id = container_id(&l.prefix, pod, generation);
        let conf = netconf(spec, pod, &self.dir.join("plugin.log"), None);
        let out = self.call("ADD", &id, &l.pod(i), pod, &l.node(), &conf)?;
        let result: Value = serde_json::from_str(&out)
            .with_context(|| format!("the plugin's ADD result for {}: {out}", pod.name))?;
        self.sandboxes
            .insert(pod.name.clone(), (generation, result.clone()));
        Ok(result)
    }

    /// `CNI_COMMAND=DEL` for pod `i`'s current sandbox, with the ADD's result as prevResult.
    ///
    /// # Errors
    /// When the pod has no sandbox here or the plugin fails.
    pub fn del(&mut self, spec: &Spec, l: &Layout, i: usize) -> Result<()> {
        let pod = &spec.pods[i];
        let (generation, prev) = self
            .sandboxes
            .get(&pod.name)
            .cloned()
            .with_context(|| format!("pod {} has no sandbox to delete", pod.name))?;
        let id = container_id(&l.prefix, pod, generation);
        let conf = netconf(spec, pod, &self.dir.join("plugin.log"), Some(&prev));
        self.call("DEL", &id, &l.pod(i), pod, &l.node(), &conf)?;
        Ok(())
    }

    fn call(
        &self,
        command: &str,
        id: &str,
        netns: &str,
        pod: &Pod,
        node: &str,
        conf: &Value,
    ) -> Result<String> {
        let plugin = self.release.plugin();
        let sockdir = self.dir.join("aws-node");
        // `ip netns exec` runs the command in a mount namespace of its own: the bind of the
        // lab's socket directory over /run/aws-node is seen by this plugin call only.
        let script = format!(
            "mkdir -p /run/aws-node && mount --bind {} /run/aws-node && exec {}",
            crate::vm::shell_quote(&sockdir.to_string_lossy()),
            crate::vm::shell_quote(&plugin.to_string_lossy())
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", node, "sh", "-c", &script])
            .envs(env(
                command,
                id,
                &format!("/var/run/netns/{netns}"),
                pod,
                &self.release.bin_dir(),
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the VPC CNI plugin")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("plugin.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "VPC CNI {} {command} of pod {} failed ({}): {stdout}{}\nplugin log (last lines, newest first):\n{}",
                self.release.version,
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            );
        }
        Ok(stdout)
    }
}

impl Drop for Cni {
    fn drop(&mut self) {
        let _ = self.ipamd.kill();
        let _ = self.ipamd.wait();
    }
}

/// A link's ifindex inside a namespace (`ip -n <ns> -o link show <dev>`).
fn ifindex(ns: &str, dev: &str) -> Result<u32> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", dev])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no ifindex for {dev} in {ns}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_pods_get_vlan_mac_gateway_and_trunk_ifindex() {
        let spec = Spec::default_lab();
        let a = assignments(&spec, Some(7));
        let first = &a["pods"][0];
        assert_eq!(first["vlan"], 1);
        assert_eq!(first["eni_mac"], "0a:b7:00:00:00:01");
        assert_eq!(first["subnet_gw"], "192.168.0.1");
        assert_eq!(first["parent_ifindex"], 7);
        let ordinary = &a["pods"][4];
        assert_eq!(ordinary["route_table"], 1);
        assert!(ordinary.get("vlan").is_none());
        assert_eq!(a["vpc_cidrs"][0], "192.168.0.0/16");
    }

    #[test]
    fn netconf_is_the_conflists_first_plugin_with_name_version_and_mode() {
        let mut spec = Spec::default_lab();
        spec.pods[0].mode = Some(Mode::Standard);
        let prev = json!({"cniVersion": "0.4.0"});
        let c = netconf(
            &spec,
            &spec.pods[0],
            Path::new("/x/plugin.log"),
            Some(&prev),
        );
        assert_eq!(c["type"], "aws-cni");
        assert_eq!(c["name"], "aws-cni");
        assert_eq!(c["cniVersion"], "0.4.0");
        assert_eq!(c["vethPrefix"], "eni");
        assert_eq!(c["podSGEnforcingMode"], "standard");
        assert_eq!(c["pluginLogFile"], "/x/plugin.log");
        assert_eq!(c["prevResult"], prev);
        let strict = netconf(&spec, &spec.pods[1], Path::new("/x"), None);
        assert_eq!(strict["podSGEnforcingMode"], "strict");
        assert!(strict.get("prevResult").is_none());
    }

    #[test]
    fn each_sandbox_gets_its_own_64_hex_id_and_k8s_args() {
        let spec = Spec::default_lab();
        let p = &spec.pods[0];
        let (a, b) = (container_id("t", p, 0), container_id("t", p, 1));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let e = env("ADD", &a, "/var/run/netns/t-pod0", p, Path::new("/bin"));
        let args = &e.iter().find(|(k, _)| *k == "CNI_ARGS").unwrap().1;
        assert!(args.starts_with("IgnoreUnknown=1;K8S_POD_NAMESPACE=sg-test;K8S_POD_NAME=my-deployment-5b7f8c9d6-2xk4p;K8S_POD_INFRA_CONTAINER_ID="), "{args}");
        assert!(e.contains(&("CNI_IFNAME", "eth0".into())));
    }
}
