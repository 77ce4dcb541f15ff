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
//!
//! [dns]                          # dnsmasq playing CoreDNS on an ordinary pod; every pod's
//! pod = "my-deployment2-7d4c6b8f9-5hfzq"  # resolv.conf names it
//! domain = "cluster.local"       # default; each pod is `<name>.<namespace>.svc.<domain>`
//!
//! [[steps]]                      # what `cargo xtask lab` replays; see `Action`
//! title = "Port 80 removed from the pod security group"
//! actions = [
//!   { kind = "remove-rule", group = "sg-pod", direction = "ingress",
//!     rule = { proto = "tcp", ports = "80", cidr = "0.0.0.0/0" } },
//!   { kind = "http", from = "bastion" },                  # GET :80 of every pod (or `pods`)
//!   { kind = "dns", from = { pod = "my-deployment-6c7d9f8b5-4xq2z" },
//!     name = "my-deployment2-7d4c6b8f9-5hfzq.sg-test.svc.cluster.local" },
//!   { kind = "connect", from = "node", to = "192.168.3.219:80" },  # a kubelet probe
//! ]
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
    /// The cluster DNS server, if the lab has one.
    pub dns: Option<Dns>,
    /// The experiment `cargo xtask lab` replays, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// The lab's cluster DNS: dnsmasq on an ordinary pod, answering A records for every pod
/// (`<name>.<namespace>.svc.<domain>`) on UDP and TCP 53, as CoreDNS would for services.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// The pod that runs it.
    pub pod: String,
    #[serde(default = "default_domain")]
    pub domain: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}

impl Dns {
    /// The name the DNS server gives a pod.
    pub fn name_of(&self, pod: &Pod) -> String {
        format!("{}.{}.svc.{}", pod.name, pod.namespace, self.domain)
    }
}

/// One step of an experiment: what changes and what traffic a user sends afterwards.
/// Actions run in order; consecutive traffic actions run at once.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub title: String,
    pub actions: Vec<Action>,
}

/// Where traffic starts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Host {
    /// The bastion, outside the cluster (`"bastion"`).
    Bastion,
    /// The node's own namespace, as the kubelet (`"node"`).
    Node,
    /// A pod, by name (`{ pod = "<name>" }`).
    Pod(String),
}

impl Host {
    /// How the step table names it.
    pub fn describe(&self) -> String {
        match self {
            Host::Bastion => "the bastion".into(),
            Host::Node => "the node".into(),
            Host::Pod(p) => p.clone(),
        }
    }
}

fn bastion() -> Host {
    Host::Bastion
}

/// Which rules of a security group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SgDirection {
    Ingress,
    Egress,
}

/// One thing a step does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// HTTP GET `http://<pod ip>:80/` of every pod (or of `pods`), answered when the pod's
    /// server sends its own name back.
    Http {
        #[serde(default = "bastion")]
        from: Host,
        /// Pod names; empty: every pod.
        #[serde(default)]
        pods: Vec<String>,
    },
    /// An A query to the lab's DNS server (`[dns]`), from a pod or the node.
    Dns { from: Host, name: String },
    /// A TCP connect (SYN, SYN-ACK, ACK, close), from a pod or the node: a kubelet probe
    /// is `{ kind = "connect", from = "node", to = "<pod ip>:80" }`.
    Connect {
        from: Host,
        to: std::net::SocketAddrV4,
    },
    /// Add an allow rule to a security group; the VPC enforces it at once.
    AddRule {
        group: String,
        direction: SgDirection,
        rule: SgRule,
    },
    /// Remove an allow rule (it must be there) from a security group.
    RemoveRule {
        group: String,
        direction: SgDirection,
        rule: SgRule,
    },
}

impl Action {
    /// True for the actions that send traffic (the rest edit the lab).
    pub fn is_traffic(&self) -> bool {
        matches!(
            self,
            Action::Http { .. } | Action::Dns { .. } | Action::Connect { .. }
        )
    }
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
    /// Delete a branch pod's `vlan.eth.N` link (its rules and the pod's veth stay).
    DeleteVlanLink {
        pod: String,
    },
    /// The pod's sandbox is gone without a CNI DEL (the runtime lost it, or someone deleted
    /// the network namespace): its veth pair goes with the namespace, while the plugin's
    /// rules, the VLAN link and the routes of other devices stay.
    PodGoneWithoutDel {
        pod: String,
    },
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
        if let Some(dns) = &self.dns {
            let p = self.pod(&dns.pod).context("[dns] pod")?;
            if p.kind != PodKind::Ordinary {
                bail!(
                    "[dns] pod {}: CoreDNS runs on an ordinary pod here; {} is a branch pod",
                    dns.pod,
                    dns.pod
                );
            }
        }
        self.validate_steps()
    }

    /// Steps are checked in order against the groups as the earlier steps leave them, so a
    /// rule removed twice or added twice is an error.
    fn validate_steps(&self) -> Result<()> {
        let mut groups = self.security_groups.clone();
        for (i, step) in self.steps.iter().enumerate() {
            let at = || format!("step {} ({:?})", i + 1, step.title);
            if step.actions.is_empty() {
                bail!("{}: no actions", at());
            }
            for a in &step.actions {
                self.validate_action(a, &mut groups).with_context(at)?;
            }
        }
        Ok(())
    }

    fn validate_action(&self, a: &Action, groups: &mut [SecurityGroup]) -> Result<()> {
        let from_pod_or_node = |from: &Host, what: &str| -> Result<()> {
            match from {
                Host::Bastion => bail!(
                    "{what} from the bastion: the bastion is outside the cluster; send it from a pod or the node"
                ),
                Host::Node => Ok(()),
                Host::Pod(p) => self.pod(p).map(|_| ()),
            }
        };
        match a {
            Action::Http { from, pods } => {
                if let Host::Pod(p) = from {
                    self.pod(p)?;
                }
                for p in pods {
                    self.pod(p).context("http")?;
                }
            }
            Action::Dns { from, name } => {
                if self.dns.is_none() {
                    bail!("dns query for {name:?}: the spec has no [dns] server");
                }
                if name.is_empty() || name.len() > 253 {
                    bail!("dns query: bad name {name:?}");
                }
                from_pod_or_node(from, "dns query")?;
            }
            Action::Connect { from, to } => {
                if to.port() == 0 {
                    bail!("connect to {to}: bad port 0");
                }
                from_pod_or_node(from, "connect")?;
            }
            Action::AddRule { group, rule, .. } | Action::RemoveRule { group, rule, .. } => {
                rule.port_range()
                    .with_context(|| format!("rule of security group {group}"))?;
                edit_groups(groups, a)?;
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

    /// Apply a security-group edit to the spec (the VPC's rules follow with
    /// [`super::Lab::apply_security_groups`]); traffic actions change nothing.
    ///
    /// # Errors
    /// An unknown group, a rule added twice or a rule that is not there.
    pub fn edit(&mut self, action: &Action) -> Result<()> {
        edit_groups(&mut self.security_groups, action)
    }

    /// The DNS server's pod and its namespace index, if the lab has one.
    pub fn dns_pod(&self) -> Option<(usize, &Pod)> {
        let dns = self.dns.as_ref()?;
        self.pods
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == dns.pod)
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

/// Apply an add-rule or remove-rule action to `groups`; other actions change nothing.
fn edit_groups(groups: &mut [SecurityGroup], action: &Action) -> Result<()> {
    let (group, direction, rule, add) = match action {
        Action::AddRule {
            group,
            direction,
            rule,
        } => (group, *direction, rule, true),
        Action::RemoveRule {
            group,
            direction,
            rule,
        } => (group, *direction, rule, false),
        _ => return Ok(()),
    };
    let g = groups
        .iter_mut()
        .find(|g| &g.id == group)
        .with_context(|| format!("no security group {group:?}"))?;
    let rules = match direction {
        SgDirection::Ingress => &mut g.ingress,
        SgDirection::Egress => &mut g.egress,
    };
    let what = rule.describe(direction);
    match (add, rules.iter().position(|r| r == rule)) {
        (true, None) => rules.push(rule.clone()),
        (true, Some(_)) => bail!("{group} already has the {direction} rule {what}"),
        (false, Some(k)) => {
            rules.remove(k);
        }
        (false, None) => bail!("{group} has no {direction} rule {what} to remove"),
    }
    Ok(())
}

impl std::fmt::Display for SgDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SgDirection::Ingress => "ingress",
            SgDirection::Egress => "egress",
        })
    }
}

impl SgRule {
    /// `tcp 80 from 0.0.0.0/0` (ingress) or `all to 0.0.0.0/0` (egress), as the console
    /// lists a group's rules.
    pub fn describe(&self, direction: SgDirection) -> String {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::All => "all",
        };
        let ports = self
            .ports
            .as_deref()
            .map_or(String::new(), |p| format!(" {p}"));
        let peer = match direction {
            SgDirection::Ingress => "from",
            SgDirection::Egress => "to",
        };
        format!("{proto}{ports} {peer} {}", self.cidr)
    }

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

    /// The default lab plus `extra` TOML (steps, dns) at the end.
    fn with(extra: &str) -> Result<Spec> {
        Spec::parse(&format!("{DEFAULT_SPEC}\n{extra}"))
    }

    fn err(extra: &str) -> String {
        format!("{:#}", with(extra).unwrap_err())
    }

    #[test]
    fn default_lab_replays_the_seeds_three_steps() {
        let s = Spec::default_lab();
        assert_eq!(s.steps.len(), 3);
        let (_, dns) = s.dns_pod().expect("the default lab has a DNS server");
        assert_eq!(dns.kind, PodKind::Ordinary);
        let port80 = SgRule {
            proto: Proto::Tcp,
            ports: Some("80".into()),
            cidr: "0.0.0.0/0".parse().unwrap(),
        };
        let edits: Vec<(bool, &str)> = s
            .steps
            .iter()
            .flat_map(|st| &st.actions)
            .filter_map(|a| match a {
                Action::AddRule { group, rule, .. } if *rule == port80 => {
                    Some((true, group.as_str()))
                }
                Action::RemoveRule { group, rule, .. } if *rule == port80 => {
                    Some((false, group.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            edits,
            [(false, "sg-pod"), (true, "sg-pod"), (false, "sg-node")]
        );
        for st in &s.steps {
            assert!(
                st.actions.iter().any(
                    |a| matches!(a, Action::Http { from: Host::Bastion, pods } if pods.is_empty())
                ),
                "{}",
                st.title
            );
        }
    }

    #[test]
    fn actions_parse_into_typed_variants() {
        let s = with(
            r#"
[[steps]]
title = "probe"
actions = [
  { kind = "connect", from = "node", to = "192.168.3.219:80" },
  { kind = "dns", from = { pod = "my-deployment-5b7f8c9d6-2xk4p" }, name = "x.sg-test.svc.cluster.local" },
  { kind = "http", from = { pod = "my-deployment2-7d4c6b8f9-wp6tb" }, pods = ["my-deployment-5b7f8c9d6-tj9rl"] },
  { kind = "add-rule", group = "sg-node", direction = "egress", rule = { proto = "udp", ports = "53", cidr = "10.0.0.0/8" } },
]
"#,
        )
        .unwrap();
        let a = &s.steps[3].actions;
        assert_eq!(
            a[0],
            Action::Connect {
                from: Host::Node,
                to: "192.168.3.219:80".parse().unwrap()
            }
        );
        assert_eq!(
            a[1],
            Action::Dns {
                from: Host::Pod("my-deployment-5b7f8c9d6-2xk4p".into()),
                name: "x.sg-test.svc.cluster.local".into()
            }
        );
        assert!(a[0].is_traffic() && !a[3].is_traffic());
        assert_eq!(
            s.dns.as_ref().unwrap().name_of(&s.pods[0]),
            "my-deployment-5b7f8c9d6-2xk4p.sg-test.svc.cluster.local"
        );
    }

    #[test]
    fn steps_name_what_is_wrong() {
        let step = |action: &str| format!("[[steps]]\ntitle = \"t\"\nactions = [{action}]\n");
        let e = err(&step(r#"{ kind = "http", pods = ["nope"] }"#));
        assert!(e.contains("step 4") && e.contains("\"nope\""), "{e}");
        let e = err(&step(
            r#"{ kind = "remove-rule", group = "sg-nope", direction = "ingress", rule = { proto = "all", cidr = "0.0.0.0/0" } }"#,
        ));
        assert!(e.contains("no security group \"sg-nope\""), "{e}");
        let e = err(&step(
            r#"{ kind = "connect", from = "node", to = "192.168.3.219:0" }"#,
        ));
        assert!(e.contains("bad port 0"), "{e}");
        let e = err(&step(
            r#"{ kind = "connect", from = "node", to = "192.168.3.219:99999" }"#,
        ));
        assert!(e.contains("not valid"), "{e}");
        let e = err(&step(
            r#"{ kind = "add-rule", group = "sg-pod", direction = "ingress", rule = { proto = "tcp", ports = "80-70", cidr = "0.0.0.0/0" } }"#,
        ));
        assert!(e.contains("reversed"), "{e}");
        let e = err(&step(r#"{ kind = "dns", from = "bastion", name = "a" }"#));
        assert!(e.contains("outside the cluster"), "{e}");
        let e = err(&step(r#"{ kind = "ping", from = "node" }"#));
        assert!(e.contains("ping"), "{e}");
        let e = err("[[steps]]\ntitle = \"empty\"\nactions = []\n");
        assert!(e.contains("no actions"), "{e}");
    }

    #[test]
    fn rule_edits_are_checked_against_the_earlier_steps() {
        // Step 2 of the default lab already removed port 80 from sg-pod.
        let remove = r#"{ kind = "remove-rule", group = "sg-node", direction = "ingress", rule = { proto = "tcp", ports = "80", cidr = "0.0.0.0/0" } }"#;
        let e = err(&format!(
            "[[steps]]\ntitle = \"again\"\nactions = [{remove}]\n"
        ));
        assert!(
            e.contains("sg-node has no ingress rule tcp 80 from 0.0.0.0/0 to remove"),
            "{e}"
        );
        let mut s = Spec::default_lab();
        let add = Action::AddRule {
            group: "sg-node".into(),
            direction: SgDirection::Ingress,
            rule: s.security_groups[0].ingress[0].clone(),
        };
        let e = format!("{:#}", s.edit(&add).unwrap_err());
        assert!(e.contains("already has the ingress rule"), "{e}");
    }

    #[test]
    fn dns_server_must_be_an_ordinary_pod_of_the_lab() {
        let text = DEFAULT_SPEC.replace(
            "pod = \"my-deployment2-7d4c6b8f9-5hfzq\"",
            "pod = \"my-deployment-5b7f8c9d6-2xk4p\"",
        );
        let e = format!("{:#}", Spec::parse(&text).unwrap_err());
        assert!(e.contains("is a branch pod"), "{e}");
        let text = DEFAULT_SPEC.replace(
            "pod = \"my-deployment2-7d4c6b8f9-5hfzq\"",
            "pod = \"ghost\"",
        );
        let e = format!("{:#}", Spec::parse(&text).unwrap_err());
        assert!(e.contains("[dns] pod") && e.contains("ghost"), "{e}");
    }
}
