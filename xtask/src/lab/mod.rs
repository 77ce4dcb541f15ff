//! The EKS node lab: a node with security groups for pods, built from a [`Spec`] in
//! network namespaces exactly as the VPC CNI lays it out, inside a VPC namespace that
//! enforces security groups. The ground truth of sgpath's tests and its main job when no
//! real node is at hand.
//!
//! Side effects: [`Lab::up`] creates namespaces `<prefix>-*`, veths, VLANs, rules, routes,
//! an nftables ruleset in the VPC namespace, one `busybox httpd` per pod and, when the spec
//! has `[dns]`, dnsmasq on that pod and `/etc/netns/<ns>/resolv.conf` for the node and every
//! pod; dropping the [`Lab`] kills the servers and deletes the namespaces and those files.
//! [`Lab::run_step`] and [`Lab::observe_during`] (in `step.rs`, `observe.rs`) send traffic
//! and run `sgpath observe`; `replay.rs` prints what both saw.

pub mod aws;
pub mod build;
pub mod cni;
pub mod command;
pub mod dns;
pub mod names;
pub mod observe;
pub mod replay;
pub mod spec;
pub mod step;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use build::Layout;
pub use observe::Observed;
pub use spec::{Action, Fault, Host, Spec, Step};
pub use step::{Seen, StepOutcome};

/// A running lab. Dropping it tears everything down.
pub struct Lab {
    pub spec: Spec,
    pub layout: Layout,
    /// Scratch directory: the CNI config and the pods' web roots.
    pub dir: PathBuf,
    servers: Vec<Child>,
    /// The lab's EC2 and instance metadata, once [`Lab::start_aws`] ran.
    pub aws: Option<aws::FakeAws>,
    /// The fake ipamd and the runtime's memory of each sandbox, when the real VPC CNI
    /// plugin plumbed the pods.
    pub cni: Option<cni::Cni>,
}

/// Environment variable choosing who plumbs the pods of [`Lab::build`] and [`Lab::up`]: a
/// pinned VPC CNI release (`v1.23.2`, `v1.7.10`: the real plugin) or `lab` (the lab's own
/// script, kept as a fallback that `vm_plugin`'s equality test holds to the plugin's
/// result); unset is the current release ([`crate::cni_plugin::CURRENT`]).
pub const CNI_ENV: &str = "SGPATH_LAB_CNI";

/// Who plumbs a lab's pods: `None` for the lab's own script.
///
/// # Errors
/// When `choice` names a release that is not pinned.
pub fn cni_choice(choice: &str) -> Result<Option<crate::cni_plugin::Release>> {
    match choice {
        "lab" => Ok(None),
        "" => Ok(Some(crate::cni_plugin::CURRENT)),
        v => Ok(Some(crate::cni_plugin::Release::by_version(v)?)),
    }
}

/// The plumbing [`CNI_ENV`] asks for (see [`cni_choice`]).
///
/// # Errors
/// When it names a release that is not pinned.
pub fn cni_from_env() -> Result<Option<crate::cni_plugin::Release>> {
    cni_choice(&std::env::var(CNI_ENV).unwrap_or_default()).context(CNI_ENV)
}

/// The plumbing [`CNI_ENV`] asks for, for `spec`: a release without standard mode (v1.7)
/// cannot plumb a standard-mode branch pod, so such a spec gets the current release (said
/// on stderr) and everything else the one asked for.
///
/// # Errors
/// As [`cni_from_env`].
pub fn cni_for(spec: &Spec) -> Result<Option<crate::cni_plugin::Release>> {
    let asked = cni_from_env()?;
    Ok(asked.map(|r| {
        let standard = spec.pods.iter().any(|p| {
            p.kind == spec::PodKind::Branch
                && spec.mode_of(p) == spec::Mode::Standard
                && build::plugin_can_plumb(spec, p)
        });
        if standard && !r.standard_mode {
            eprintln!(
                "lab: VPC CNI {} has no standard mode; this spec's standard-mode pods are plumbed by {}",
                r.version,
                crate::cni_plugin::CURRENT.version
            );
            crate::cni_plugin::CURRENT
        } else {
            r
        }
    }))
}

impl Lab {
    /// Build the lab and start one HTTP server on port 80 per pod and the DNS server of
    /// `[dns]`; returns once every server listens.
    ///
    /// # Errors
    /// The failing command and its stderr; whatever was built is torn down.
    pub fn up(spec: Spec, prefix: &str) -> Result<Lab> {
        let cni = cni_for(&spec)?;
        Lab::up_with(spec, prefix, cni)
    }

    /// [`Lab::up`] with the pods plumbed by the VPC CNI plugin of `cni` (or the lab's own
    /// script for `None`).
    ///
    /// # Errors
    /// As [`Lab::up`].
    pub fn up_with(
        spec: Spec,
        prefix: &str,
        cni: Option<crate::cni_plugin::Release>,
    ) -> Result<Lab> {
        let mut lab = Lab::build_with(spec, prefix, cni)?;
        lab.start_servers()?;
        Ok(lab)
    }

    /// Build the lab without starting servers (for tests that only read the node).
    ///
    /// # Errors
    /// As [`Lab::up`].
    pub fn build(spec: Spec, prefix: &str) -> Result<Lab> {
        let cni = cni_for(&spec)?;
        Lab::build_with(spec, prefix, cni)
    }

    /// [`Lab::build`] with the pods plumbed by the VPC CNI plugin of `cni`: the lab's script
    /// builds the node, the VPC and the pods' namespaces, then the plugin is run for each pod
    /// in order ([`cni::Cni`]), then the faults are injected.
    ///
    /// # Errors
    /// As [`Lab::up`], and the plugin's error.
    pub fn build_with(
        spec: Spec,
        prefix: &str,
        cni: Option<crate::cni_plugin::Release>,
    ) -> Result<Lab> {
        let layout = Layout {
            prefix: prefix.to_string(),
        };
        let dir = std::env::temp_dir().join(format!("sgpath-lab-{prefix}"));
        let mut lab = Lab {
            spec,
            layout,
            dir,
            servers: Vec::new(),
            aws: None,
            cni: None,
        };
        lab.teardown();
        std::fs::create_dir_all(&lab.dir)
            .with_context(|| format!("creating {}", lab.dir.display()))?;
        std::fs::write(lab.cni_config(), build::conflist(&lab.spec))?;
        let by_plugin: Vec<bool> = lab
            .spec
            .pods
            .iter()
            .map(|p| cni.is_some() && build::plugin_can_plumb(&lab.spec, p))
            .collect();
        let script = build::script_with(&lab.spec, &lab.layout, |i| !by_plugin[i]);
        sh(&batched(&script)).context("building the lab")?;
        if let Some(release) = cni {
            let mut c = cni::Cni::start(&lab.spec, &lab.layout, &lab.dir, release)?;
            for i in (0..lab.spec.pods.len()).filter(|&i| by_plugin[i]) {
                c.add(&lab.spec, &lab.layout, i)?;
            }
            lab.cni = Some(c);
        }
        for f in lab.spec.faults.clone() {
            lab.inject(&f)?;
        }
        Ok(lab)
    }

    /// Delete pod `name` through the plugin and create it again under the same name in a
    /// fresh sandbox (a recreated StatefulSet pod): `CNI_COMMAND=DEL` with the runtime's
    /// prevResult, a new network namespace, `CNI_COMMAND=ADD`. The pod's servers are not
    /// restarted.
    ///
    /// # Errors
    /// When the lab's pods were not made by the plugin, or a step fails.
    pub fn recreate_pod(&mut self, name: &str) -> Result<()> {
        let i = self
            .spec
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let cni = self
            .cni
            .as_mut()
            .context("the lab's pods were not made by the VPC CNI plugin")?;
        cni.del(&self.spec, &self.layout, i)?;
        let ns = self.layout.pod(i);
        sh(&format!(
            "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns} && ip netns add {ns} && ip -n {ns} link set lo up"
        ))?;
        cni.add(&self.spec, &self.layout, i)?;
        Ok(())
    }

    /// Where the lab's CNI config is (pass it to `sgpath --cni-config`).
    pub fn cni_config(&self) -> PathBuf {
        self.dir.join("10-aws.conflist")
    }

    /// Inject a fault into the running lab.
    ///
    /// # Errors
    /// When the fault names something the lab lacks or its command fails.
    pub fn inject(&mut self, fault: &Fault) -> Result<()> {
        let script = build::fault_script(&self.spec, &self.layout, fault)?;
        sh(&script).with_context(|| format!("injecting {fault:?}"))
    }

    /// Create the spec's groups, rules and ENIs in moto's EC2 and serve instance metadata
    /// for the node ([`aws::FakeAws`]); from then on step edits go there too and
    /// [`Lab::sgpath`] points `trace` and `agent` at it (`--ec2`).
    ///
    /// # Errors
    /// As [`aws::FakeAws::start`].
    pub fn start_aws(&mut self) -> Result<()> {
        self.aws = Some(aws::FakeAws::start(&self.spec, Some(&self.layout.node()))?);
        Ok(())
    }

    /// `EC2_ENDPOINT` and `IMDS_ENDPOINT` for a shell in the lab, when it has its EC2.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        self.aws.as_ref().map_or_else(Vec::new, |a| {
            vec![
                ("EC2_ENDPOINT", a.ec2.clone()),
                ("IMDS_ENDPOINT", a.imds.clone()),
            ]
        })
    }

    /// Replace the VPC's security-group rules after `spec.security_groups` changed.
    ///
    /// # Errors
    /// When nft refuses the ruleset.
    pub fn apply_security_groups(&self) -> Result<()> {
        let vpc = self.layout.vpc();
        sh(&format!(
            "ip netns exec {vpc} nft -f - <<'NFT'\n{}NFT",
            build::nft_ruleset(&self.spec)
        ))
    }

    fn start_servers(&mut self) -> Result<()> {
        for (i, pod) in self.spec.pods.iter().enumerate() {
            let root = self.dir.join(format!("www{i}"));
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("index.html"), format!("{}\n", pod.name))?;
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.layout.pod(i),
                    "busybox",
                    "httpd",
                    "-f",
                    "-p",
                    "80",
                    "-h",
                ])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context(
                    "starting busybox httpd (is busybox installed? run `cargo xtask setup`)",
                )?;
            self.servers.push(child);
        }
        let mut waits: Vec<(String, u16, String)> = (0..self.spec.pods.len())
            .map(|i| {
                (
                    self.layout.pod(i),
                    80,
                    format!("httpd of pod {}", self.spec.pods[i].name),
                )
            })
            .collect();
        if let Some(w) = self.start_dns()? {
            waits.push(w);
        }
        // Wait for the sockets, not for a fixed time: process start is slow under TCG.
        for (ns, port, what) in waits {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !listening(&ns, port) {
                if Instant::now() > deadline {
                    bail!("{what} did not listen on :{port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Start dnsmasq on the `[dns]` pod and point the node's and every pod's resolver at it;
    /// returns the socket to wait for.
    fn start_dns(&mut self) -> Result<Option<(String, u16, String)>> {
        let (Some(dns), Some((i, pod))) = (self.spec.dns.clone(), self.spec.dns_pod()) else {
            return Ok(None);
        };
        let server = pod.ip;
        let mut namespaces: Vec<(String, &str)> = vec![(self.layout.node(), "kube-system")];
        namespaces.extend(
            self.spec
                .pods
                .iter()
                .enumerate()
                .map(|(k, p)| (self.layout.pod(k), p.namespace.as_str())),
        );
        for (ns, namespace) in namespaces {
            let etc = dns::netns_etc(&ns);
            std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
            std::fs::write(
                etc.join("resolv.conf"),
                dns::resolv_conf(&dns, namespace, server),
            )?;
        }
        let args = dns::dnsmasq_args(&self.spec, &dns, server, &self.dir.join("dnsmasq.pid"));
        let ns = self.layout.pod(i);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "dnsmasq"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (is dnsmasq-base installed? run `cargo xtask setup`)")?;
        self.servers.push(child);
        Ok(Some((ns, 53, format!("dnsmasq on pod {}", pod.name))))
    }

    /// HTTP GET `http://<pod ip>/` from the bastion, all pods at once; `true` for each pod
    /// that answered with its own name within `timeout`.
    pub fn get_from_bastion(&self, timeout: Duration) -> Vec<(String, bool)> {
        let bastion = self.layout.bastion();
        let children: Vec<_> = self
            .spec
            .pods
            .iter()
            .map(|p| {
                let child = Command::new("ip")
                    .args(["netns", "exec", &bastion, "curl", "-s", "--max-time"])
                    .arg(format!("{:.1}", timeout.as_secs_f64()))
                    .arg(format!("http://{}/", p.ip))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn();
                (p.name.clone(), child)
            })
            .collect();
        children
            .into_iter()
            .map(|(name, child)| {
                let ok = child
                    .and_then(|c| c.wait_with_output())
                    .map(|o| {
                        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == name
                    })
                    .unwrap_or(false);
                (name, ok)
            })
            .collect()
    }

    /// Run `sgpath` inside the node's namespace with the lab's CNI config.
    pub fn sgpath(&self, bin: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.layout.node()])
            .arg(bin)
            .args(args);
        if matches!(args.first(), Some(&"inspect" | &"trace" | &"observe"))
            && !args.contains(&"--cni-config")
        {
            cmd.arg("--cni-config").arg(self.cni_config());
        }
        if let Some(aws) = &self.aws
            && matches!(args.first(), Some(&"trace" | &"agent"))
            && !args.contains(&"--ec2")
        {
            cmd.args(aws.sgpath_args());
        }
        cmd.output().expect("running sgpath")
    }

    /// A pod's IP by name.
    pub fn pod_ip(&self, name: &str) -> Ipv4Addr {
        self.spec.pod(name).expect("pod exists").ip
    }

    fn teardown(&mut self) {
        self.aws = None;
        self.cni = None;
        for mut c in self.servers.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // One shell for all namespaces; killing a namespace's processes first lets it go at once.
        let script: String = self
            .layout
            .namespaces(&self.spec)
            .iter()
            .map(|ns| {
                format!(
                    "ip netns pids {ns} 2>/dev/null | xargs -r kill -9; ip netns del {ns} 2>/dev/null; rm -rf {}\n",
                    dns::netns_etc(ns).display()
                )
            })
            .collect();
        let _ = Command::new("bash").arg("-c").arg(script).status();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listening(ns: &str, port: u16) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("grep -q ':{port:04X} 0\\+:0000 0A' /proc/net/tcp /proc/net/tcp6"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Fold runs of consecutive `ip -n <ns> ...` lines into one `ip -n <ns> -batch -` each:
/// one process instead of dozens, which matters under TCG (~50 ms per exec).
pub fn batched(script: &str) -> String {
    let mut out = String::new();
    let mut run: Option<(String, Vec<String>)> = None;
    let flush = |out: &mut String, run: &mut Option<(String, Vec<String>)>| {
        if let Some((ns, cmds)) = run.take() {
            out.push_str(&format!(
                "ip -n {ns} -batch - <<'IPBATCH'\n{}\nIPBATCH\n",
                cmds.join("\n")
            ));
        }
    };
    for line in script.lines() {
        let mut words = line.splitn(4, ' ');
        if let (Some("ip"), Some("-n"), Some(ns), Some(rest)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match &mut run {
                Some((cur, cmds)) if cur == ns => cmds.push(rest.to_string()),
                _ => {
                    flush(&mut out, &mut run);
                    run = Some((ns.to_string(), vec![rest.to_string()]));
                }
            }
        } else {
            flush(&mut out, &mut run);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Run a script with bash; on failure the error holds the script's stderr.
///
/// # Errors
/// When bash cannot start or the script fails.
pub fn sh(script: &str) -> Result<()> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .context("running bash")?;
    if !out.status.success() {
        bail!(
            "script failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_consecutive_commands_of_one_namespace() {
        let s = "ip netns add a\nip -n a link set lo up\nip -n a addr add 1.2.3.4/32 dev lo\nip -n b link set lo up\n";
        assert_eq!(
            super::batched(s),
            "ip netns add a\nip -n a -batch - <<'IPBATCH'\nlink set lo up\naddr add 1.2.3.4/32 dev lo\nIPBATCH\nip -n b -batch - <<'IPBATCH'\nlink set lo up\nIPBATCH\n"
        );
    }
}
