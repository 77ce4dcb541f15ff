//! The VPC CNI's conventions (names, tables) and the parts of its config sgpath reads.
//!
//! Facts from aws/amazon-vpc-cni-k8s: `vlan.eth.<id>` VLAN links (driver.go), table
//! `<vlan id> + 100` per branch ENI, `podSGEnforcingMode` and `vethPrefix` in
//! /etc/cni/net.d/10-aws.conflist.

use serde::Serialize;

/// Prefix of the VLAN sub-interface of a branch ENI: `vlan.eth.<vlan id>`.
pub const VLAN_LINK_PREFIX: &str = "vlan.eth.";
/// Prefix of a strict-mode branch pod's host veth: `vlan<11 hex>`.
pub const STRICT_VETH_PREFIX: &str = "vlan";
/// Default host veth prefix of ordinary and standard-mode pods (AWS_VPC_K8S_CNI_VETHPREFIX).
pub const DEFAULT_VETH_PREFIX: &str = "eni";
/// A branch ENI's route table is its VLAN id plus this.
pub const VLAN_TABLE_OFFSET: u32 = 100;
/// VLAN ids the resource controller hands out per trunk (1..=120).
pub const MAX_VLAN_ID: u16 = 120;

/// Route table of the branch ENI on VLAN `vlan_id`.
pub fn vlan_table(vlan_id: u16) -> u32 {
    u32::from(vlan_id) + VLAN_TABLE_OFFSET
}

/// The VLAN id a branch ENI table belongs to, if `table` is in the branch range 101..=220.
pub fn vlan_of_table(table: u32) -> Option<u16> {
    let id = table.checked_sub(VLAN_TABLE_OFFSET)?;
    (1..=u32::from(MAX_VLAN_ID))
        .contains(&id)
        .then_some(id as u16)
}

/// VLAN id encoded in a `vlan.eth.<id>` name.
pub fn vlan_id_from_name(name: &str) -> Option<u16> {
    name.strip_prefix(VLAN_LINK_PREFIX)?.parse().ok()
}

/// How branch pods' traffic is enforced (`POD_SECURITY_GROUP_ENFORCING_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcingMode {
    /// All branch pod traffic, even to the node, leaves through the VLAN and its security groups.
    Strict,
    /// Branch pod traffic to the node and to other pods on it stays on the node.
    Standard,
}

/// A `podSGEnforcingMode` that is neither `strict` nor `standard`.
#[derive(Debug, thiserror::Error)]
#[error("unknown podSGEnforcingMode {0:?} (expected strict or standard)")]
pub struct UnknownEnforcingMode(pub String);

impl EnforcingMode {
    /// As the CNI config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcingMode::Strict => "strict",
            EnforcingMode::Standard => "standard",
        }
    }
}

impl std::str::FromStr for EnforcingMode {
    type Err = UnknownEnforcingMode;
    fn from_str(s: &str) -> Result<Self, UnknownEnforcingMode> {
        match s {
            "strict" => Ok(Self::Strict),
            "standard" => Ok(Self::Standard),
            other => Err(UnknownEnforcingMode(other.to_string())),
        }
    }
}

/// What sgpath reads from the aws-cni plugin entry of the CNI config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CniConfig {
    /// Where it was read from.
    pub path: String,
    pub enforcing_mode: Option<EnforcingMode>,
    /// `vethPrefix`; `eni` when absent.
    pub veth_prefix: Option<String>,
    pub mtu: Option<u32>,
    /// The CNI plugins chained in the conflist, in order (`aws-cni`, `egress-cni`, `portmap`...).
    pub plugins: Vec<String>,
}

impl CniConfig {
    pub fn veth_prefix(cni: Option<&CniConfig>) -> &str {
        cni.and_then(|c| c.veth_prefix.as_deref())
            .unwrap_or(DEFAULT_VETH_PREFIX)
    }
}
