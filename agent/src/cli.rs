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
