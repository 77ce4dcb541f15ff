//! The lab description: a TOML file naming the node's ENIs, the pods, the VPC around the
//! node, the security groups and the faults to inject. Parsing and validation only.
//!
//! ```toml
//! [vpc]
//! cidr = "192.168.0.0/16"        # node and pod subnet; its gateway is the base + 1
//! bastion = "10.0.1.10/24"       # a host in another subnet of the VPC
//!
//! [node]
//! primary_ip = "192.168.1.10"    # eth0, the primary ENI
//! trunk = "eth1"                 # omit for a node without trunk (no 802.1Q needed)
//! enforcing_mode = "strict"      # podSGEnforcingMode written to the CNI config
//! disable_tcp_early_demux = true # DISABLE_TCP_EARLY_DEMUX on aws-node's init container
//! security_groups = ["sg-node"]
//! secondary_enis = [{ name = "eth2", ip = "192.168.2.20", device_index = 2 }]  # table 3
//!
//! [[security_groups]]
//! id = "sg-node"
//! ingress = [{ proto = "tcp", ports = "80", cidr = "0.0.0.0/0" }]
//! egress = [{ proto = "all", cidr = "0.0.0.0/0" }]
//!
//! [[pods]]
//! namespace = "sg-test"
//! name = "my-deployment-6c7d9f8b5-4xq2z"
//! ip = "192.168.3.219"
//! kind = "branch"                # branch | ordinary
//! vlan = 1                       # branch only
//! mode = "standard"              # branch only; defaults to node.enforcing_mode
//! security_groups = ["sg-pod"]   # branch only
//! eni = "eth2"                   # ordinary only: on a secondary ENI (default eth0)
//!
//! [[faults]]                     # see `Fault` for every kind
//! kind = "sysctl"
//! name = "net.ipv4.tcp_early_demux"
//! value = 1
//! ```

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The default lab: the seed scenario (namespace sg-test, 4 branch + 4 ordinary pods).
pub const DEFAULT_SPEC: &str = include_str!("../../labs/default.toml");

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub vpc: Vpc,
    pub node: NodeSpec,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub faults: Vec<Fault>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    pub cidr: ipnet::Ipv4Net,
    pub bastion: ipnet::Ipv4Net,
}

impl Vpc {
    /// The subnet gateway, as AWS sets it: subnet base + 1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Strict,
    Standard,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Standard => "standard",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub primary_ip: Ipv4Addr,
    pub trunk: Option<String>,
    pub enforcing_mode: Mode,
    #[serde(default = "yes")]
    pub disable_tcp_early_demux: bool,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// MTU of the ENIs (9001 on EC2).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Secondary ENIs (ordinary pods may sit on them), with the node's security groups.
    #[serde(default)]
    pub secondary_enis: Vec<SecondaryEni>,
}

/// A secondary ENI: its route table is `device_index + 1` (network card 0), its own
/// `32765: from <ip>` rule, and the CNI removes its connected route from the main table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryEni {
    pub name: String,
    pub ip: Ipv4Addr,
    pub device_index: u32,
}

impl SecondaryEni {
    pub fn table(&self) -> u32 {
        self.device_index + 1
    }
}

fn yes() -> bool {
    true
}
fn default_mtu() -> u32 {
    9001
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub ingress: Vec<SgRule>,
    #[serde(default)]
    pub egress: Vec<SgRule>,
}

/// One allow rule of a (stateful) security group.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    pub proto: Proto,
    /// `"80"` or `"1024-65535"`; absent for `all` and `icmp`.
    pub ports: Option<String>,
    /// Source (ingress) or destination (egress) CIDR.
    pub cidr: ipnet::Ipv4Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    Branch,
    Ordinary,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub kind: PodKind,
    pub vlan: Option<u16>,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The secondary ENI an ordinary pod's IP belongs to (default: the primary ENI).
    pub eni: Option<String>,
}

/// A fault to inject into the node after it is built, as operators meet them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Set a sysctl of the node's namespace (`net.ipv4.tcp_early_demux`, `net.ipv4.ip_forward`,
    /// `net.ipv4.conf.eth0.rp_filter`...).
    Sysctl {
        name: String,
        value: i64,
    },
    /// Delete a strict pod's priority-10 rule: `iif` its veth (`on = "veth"`) or its VLAN link.
    DeleteVlanRule {
        pod: String,
        on: RuleOn,
    },
    /// Add a priority-10 `iif <iif> lookup <table>` rule left behind by a deleted pod; for
    /// a live strict veth it goes before the pod's own rule (a re-created pod, #1375).
    StaleVlanRule {
        iif: String,
        table: u32,
    },
    /// Delete a route from a branch pod's VLAN table.
    DeleteVlanRoute {
        pod: String,
        route: VlanRoute,
    },
    /// Delete an ordinary/standard pod's main-table route or its priority-512 rule.
    DeletePodRoute {
        pod: String,
    },
    DeleteToPodRule {
        pod: String,
    },
    /// Put the local rule back at priority 0 (as before strict mode moved it to 20).
    LocalRuleAtZero,
    /// Add NodeLocal DNSCache's address on a `nodelocaldns` dummy interface.
    NodelocalDns {
        address: Ipv4Addr,
    },
    /// The operator's NodeLocal DNSCache workaround for one strict branch pod (VPC CNI
    /// #1662): `local <address> dev nodelocaldns` in the pod's table N+100, so its queries
    /// stay on the node, and `9: from <address> to <pod ip> lookup N+100`, before the VLAN
    /// rules, so the answers go back to its veth. Needs a `nodelocal-dns` fault before it.
    NodelocalDnsWorkaround {
        pod: String,
        address: Ipv4Addr,
    },
    /// The EKS Pod Identity agent's link-local addresses, 169.254.170.23 and fd00:ec2::23,
    /// on a `pod-id-link0` dummy interface of the node (VPC CNI #2797).
    PodIdentityAgent,
    /// Set a link's MTU (`vlan.eth.1`, a pod's veth by pod name, ...).
    Mtu {
        link: String,
        mtu: u32,
    },
    /// Take the trunk down.
    TrunkDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleOn {
    Veth,
    Vlan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanRoute {
    Gateway,
    Default,
    Pod,
}

impl Spec {
    /// Parse and validate a spec.
    ///
    /// # Errors
    /// A message naming the field that is wrong.
    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text).context("lab spec is not valid")?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading lab spec {}", path.display()))?;
        Spec::parse(&text).with_context(|| format!("lab spec {}", path.display()))
    }

    pub fn default_lab() -> Spec {
        Spec::parse(DEFAULT_SPEC).expect("labs/default.toml is valid")
    }

    fn validate(&self) -> Result<()> {
        let groups: BTreeSet<&str> = self.security_groups.iter().map(|g| g.id.as_str()).collect();
        for g in &self.node.security_groups {
            if !groups.contains(g.as_str()) {
                bail!("node.security_groups names {g:?}, which is not in [[security_groups]]");
            }
        }
        let mut ips = BTreeSet::new();
        let mut vlans = BTreeSet::new();
        for p in &self.pods {
            if !ips.insert(p.ip) {
                bail!("pod {}/{}: ip {} is used twice", p.namespace, p.name, p.ip);
            }
            if !self.vpc.cidr.contains(&p.ip) {
                bail!(
                    "pod {}/{}: ip {} is outside vpc.cidr {}",
                    p.namespace,
                    p.name,
                    p.ip,
                    self.vpc.cidr
                );
            }
            match (p.kind, p.vlan) {
                (PodKind::Branch, None) => {
                    bail!("pod {}/{}: a branch pod needs `vlan`", p.namespace, p.name)
                }
                (PodKind::Branch, Some(v)) if !(1..=120).contains(&v) => {
                    bail!(
                        "pod {}/{}: vlan {v} is outside 1..=120",
                        p.namespace,
                        p.name
                    )
                }
                (PodKind::Branch, Some(v)) if !vlans.insert(v) => {
                    bail!("pod {}/{}: vlan {v} is used twice", p.namespace, p.name)
                }
                (PodKind::Ordinary, Some(_)) => bail!(
                    "pod {}/{}: an ordinary pod has no `vlan`",
                    p.namespace,
                    p.name
                ),
                _ => {}
            }
            if let Some(eni) = &p.eni {
                if p.kind == PodKind::Branch {
                    bail!(
                        "pod {}/{}: a branch pod has its own ENI; drop `eni`",
                        p.namespace,
                        p.name
                    );
                }
                if !self.node.secondary_enis.iter().any(|e| &e.name == eni) {
                    bail!(
                        "pod {}/{}: eni {eni:?} is not in node.secondary_enis",
                        p.namespace,
                        p.name
                    );
                }
            }
            for g in &p.security_groups {
                if !groups.contains(g.as_str()) {
                    bail!(
                        "pod {}/{}: security group {g:?} is not in [[security_groups]]",
                        p.namespace,
                        p.name
                    );
                }
            }
        }
        for g in &self.security_groups {
            for r in g.ingress.iter().chain(&g.egress) {
                r.port_range()
                    .with_context(|| format!("security group {}", g.id))?;
            }
        }
        Ok(())
    }

    /// The secondary ENI a pod sits on, if any.
    pub fn eni_of(&self, pod: &Pod) -> Option<&SecondaryEni> {
        pod.eni
            .as_ref()
            .and_then(|n| self.node.secondary_enis.iter().find(|e| &e.name == n))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod named {name:?} in the lab"))
    }

    pub fn group_mut(&mut self, id: &str) -> Result<&mut SecurityGroup> {
        self.security_groups
            .iter_mut()
            .find(|g| g.id == id)
            .with_context(|| format!("no security group {id:?}"))
    }

    /// The enforcing mode of a branch pod.
    pub fn mode_of(&self, pod: &Pod) -> Mode {
        pod.mode.unwrap_or(self.node.enforcing_mode)
    }
}

impl SgRule {
    /// The port range, `None` for protocols without ports.
    pub fn port_range(&self) -> Result<Option<(u16, u16)>> {
        match (&self.ports, self.proto) {
            (None, _) => Ok(None),
            (Some(p), Proto::Tcp | Proto::Udp) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo
                    .trim()
                    .parse()
                    .with_context(|| format!("bad port {p:?}"))?;
                let hi: u16 = hi
                    .trim()
                    .parse()
                    .with_context(|| format!("bad port {p:?}"))?;
                if lo > hi {
                    bail!("port range {p:?} is reversed");
                }
                Ok(Some((lo, hi)))
            }
            (Some(p), proto) => bail!("ports {p:?} given for {proto:?}, which has no ports"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_is_the_seed_scenario() {
        let s = Spec::default_lab();
        assert_eq!(s.pods.len(), 8);
        assert_eq!(
            s.pods.iter().filter(|p| p.kind == PodKind::Branch).count(),
            4
        );
        assert_eq!(s.node.trunk.as_deref(), Some("eth1"));
        assert_eq!(s.vpc.gateway(), Ipv4Addr::new(192, 168, 0, 1));
    }

    #[test]
    fn unknown_group_is_named() {
        let mut text = DEFAULT_SPEC.replace(
            "security_groups = [\"sg-node\"]",
            "security_groups = [\"sg-nope\"]",
        );
        text.push('\n');
        let e = format!("{:#}", Spec::parse(&text).unwrap_err());
        assert!(e.contains("sg-nope"), "{e}");
    }
}
