//! Command-line interface (clap types only): `--help` is the manual.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Diagnose EKS security groups for pods on this node: branch ENIs, VLANs, policy
/// routing, sysctls, and where pod traffic dies.
#[derive(Debug, Parser)]
#[command(name = "sgpath", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a one-shot snapshot of the node's security-group topology and check it.
    ///
    /// Exit status: 0 no warning or error, 1 findings of severity warning or error,
    /// 2 sgpath could not do its job (bad flag, node unreadable).
    Inspect(InspectArgs),
    /// Ask the kernel which rule, table, route and interface a pod's packet takes, which
    /// security groups decide it, and whether the answer comes back the same way.
    ///
    /// Example: `sgpath trace --from 192.168.3.219 --to 169.254.20.10:53 --proto udp`.
    /// Exit status: 0 the flow works as far as the node can tell, 1 it does not, 2 error.
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The pod: its IP, or its host veth (`vlan<hash>`, `eni<hash>`).
    #[arg(long)]
    pub from: String,
    /// Destination: `<ip>` or `<ip>:<port>` (`[<ipv6>]:<port>`).
    #[arg(long)]
    pub to: String,
    /// Transport protocol (selects rules with `ipproto` and `dport`).
    #[arg(long, value_enum, default_value_t = TraceProto::Tcp)]
    pub proto: TraceProto,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The VPC CNI config to read.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TraceProto {
    Tcp,
    Udp,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The VPC CNI config to read (podSGEnforcingMode, vethPrefix, mtu). A missing file is normal.
    #[arg(long, default_value = "/etc/cni/net.d/10-aws.conflist")]
    pub cni_config: PathBuf,
    /// Where to read sysctls from (the node's /proc/sys).
    #[arg(long, default_value = "/proc/sys", hide = true)]
    pub proc_sys: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for a terminal.
    Text,
    /// One JSON document (schema sgpath.report/v1).
    Json,
}
