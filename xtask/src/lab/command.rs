//! `cargo xtask lab`: boot a VM on a Debian kernel, build the lab in it and, with no
//! command, replay the spec's `[[steps]]` while `sgpath observe` watches the node (a spec
//! without steps: `sgpath inspect`); or run the given sgpath arguments or shell command in
//! the lab's node namespace.
//!
//! The host side ([`run`]) validates the spec and boots the VM; inside the VM, the same
//! xtask binary runs [`guest`] (`xtask lab-guest`), which builds the lab, runs the
//! command and tears the lab down.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{Lab, Spec};
use crate::{cmd, kernel, setup, vm};

/// Arguments of `cargo xtask lab`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lab description (TOML, see xtask/src/lab/spec.rs). Default: the seed scenario,
    /// xtask/labs/default.toml.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Kernel to boot: "5.10" (Amazon Linux 2), "6.1" or "6.12" (Amazon Linux 2023).
    #[arg(long, default_value = "6.12")]
    pub kernel: String,
    /// Run this shell command in the node's namespace instead of sgpath; `$SGPATH` names
    /// the sgpath binary, `$CNI_CONFIG` the lab's CNI config, `$EC2_ENDPOINT` and
    /// `$IMDS_ENDPOINT` the lab's EC2 (moto) and instance metadata.
    #[arg(long, conflicts_with = "sgpath_args")]
    pub shell: Option<String>,
    /// Who plumbs the pods: a pinned VPC CNI release (the real `routed-eni-cni-plugin`,
    /// against the lab's fake ipamd: "v1.23.2", "v1.7.10") or "lab" (the lab's own script,
    /// the fallback `vm_plugin` holds equal to the plugin).
    #[arg(long, default_value = crate::cni_plugin::CURRENT.version)]
    pub cni: String,
    /// Print the script that builds the lab and exit, without booting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// What to run in the node: sgpath arguments (`inspect ...`, `trace ...`), or any
    /// COMMAND (`ip rule`, `sgpath trace ...`), run with `sgpath` on PATH. Without one, the
    /// spec's steps are replayed under `sgpath observe` (`inspect` if it has none).
    #[arg(last = true)]
    pub sgpath_args: Vec<String>,
}

/// Arguments of the hidden `xtask lab-guest` (runs inside the VM).
#[derive(Debug, clap::Args)]
pub struct GuestArgs {
    #[arg(long)]
    pub spec: PathBuf,
    #[arg(long)]
    pub shell: Option<String>,
    #[arg(long)]
    pub cni: String,
    #[arg(last = true)]
    pub sgpath_args: Vec<String>,
}

/// First words that mean "these are sgpath's arguments".
const SGPATH_COMMANDS: [&str; 6] = ["inspect", "trace", "observe", "help", "--help", "--version"];

/// Host side of `cargo xtask lab`.
///
/// # Errors
/// A bad spec (named), a missing kernel, a VM that does not boot, or a nonzero exit of
/// the command in the lab.
pub fn run(args: Args) -> Result<()> {
    let text = match &args.spec {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading lab spec {}", p.display()))?,
        None => super::spec::DEFAULT_SPEC.to_string(),
    };
    let spec_name = args
        .spec
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "xtask/labs/default.toml".into());
    Spec::parse(&text).with_context(|| format!("lab spec {spec_name}"))?;
    let cni = super::cni_choice(&args.cni).context("--cni")?;
    if args.dry_run {
        let spec = Spec::parse(&text)?;
        // With the plugin, the script leaves the pods' plumbing to it.
        let plugin_plumbs =
            |i: usize| cni.is_some() && super::build::plugin_can_plumb(&spec, &spec.pods[i]);
        print!(
            "{}",
            super::build::script_with(
                &spec,
                &super::Layout {
                    prefix: "lab".into()
                },
                |i| !plugin_plumbs(i)
            )
        );
        if let Some(r) = cni {
            println!(
                "# then VPC CNI {} (routed-eni-cni-plugin) ADDs each pod",
                r.version
            );
        }
        return Ok(());
    }
    cmd::step("lab: setup", setup::ensure)?;
    // The same package set as `cargo xtask test` builds, so both share one set of artifacts.
    cmd::step("lab: build sgpath", || {
        cmd::run(cmd::cargo().args(["build", "--workspace", "--bins"]))
    })?;
    let kernel = kernel::get(&args.kernel)?;
    if kernel.arch() != crate::arch::Arch::NATIVE {
        bail!(
            "kernel {}: the lab runs this machine's own xtask in the guest, which cannot run on {}; \
             the arm64 VM tests run under `cargo xtask test --kernel {}`",
            kernel.short,
            kernel.arch(),
            kernel.short
        );
    }
    let xtask_bin = vm::shell_quote(&crate::target_dir().join("debug/xtask").to_string_lossy());
    let mut guest = format!(
        "{xtask_bin} lab-guest --spec \"$SGPATH_VM_DIR/spec.toml\" --cni {}",
        vm::shell_quote(&args.cni)
    );
    if let Some(shell) = &args.shell {
        guest.push_str(&format!(" --shell {}", vm::shell_quote(shell)));
    }
    if !args.sgpath_args.is_empty() {
        guest.push_str(" --");
        for a in &args.sgpath_args {
            guest.push(' ');
            guest.push_str(&vm::shell_quote(a));
        }
    }
    // The spec travels inside the script: the guest cannot see the host's /tmp.
    let script = format!(
        "cat > \"$SGPATH_VM_DIR/spec.toml\" <<'SGPATH_SPEC'\n{text}\nSGPATH_SPEC\n{guest}\n"
    );
    eprintln!(
        "lab: {spec_name} on kernel {} ({}), pods plumbed by {}, booting under TCG...",
        args.kernel,
        kernel.release,
        cni.map_or("the lab's script".into(), |r| format!(
            "VPC CNI {} (routed-eni-cni-plugin)",
            r.version
        ))
    );
    let opts = vm::VmOptions {
        binaries: std::iter::once(crate::sgpath_bin())
            .chain(cni.iter().flat_map(|r| [r.plugin(), r.fake_ipamd()]))
            .collect(),
        moto: true,
        ..Default::default()
    };
    let out = vm::run_with(&kernel, &script, &opts)?;
    print!("{}", out.output);
    eprintln!(
        "lab: exit {} after {:.1} s",
        out.status,
        out.wall.as_secs_f64()
    );
    if !out.success() {
        bail!(
            "the command in the lab exited {} (kernel {})",
            out.status,
            args.kernel
        );
    }
    Ok(())
}

/// Guest side: build the lab, replay its steps or run the command in the node namespace,
/// tear down.
///
/// # Errors
/// When the lab cannot be built, a step fails to run, or the command fails.
pub fn guest(args: GuestArgs) -> Result<()> {
    let spec = Spec::load(&args.spec)?;
    let mut lab = Lab::up_with(spec, "lab", super::cni_choice(&args.cni)?)?;
    eprintln!(
        "lab: node namespace {}, {} pods ({}), VPC {}, bastion {}",
        lab.layout.node(),
        lab.spec.pods.len(),
        lab.cni
            .as_ref()
            .map_or("plumbed by the lab's script".into(), |c| format!(
                "plumbed by VPC CNI {}",
                c.release.version
            )),
        lab.layout.vpc(),
        lab.layout.bastion()
    );
    // The groups in EC2 as well (moto), so that sgpath judges flows by their rules as on a
    // real node. Without it, everything else still runs.
    if let Err(e) = lab.start_aws() {
        eprintln!("lab: WARNING: no EC2 for sgpath, `trace` cannot read the groups' rules: {e:#}");
    }
    let sgpath = crate::sgpath_bin();
    if args.shell.is_none() && args.sgpath_args.is_empty() && !lab.spec.steps.is_empty() {
        eprintln!(
            "lab: replaying {} steps, each under `sgpath observe` in the node (stopped {} s after the step's traffic)",
            lab.spec.steps.len(),
            super::replay::SETTLE.as_secs()
        );
        lab.replay(&sgpath, &mut std::io::stdout())?;
        return Ok(());
    }
    let status = match &args.shell {
        Some(shell) => std::process::Command::new("ip")
            .args(["netns", "exec", &lab.layout.node(), "bash", "-c", shell])
            .env("SGPATH", &sgpath)
            .env("CNI_CONFIG", lab.cni_config())
            .envs(lab.aws_env())
            .status()?,
        // Any COMMAND that is not an sgpath subcommand runs as is, sgpath on its PATH.
        None if args
            .sgpath_args
            .first()
            .is_some_and(|a| !SGPATH_COMMANDS.contains(&a.as_str())) =>
        {
            let bin_dir = sgpath
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
            std::process::Command::new("ip")
                .args(["netns", "exec", &lab.layout.node()])
                .args(&args.sgpath_args)
                .env("PATH", path)
                .env("CNI_CONFIG", lab.cni_config())
                .envs(lab.aws_env())
                .status()?
        }
        None => {
            let argv: Vec<&str> = if args.sgpath_args.is_empty() {
                vec!["inspect"]
            } else {
                args.sgpath_args.iter().map(String::as_str).collect()
            };
            let out = lab.sgpath(&sgpath, &argv);
            print!("{}", String::from_utf8_lossy(&out.stdout));
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            out.status
        }
    };
    drop(lab);
    if !status.success() {
        bail!("command exited {status}");
    }
    Ok(())
}
