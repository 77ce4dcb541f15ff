//! The node as plain owned data: what `collect` read ([`Node`]) and what sgpath makes of
//! it ([`Topology`]). No I/O and no netlink types here, so checks and reports are pure
//! functions of these values and unit-tested without root.

mod cni;
pub mod conns;
mod counters;
pub mod drops;
pub mod eni;
pub mod fib;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod ipamd;
pub mod k8s;
mod link;
pub mod lookup;
mod route;
mod rule;
pub mod sg;
mod sysctl;
mod topology;
pub mod trace;

pub use cni::{CniConfig, EnforcingMode, VLAN_LINK_PREFIX, VLAN_TABLE_OFFSET, vlan_table};
pub use counters::{DirectionCounters, Drop, MAX_PORTS, PathCounters, Port, add_port};
pub use link::{Link, LinkKind, OperState};
pub use lookup::{Answer, Lookup, Refusal, Target};
pub use route::{Route, RouteKind, RouteScope};
pub use rule::{Rule, RuleAction, table_name};
pub use sysctl::Sysctls;
pub use topology::{HostVeth, Path, PathKind, PathRule, Topology, Trunk, VethRole, VlanLink};

use serde::Serialize;

/// The main routing table (`ip route show table main`).
pub const TABLE_MAIN: u32 = 254;
/// The local table.
pub const TABLE_LOCAL: u32 = 255;
/// The default table.
pub const TABLE_DEFAULT: u32 = 253;

/// Rule priorities the VPC CNI uses (pkg/networkutils, pkg/sgpp).
pub mod priority {
    /// `from all lookup local` by default.
    pub const LOCAL_DEFAULT: u32 = 0;
    /// `iif vlan.eth.N` / `iif vlan<hash>` rules of strict-mode branch pods.
    pub const VLAN_IIF: u32 = 10;
    /// Where the CNI moves the local rule in strict mode.
    pub const LOCAL_STRICT: u32 = 20;
    /// `to <pod ip> lookup main` of ordinary and standard-mode pods.
    pub const TO_POD: u32 = 512;
    /// `from <pod ip> lookup <table>` of pods on secondary ENIs and standard-mode branch pods.
    pub const FROM_POD: u32 = 1536;
}

/// Address family of a rule or route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// Something `collect` could not read; the snapshot goes on without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadWarning {
    /// What could not be read: a sysctl name, a file, a host veth.
    pub subject: String,
    /// Why, in one sentence naming the subject.
    pub message: String,
}

impl ReadWarning {
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> ReadWarning {
        ReadWarning {
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ReadWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Everything `collect` read from one node (its network namespace), before interpretation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Node {
    /// `uname -r`.
    pub kernel: String,
    pub links: Vec<Link>,
    pub rules: Vec<Rule>,
    pub routes: Vec<Route>,
    /// Addresses of each host veth's peer (the pod's `eth0`), by host veth name.
    pub pod_addresses: std::collections::BTreeMap<String, Vec<ipnet::IpNet>>,
    pub sysctls: Sysctls,
    /// The kernel's route lookups for every pod (its gateway, the node, the node's
    /// services, instance metadata), in pod order.
    pub lookups: Vec<Lookup>,
    /// The CNI config, when the file exists and parses.
    pub cni: Option<CniConfig>,
    /// Problems met while reading that did not stop the snapshot (a malformed CNI config,
    /// an unreadable sysctl). Reported as warnings.
    pub read_warnings: Vec<ReadWarning>,
    /// The node ENIs IPAMD reported (`/v1/enis`), when it answered.
    #[serde(skip)]
    pub ipamd: Option<Vec<ipamd::IpamdEni>>,
    /// The Kubernetes context (`sgpath agent` with a cluster), as last watched.
    #[serde(skip)]
    pub cluster: Option<std::sync::Arc<k8s::Cluster>>,
    /// The security groups' rules (`sgpath agent` reading EC2), as last read.
    #[serde(skip)]
    pub security_groups: Option<std::sync::Arc<sg::Rules>>,
    /// Routes by table and rules in priority order, built on first use.
    #[serde(skip)]
    pub index: FibIndex,
}

/// The node's routes by table and its rules by family in priority order, built the first
/// time a lookup needs them. The model walks rules and tables as the kernel does, once per
/// pod and target: scanning 10,000 routes per table visited was most of `inspect`'s time
/// on a large node. A `Node` is not changed once read; should a test change its routes or
/// rules after a lookup, the index notices the different counts and scans instead.
#[derive(Debug, Default)]
pub struct FibIndex(std::sync::OnceLock<Index>);

/// A clone starts without an index: its routes and rules may be changed before use.
impl Clone for FibIndex {
    fn clone(&self) -> FibIndex {
        FibIndex::default()
    }
}

#[derive(Debug)]
pub struct Index {
    routes: usize,
    rules: usize,
    /// Positions in `Node::routes`, per table, in the kernel's order.
    tables: std::collections::HashMap<u32, Vec<u32>>,
    /// Positions in `Node::routes`, per output device.
    by_dev: std::collections::HashMap<String, Vec<u32>>,
    /// Positions in `Node::rules` of each family, by priority (stable: the kernel's order
    /// among equal priorities).
    ipv4_rules: Vec<u32>,
    ipv6_rules: Vec<u32>,
}

impl Index {
    fn build(node: &Node) -> Index {
        let mut tables: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        let mut by_dev: std::collections::HashMap<String, Vec<u32>> = Default::default();
        for (i, r) in node.routes.iter().enumerate() {
            tables.entry(r.table).or_default().push(i as u32);
            if let Some(dev) = &r.oif {
                by_dev.entry(dev.clone()).or_default().push(i as u32);
            }
        }
        let by_priority = |family: Family| {
            let mut v: Vec<u32> = (0..node.rules.len() as u32)
                .filter(|&i| node.rules[i as usize].family == family)
                .collect();
            v.sort_by_key(|&i| node.rules[i as usize].priority);
            v
        };
        Index {
            routes: node.routes.len(),
            rules: node.rules.len(),
            tables,
            by_dev,
            ipv4_rules: by_priority(Family::Ipv4),
            ipv6_rules: by_priority(Family::Ipv6),
        }
    }

    fn fits(&self, node: &Node) -> bool {
        self.routes == node.routes.len() && self.rules == node.rules.len()
    }
}

impl Node {
    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Whether an address is configured on one of the node's links.
    pub fn has_address(&self, ip: std::net::IpAddr) -> bool {
        self.links
            .iter()
            .any(|l| l.addresses.iter().any(|a| a.addr() == ip))
    }

    fn index(&self) -> Option<&Index> {
        let index = self.index.0.get_or_init(|| Index::build(self));
        index.fits(self).then_some(index)
    }

    /// Routes in one table, in the kernel's order.
    pub fn table(&self, table: u32) -> impl Iterator<Item = &Route> {
        let (indexed, scan) = match self.index() {
            Some(ix) => (
                ix.tables.get(&table).map_or(&[][..], Vec::as_slice),
                &[][..],
            ),
            None => (&[][..], self.routes.as_slice()),
        };
        let indexed = indexed.iter().map(|&i| &self.routes[i as usize]);
        indexed.chain(scan.iter().filter(move |r| r.table == table))
    }

    /// Routes out of `dev` (`Route::goes_via`), in every table, in the kernel's order.
    pub fn routes_via<'a>(&'a self, dev: &'a str) -> impl Iterator<Item = &'a Route> {
        let (indexed, scan) = match self.index() {
            Some(ix) => (ix.by_dev.get(dev).map_or(&[][..], Vec::as_slice), &[][..]),
            None => (&[][..], self.routes.as_slice()),
        };
        let indexed = indexed.iter().map(|&i| &self.routes[i as usize]);
        indexed.chain(scan.iter().filter(move |r| r.goes_via(dev)))
    }

    /// Rules of one family in the order the kernel walks them (by priority).
    pub fn rules_in_order(&self, family: Family) -> impl Iterator<Item = &Rule> {
        let (indexed, sorted) = match self.index() {
            Some(ix) => match family {
                Family::Ipv4 => (ix.ipv4_rules.as_slice(), Vec::new()),
                Family::Ipv6 => (ix.ipv6_rules.as_slice(), Vec::new()),
            },
            None => {
                let mut rules: Vec<&Rule> =
                    self.rules.iter().filter(|r| r.family == family).collect();
                rules.sort_by_key(|r| r.priority);
                (&[][..], rules)
            }
        };
        let indexed = indexed.iter().map(|&i| &self.rules[i as usize]);
        indexed.chain(sorted)
    }
}
