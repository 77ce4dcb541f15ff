//! Boots one Debian kernel with virtme-ng under TCG (no KVM: KVM guests hang on these
//! machines) and runs a bash script inside; the host's root filesystem is shared read-only,
//! so binaries under `target/` run in the guest as they are.
//!
//! Console output of virtme-ng is unreliable, so the guest writes the script's output and
//! exit status into a shared read-write directory (`target/vm/<kernel>/<pid>-<n>/`) that the
//! host reads back. A run whose status file is missing is an error naming the kernel.
//!
//! The guest reads the host's root over 9p, which is slow for every exec, and 4x slower on
//! 5.10 (no page cache: ~0.6 s per `ip` exec under TCG, against ~0.15 s on 6.x). So each run
//! also gets a *fast disk*: an ext4 image (virtio-blk, read-only) holding copies of the
//! tools the tests exec ([`GUEST_TOOLS`]), the caller's binaries and every library they
//! load; the guest bind-mounts each copy over its original path, so nothing else changes.
//!
//! Side effects: creates that directory (and removes ones left by dead processes) and the
//! image in it (deleted after the run), runs `vng` (which runs qemu) in its own process
//! group, and kills that group on timeout.

use crate::{cmd, kernel::Kernel, setup};
use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Modules loaded in the guest before the script (failures ignored: some may be built in).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_net",
    "8021q",
    "veth",
    "dummy",
    "macvlan",
    "ipvlan",
    "vxlan",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "cls_matchall",
    "act_gact",
    "nf_tables",
    "nft_ct",
    "nft_chain_nat",
    "nf_conntrack",
];

/// Programs the tests and the lab exec many times; copied to the fast disk with their
/// libraries (looked up on PATH; absent ones are skipped).
pub const GUEST_TOOLS: &[&str] = &[
    "ip",
    "tc",
    "nft",
    "sysctl",
    "busybox",
    "curl",
    "nsenter",
    "setpriv",
    "sha1sum",
    "bash",
    "sh",
    "grep",
    "cat",
    "xargs",
    "kill",
    "sleep",
    "dnsmasq",
    // 50 MB each: read once over 9p they cost a 5.10 guest tens of seconds.
    "prometheus",
    "promtool",
];

/// Kernel arguments of every VM: [`GUEST_KERNEL_ARGS`], or `$SGPATH_VM_APPEND` (split on
/// whitespace) when set, to measure another choice.
pub fn kernel_args() -> Vec<String> {
    match std::env::var("SGPATH_VM_APPEND") {
        Ok(v) => v.split_whitespace().map(String::from).collect(),
        Err(_) => GUEST_KERNEL_ARGS.iter().map(|a| a.to_string()).collect(),
    }
}

/// Kernel arguments of the test VMs. `init_on_alloc=0`: Debian's kernels zero every page
/// they hand out (`CONFIG_INIT_ON_ALLOC_DEFAULT_ON`), a hardening default that changes no
/// routing, netfilter or BPF behaviour; under TCG 5.10's zeroing made each exec 3.6x
/// slower (50 `/bin/true`: 3.6 s against 1.0 s; 6.1 1.24 s against 0.99 s, 6.12 the same),
/// and the 5.10 stage took 723 s against 270 s with it off.
pub const GUEST_KERNEL_ARGS: &[&str] = &["init_on_alloc=0"];

/// How to boot the VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Kill the VM after this long (boot included).
    pub timeout: Duration,
    /// Guest memory, in qemu's syntax (e.g. "1G").
    pub memory: String,
    /// Guest CPU count.
    pub cpus: u32,
    /// Environment variables exported to the script (names must be shell identifiers).
    pub env: Vec<(String, String)>,
    /// Pass `--verbose` to vng, so the kernel log lands in `console.log`.
    pub verbose: bool,
    /// Host binaries the script runs (sgpath, test binaries): copied to the fast disk too.
    pub binaries: Vec<PathBuf>,
    /// Extra kernel command-line arguments (`vng --append`).
    pub append: Vec<String>,
    /// Give the guest moto's EC2 server, run on the host ([`crate::lab::aws::Moto`]): at
    /// `$SGPATH_MOTO`, through a NIC that reaches nothing else.
    pub moto: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            timeout: Duration::from_secs(600),
            memory: "1G".into(),
            cpus: 2,
            env: Vec::new(),
            verbose: false,
            binaries: Vec::new(),
            moto: false,
            append: kernel_args(),
        }
    }
}

/// What came back from one VM run.
#[derive(Debug, Clone)]
pub struct VmOutput {
    /// Short kernel name, e.g. "6.1".
    pub kernel: String,
    /// `uname -r` as seen in the guest.
    pub release: String,
    /// Exit status of the script.
    pub status: i32,
    /// The script's stdout and stderr, interleaved.
    pub output: String,
    /// The shared directory; the script sees it as `$SGPATH_VM_DIR` and may leave files there.
    pub rwdir: PathBuf,
    /// Host wall time from starting vng to its exit.
    pub wall: Duration,
    /// Guest uptime when the script started (boot time as the guest saw it).
    pub boot: Option<Duration>,
    /// Guest time the script took (module loading and mounts included).
    pub script: Option<Duration>,
    /// Guest time spent preparing (modules, mounts, the fast disk's binds) before the script.
    pub prepare: Option<Duration>,
    /// Share of the guest's CPU time that was busy while the script ran, in percent: TCG
    /// makes busy guest CPUs the cost; idle ones are the script's own waits.
    pub guest_cpu: Option<f64>,
}

impl VmOutput {
    /// True if the script exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Fails with the script's output if it exited nonzero.
    pub fn check(&self) -> Result<&Self> {
        if !self.success() {
            bail!(
                "kernel {} ({}): script exited {}; output:\n{}",
                self.kernel,
                self.release,
                self.status,
                self.output
            );
        }
        Ok(self)
    }
}

/// Boots `kernel` and runs `script` (bash) inside with default [`VmOptions`].
pub fn run(kernel: &Kernel, script: &str) -> Result<VmOutput> {
    run_with(kernel, script, &VmOptions::default())
}

/// Boots `kernel` and runs `script` (bash, cwd = workspace root, as root) inside.
///
/// Returns `Ok` whenever the script ran to completion, whatever its exit status (see
/// [`VmOutput::check`]); errors if the VM could not start, timed out, or never wrote the
/// script's status (kernel did not boot, script never ran).
pub fn run_with(kernel: &Kernel, script: &str, opts: &VmOptions) -> Result<VmOutput> {
    kernel.check()?;
    let vng = setup::vng_path().context("virtme-ng (vng) not found: run `cargo xtask setup`")?;
    let dir = fresh_dir(&kernel.short)?;
    std::fs::write(dir.join("script.sh"), script)?;
    let image = dir.join("fast.img");
    fast_disk(&image, &opts.binaries)?;
    std::fs::write(dir.join("wrapper.sh"), wrapper(kernel, &dir, opts))?;
    let console_path = dir.join("console.log");
    let console = std::fs::File::create(&console_path)?;

    let mut vng_cmd = Command::new(&vng);
    vng_cmd
        .arg("--run")
        .arg(&kernel.vmlinuz)
        .args(["--disable-kvm", "--user", "root"])
        .args(["--memory", &opts.memory])
        .args(["--cpus", &opts.cpus.to_string()])
        .args(
            guest_rwdirs(&dir)
                .iter()
                .map(|d| format!("--rwdir={}", d.display())),
        )
        .arg("--disk")
        .arg(&image)
        .args([
            "--exec",
            &format!("bash {}", dir.join("wrapper.sh").display()),
        ]);
    for a in &opts.append {
        vng_cmd.arg(format!("--append={a}"));
    }
    // Lives as long as the VM.
    let moto = if opts.moto {
        let m = crate::lab::aws::Moto::start().context("moto for the VM")?;
        vng_cmd.arg(format!("--qemu-opts={}", m.qemu_opts()));
        Some(m)
    } else {
        None
    };
    if opts.verbose {
        vng_cmd.arg("--verbose");
    }
    vng_cmd
        .current_dir(crate::workspace_root())
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .process_group(0);
    let line = cmd::display(&vng_cmd);
    eprintln!("vm {}: + {line}", kernel.short);

    let start = Instant::now();
    let mut child = vng_cmd
        .spawn()
        .with_context(|| format!("kernel {}: cannot start `{line}`", kernel.short))?;
    let Some(exit) = wait_or_kill(&mut child, opts.timeout)? else {
        bail!(
            "kernel {} ({}): VM TIMED OUT after {} s\n{}",
            kernel.short,
            kernel.release,
            opts.timeout.as_secs(),
            console_tail(&console_path)
        );
    };
    let wall = start.elapsed();
    drop(moto);
    let _ = std::fs::remove_file(&image);

    if !dir.join("status").is_file() {
        bail!(
            "kernel {} ({}): VM DID NOT RUN THE SCRIPT: no status file in {} (vng exited {exit} \
             after {:.1} s; did the kernel boot?)\n{}",
            kernel.short,
            kernel.release,
            dir.display(),
            wall.as_secs_f64(),
            console_tail(&console_path)
        );
    }
    collect(kernel, &dir, wall)
}

/// Reads back what the guest wrote into the shared directory `dir` (status, output, release,
/// timings) after a run that took `wall`.
///
/// # Errors
/// No or a malformed status file.
pub fn collect(kernel: &Kernel, dir: &Path, wall: Duration) -> Result<VmOutput> {
    let status = std::fs::read_to_string(dir.join("status")).with_context(|| {
        format!(
            "kernel {}: no status file in {}",
            kernel.short,
            dir.display()
        )
    })?;
    let status: i32 = status
        .trim()
        .parse()
        .with_context(|| format!("bad status file in {}", dir.display()))?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let uptime = |name: &str| {
        read(name)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
    };
    let (boot, end) = (uptime("uptime-start"), uptime("uptime-end"));
    let prepared = uptime("uptime-prepared");
    let guest_cpu = busy_share(&read("stat-start"), &read("stat-end"));
    Ok(VmOutput {
        kernel: kernel.short.clone(),
        release: read("release").trim().to_owned(),
        status,
        output: read("output"),
        rwdir: dir.to_path_buf(),
        wall,
        boot: boot.map(Duration::from_secs_f64),
        script: boot
            .zip(end)
            .map(|(b, e)| Duration::from_secs_f64((e - b).max(0.0))),
        prepare: boot
            .zip(prepared)
            .map(|(b, p)| Duration::from_secs_f64((p - b).max(0.0))),
        guest_cpu,
    })
}

/// Busy share, in percent, between two `cpu` lines of /proc/stat (idle and iowait are idle).
pub fn busy_share(start: &str, end: &str) -> Option<f64> {
    let jiffies = |line: &str| -> Option<(u64, u64)> {
        let nums: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        let idle = nums.get(3)? + nums.get(4).copied().unwrap_or(0);
        let total: u64 = nums.iter().sum();
        Some((total - idle, total))
    };
    let ((b0, t0), (b1, t1)) = (jiffies(start)?, jiffies(end)?);
    (t1 > t0).then(|| 100.0 * b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
}

/// `target/vm/<short>/`.
pub fn vm_dir(short: &str) -> PathBuf {
    crate::target_dir().join("vm").join(short)
}

/// Creates an empty `target/vm/<short>/<pid>-<n>/`, removing siblings of dead processes.
pub fn fresh_dir(short: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = vm_dir(short);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    for entry in std::fs::read_dir(&base)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The script vng executes: prepares the guest, runs `script.sh`, records status and timings.
fn wrapper(kernel: &Kernel, dir: &Path, opts: &VmOptions) -> String {
    let d = shell_quote(&dir.to_string_lossy());
    let root = shell_quote(&crate::workspace_root().to_string_lossy());
    let mut env = format!(
        "export SGPATH_VM_DIR={d} SGPATH_KERNEL={}\n",
        shell_quote(&kernel.short)
    );
    for (k, v) in &opts.env {
        env.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    if opts.moto {
        // The NIC of qemu's restricted user network: its only peer is moto's forward.
        env.push_str(&format!(
            "for i in $(seq 50); do ls /sys/class/net/*/device >/dev/null 2>&1 && break; sleep 0.1; done\n\
             for n in /sys/class/net/*; do [ -e \"$n/device\" ] || continue; \
             ip addr add 10.0.2.15/24 dev \"${{n##*/}}\" && ip link set \"${{n##*/}}\" up; done\n\
             export {}=http://{}\n",
            crate::lab::aws::MOTO_ENV,
            crate::lab::aws::GUEST_MOTO
        ));
    }
    let modules = GUEST_MODULES.join(" ");
    format!(
        r#"# Generated by xtask vm: guest side of one run.
D={d}
cat /proc/uptime > "$D/uptime-start"
uname -r > "$D/release"
{{
  # One modprobe for all (each exec and modules.dep read is slow over 5.10's 9p).
  modprobe -a {modules} ||
    for m in {modules}; do modprobe "$m" || echo "modprobe $m failed (builtin or absent)"; done
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
  mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
  # The fast disk: copies of hot binaries and libraries, bind-mounted over the originals.
  modprobe -a virtio_blk ext4
  for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
  F=/tmp/sgpath-fast; mkdir -p $F
  if mount -o ro /dev/vda $F; then
    # The binds by the static busybox on the fast disk: util-linux's mount, exec'd over
    # 9p once per bind, took a second each on 5.10 (73 binds: 78 s).
    # (busybox picks its applet by argv[0]: the link's name must start with "busybox").
    M=mount
    while read -r f p; do
      case $p in */busybox) ln -sf "$F/$f" /tmp/busybox-fast && M="/tmp/busybox-fast mount";; esac
    done < $F/binds
    while read -r f p; do $M -o bind "$F/$f" "$p" || echo "bind $p failed"; done < $F/binds
  else
    echo "fast disk not mounted: execs read over 9p"
  fi
  echo "prepared in $(cut -d' ' -f1 /proc/uptime) s of uptime"
}} > "$D/prepare.log" 2>&1
cat /proc/uptime > "$D/uptime-prepared"
{env}cd {root}
head -1 /proc/stat > "$D/stat-start"
bash "$D/script.sh" > "$D/output" 2>&1 < /dev/null
echo $? > "$D/status.tmp"
head -1 /proc/stat > "$D/stat-end"
cat /proc/uptime > "$D/uptime-end"
mv "$D/status.tmp" "$D/status"
sync
"#
    )
}

/// Builds the fast disk at `image`: [`GUEST_TOOLS`] found on PATH, `binaries`, and every
/// library `ldd` names for them (the dynamic loader included), stored as `f<n>`, with a
/// `binds` file of `f<n> <original path>` lines.
fn fast_disk(image: &Path, binaries: &[PathBuf]) -> Result<()> {
    let mut files: Vec<PathBuf> = GUEST_TOOLS.iter().filter_map(cmd::which).collect();
    files.extend(binaries.iter().cloned());
    let mut all: Vec<PathBuf> = Vec::new();
    for f in &files {
        let Ok(real) = f.canonicalize() else { continue };
        if let Ok(out) = Command::new("ldd").arg(&real).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
                // "/lib64/ld-linux-x86-64.so.2 (0x...)".
                let path = line
                    .split("=>")
                    .last()
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|p| p.starts_with('/'));
                if let Some(lib) = path.and_then(|p| Path::new(p).canonicalize().ok()) {
                    all.push(lib);
                }
            }
        }
        all.push(real);
    }
    all.sort();
    all.dedup();
    let staging = image.with_extension("d");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let mut binds = String::new();
    let mut bytes = 0u64;
    for (i, path) in all.iter().enumerate() {
        let name = format!("f{i}");
        // A hard link costs nothing when staging and source share a filesystem.
        if std::fs::hard_link(path, staging.join(&name)).is_err() {
            std::fs::copy(path, staging.join(&name))
                .with_context(|| format!("cannot copy {} to the fast disk", path.display()))?;
        }
        bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        binds.push_str(&format!("{name} {}\n", path.display()));
    }
    std::fs::write(staging.join("binds"), binds)?;
    let size_mib = bytes / (1 << 20) * 5 / 4 + 32;
    let _ = std::fs::remove_file(image);
    cmd::run(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-m", "0", "-d"])
            .arg(&staging)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )?;
    std::fs::remove_dir_all(&staging)?;
    Ok(())
}

/// Quotes `s` for bash (single quotes unless it is plainly safe).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Waits for a VM's process (started with `process_group(0)`) to exit; past `timeout`,
/// kills its whole process group (vng runs qemu as a child in it) and gives `None`.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) on the process group created for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Last lines of the console log, for error messages.
pub fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("--- last lines of {} ---\n{tail}", path.display())
}

/// The directories to share read-write with the guest: the run directory, plus the whole
/// checkout when the guest could not otherwise see it. virtme-ng mounts fresh tmpfs over
/// /tmp, /var/tmp, /var/cache, /var/log, /var/lib and /run, so a CI clone in /tmp would be
/// invisible. A run directory nested in a `--rodir` makes vng exit 255, so a run directory
/// inside such a checkout (a `CARGO_TARGET_DIR` in the clone) is shared through it.
fn guest_rwdirs(run_dir: &Path) -> Vec<PathBuf> {
    const MASKED: [&str; 6] = [
        "/tmp",
        "/var/tmp",
        "/var/cache",
        "/var/log",
        "/var/lib",
        "/run",
    ];
    let root = crate::workspace_root();
    if !MASKED.iter().any(|m| root.starts_with(m)) {
        return vec![run_dir.to_path_buf()];
    }
    if run_dir.starts_with(&root) {
        vec![root]
    } else {
        vec![root, run_dir.to_path_buf()]
    }
}
