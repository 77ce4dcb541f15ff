//! What sgpath makes of a [`Node`]: trunk ENIs, VLAN links, host veths and one
//! security-group *path* per pod. Pure functions of the snapshot.
//!
//! How the VPC CNI lays a node out (../shared/vpc-cni-sgp.md):
//! - strict branch pod: host veth `vlan<hash>`, pod route in table N+100, priority-10
//!   `iif vlan.eth.N` and `iif vlan<hash>` rules to N+100;
//! - standard branch pod: host veth `eni<hash>`, main route, `512: to <ip> lookup main`,
//!   `1536: from <ip> lookup N+100`;
//! - ordinary pod: `eni<hash>`, main route, 512 rule, and on a secondary ENI a 1536 rule to
//!   the ENI's table.

use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use super::{
    EnforcingMode, Link, LinkKind, Node, PathCounters, RouteKind, Rule, TABLE_MAIN,
    cni::{self, CniConfig, STRICT_VETH_PREFIX, VLAN_LINK_PREFIX},
    priority,
};

/// Which security groups filter a pod's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// The pod has its own branch ENI (a VLAN on the trunk): the branch ENI's groups decide.
    BranchEni,
    /// The pod shares a node ENI: the node ENI's groups decide.
    NodeEni,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::BranchEni => "branch-eni",
            PathKind::NodeEni => "node-eni",
        }
    }
}

/// What a host veth's name says about its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VethRole {
    /// `vlan<hash>`: a strict-mode branch pod.
    StrictBranch,
    /// `<vethPrefix><hash>` (`eni` by default): an ordinary or standard-mode branch pod.
    Eni,
}

/// A trunk ENI: the parent of `vlan.eth.*` links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trunk {
    pub name: String,
    pub ifindex: u32,
    pub mtu: Option<u32>,
    pub up: bool,
    /// VLAN ids of its `vlan.eth.*` children, ascending.
    pub vlans: Vec<u16>,
}

/// A branch ENI's VLAN sub-interface `vlan.eth.N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VlanLink {
    pub name: String,
    pub ifindex: u32,
    pub vlan_id: u16,
    /// The trunk's name, `None` when IFLA_LINK names no link in this namespace (trunk gone).
    pub trunk: Option<String>,
    pub parent_ifindex: Option<u32>,
    /// IFLA_LINK_NETNSID was set: the parent lives in another network namespace.
    pub parent_elsewhere: bool,
    pub mtu: Option<u32>,
    pub mac: Option<String>,
    pub up: bool,
}

/// A pod's host-side veth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostVeth {
    pub name: String,
    pub ifindex: u32,
    pub role: VethRole,
    pub mtu: Option<u32>,
    /// The pod's netns id as the node numbers it; `None` for a veth without a peer.
    pub peer_netns_id: Option<i32>,
}

/// A rule that steers a path, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathRule {
    pub priority: u32,
    /// `from all iif vlan.eth.1`, as `ip rule` prints the selector.
    pub selector: String,
    pub table: u32,
}

impl std::fmt::Display for PathRule {
    /// `10: from all iif vlan.eth.1 lookup 101`, as `ip rule` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} lookup {}",
            self.priority,
            self.selector,
            super::table_name(self.table)
        )
    }
}

impl From<&Rule> for PathRule {
    fn from(r: &Rule) -> PathRule {
        PathRule {
            priority: r.priority,
            selector: r.selector(),
            table: r.table,
        }
    }
}

/// One pod's security-group path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Path {
    pub kind: PathKind,
    /// Enforcing mode of a branch path; `None` for node-ENI paths.
    pub mode: Option<EnforcingMode>,
    /// `None` when nothing on the node names the pod's address (no route, no rule).
    pub pod_ip: Option<IpAddr>,
    pub host_veth: String,
    pub vlan_id: Option<u16>,
    /// `vlan.eth.N`, `None` if that link does not exist.
    pub vlan_link: Option<String>,
    pub trunk: Option<String>,
    /// The table that routes the pod's own outbound traffic.
    pub route_table: u32,
    pub rules: Vec<PathRule>,
    /// The ENI whose security groups decide: the branch ENI of the pod's
    /// `vpc.amazonaws.com/pod-eni` annotation, or the node ENI IPAMD holds the pod's
    /// address on. Absent when neither the cluster nor IPAMD says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni_id: Option<String>,
    /// The pod behind the path (`sgpath agent` with a cluster): namespace, name, the branch
    /// ENI and VLAN of its annotation, the groups of the policies selecting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<super::k8s::PodRef>,
    /// What the datapath probes counted (`sgpath observe`); absent from `inspect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<PathCounters>,
    /// `sgpath agent`: what they counted in the last `--window`, which the findings from
    /// counts judge (raised while it holds evidence, cleared a window after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<PathCounters>,
}

impl Path {
    /// The counters the findings from counts judge: the window's in the agent, else all
    /// (`observe`: its duration is the window).
    pub fn judged(&self) -> Option<&PathCounters> {
        self.window.as_ref().or(self.counters.as_ref())
    }
}

/// The node's security-group topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// `None` when no branch ENI path exists.
    pub mode: Option<EnforcingMode>,
    /// The primary ENI: the device of the main table's IPv4 default route (`eth0`, `ens5`).
    pub primary_eni: Option<String>,
    pub trunks: Vec<Trunk>,
    pub vlan_links: Vec<VlanLink>,
    pub host_veths: Vec<HostVeth>,
    /// Branch paths first, then node-ENI paths; each group by pod IP.
    pub paths: Vec<Path>,
    /// The node's ENIs and the addresses each owns (the VPC's source/destination check).
    pub enis: Vec<super::eni::Eni>,
}

impl Topology {
    /// Classify a node snapshot.
    pub fn from_node(node: &Node) -> Topology {
        let vlan_links: Vec<VlanLink> = node
            .links
            .iter()
            .filter_map(|l| vlan_link(node, l))
            .collect();
        let trunks = trunks(node, &vlan_links);
        let veth_prefix = CniConfig::veth_prefix(node.cni.as_ref());
        let host_veths: Vec<HostVeth> = node
            .links
            .iter()
            .filter_map(|l| host_veth(l, veth_prefix))
            .collect();
        let mut paths: Vec<Path> = host_veths
            .iter()
            .map(|v| path(node, &vlan_links, v))
            .collect();
        paths.sort_by(|a, b| {
            (a.kind, a.pod_ip, &a.host_veth).cmp(&(b.kind, b.pod_ip, &b.host_veth))
        });
        let mode = if paths.iter().any(|p| p.mode == Some(EnforcingMode::Strict)) {
            Some(EnforcingMode::Strict)
        } else if paths.iter().any(|p| p.kind == PathKind::BranchEni) {
            Some(EnforcingMode::Standard)
        } else {
            None
        };
        let primary_eni = node
            .table(TABLE_MAIN)
            .find(|r| r.is_default() && r.family == super::Family::Ipv4)
            .and_then(|r| r.oif.clone());
        let mut topo = Topology {
            mode,
            primary_eni,
            trunks,
            vlan_links,
            host_veths,
            paths,
            enis: Vec::new(),
        };
        topo.enis = super::eni::all(node, &topo);
        topo.label(node, veth_prefix);
        topo
    }

    /// Names each path's pod (from the cluster) and ENI (from the annotation or IPAMD),
    /// and each branch ENI by its pod's annotation.
    fn label(&mut self, node: &Node, veth_prefix: &str) {
        for p in &mut self.paths {
            if let Some(cluster) = node.cluster.as_deref()
                && let Some((pod, by)) = cluster.pod_of(p.pod_ip, &p.host_veth, veth_prefix)
            {
                p.pod = Some(super::k8s::pod_ref(cluster, pod, by));
            }
            p.eni_id = match p.kind {
                PathKind::BranchEni => p.pod.as_ref().and_then(|r| r.branch_eni.clone()),
                PathKind::NodeEni => p.pod_ip.and_then(|ip| {
                    node.ipamd
                        .iter()
                        .flatten()
                        .find(|e| e.addresses.contains(&ip))
                        .map(|e| e.id.clone())
                }),
            };
            if p.kind == PathKind::BranchEni
                && let (Some(id), Some(vlan)) = (&p.eni_id, p.vlan_id)
                && let Some(e) = self
                    .enis
                    .iter_mut()
                    .find(|e| e.vlan_id == Some(vlan) && e.kind == super::eni::EniKind::Branch)
            {
                e.id = Some(id.clone());
            }
        }
    }

    pub fn vlan_link(&self, vlan_id: u16) -> Option<&VlanLink> {
        self.vlan_links.iter().find(|v| v.vlan_id == vlan_id)
    }

    pub fn path_of_veth(&self, veth: &str) -> Option<&Path> {
        self.paths.iter().find(|p| p.host_veth == veth)
    }

    /// Paths of strict-mode branch pods.
    pub fn strict_paths(&self) -> impl Iterator<Item = &Path> {
        self.paths
            .iter()
            .filter(|p| p.mode == Some(EnforcingMode::Strict))
    }
}

fn vlan_link(node: &Node, link: &Link) -> Option<VlanLink> {
    if link.kind != LinkKind::Vlan || !link.name.starts_with(VLAN_LINK_PREFIX) {
        return None;
    }
    let vlan_id = link
        .vlan_id
        .or_else(|| cni::vlan_id_from_name(&link.name))?;
    // With IFLA_LINK_NETNSID set, the parent was moved to another namespace and IFLA_LINK
    // is an ifindex over there: it must not be matched against this namespace's links.
    let parent_elsewhere = link.peer_netns_id.is_some();
    let parent = link
        .link_ifindex
        .filter(|_| !parent_elsewhere)
        .and_then(|i| node.link(i));
    Some(VlanLink {
        name: link.name.clone(),
        ifindex: link.ifindex,
        vlan_id,
        trunk: parent.map(|p| p.name.clone()),
        parent_ifindex: link.link_ifindex,
        parent_elsewhere,
        mtu: link.mtu,
        mac: link.mac.clone(),
        up: link.is_up(),
    })
}

fn trunks(node: &Node, vlans: &[VlanLink]) -> Vec<Trunk> {
    let parents: BTreeSet<u32> = vlans
        .iter()
        .filter(|v| v.trunk.is_some())
        .filter_map(|v| v.parent_ifindex)
        .collect();
    parents
        .into_iter()
        .filter_map(|ifindex| node.link(ifindex))
        .map(|l| {
            let mut ids: Vec<u16> = vlans
                .iter()
                .filter(|v| v.parent_ifindex == Some(l.ifindex))
                .map(|v| v.vlan_id)
                .collect();
            ids.sort_unstable();
            Trunk {
                name: l.name.clone(),
                ifindex: l.ifindex,
                mtu: l.mtu,
                up: l.is_up(),
                vlans: ids,
            }
        })
        .collect()
}

fn host_veth(link: &Link, veth_prefix: &str) -> Option<HostVeth> {
    if link.kind != LinkKind::Veth {
        return None;
    }
    let role =
        if link.name.starts_with(STRICT_VETH_PREFIX) && !link.name.starts_with(VLAN_LINK_PREFIX) {
            VethRole::StrictBranch
        } else if link.name.starts_with(veth_prefix) {
            VethRole::Eni
        } else {
            return None;
        };
    Some(HostVeth {
        name: link.name.clone(),
        ifindex: link.ifindex,
        role,
        mtu: link.mtu,
        peer_netns_id: link.peer_netns_id,
    })
}

/// Whether an address can be a pod's: not loopback, not link-local (the veth's own
/// fe80:: address has a /128 local route through it).
fn global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    }
}

/// The pod address a veth carries: a host route through it (main table first), else the
/// global address of its peer in the pod's namespace.
fn pod_ip_of(node: &Node, veth: &str) -> Option<(IpAddr, Option<u32>)> {
    let mut routes: Vec<_> = node
        .routes_via(veth)
        .filter(|r| r.is_host() && r.kind == RouteKind::Unicast && global(&r.dst.addr()))
        .collect();
    routes.sort_by_key(|r| (r.table != TABLE_MAIN, r.family, r.table));
    if let Some(r) = routes.first() {
        return Some((r.dst.addr(), Some(r.table)));
    }
    let addrs = node.pod_addresses.get(veth)?;
    let mut ips: Vec<IpAddr> = addrs.iter().map(|n| n.addr()).filter(global).collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.first().map(|ip| (*ip, None))
}

fn path(node: &Node, vlans: &[VlanLink], veth: &HostVeth) -> Path {
    let found = pod_ip_of(node, &veth.name);
    let pod_ip = found.map(|(ip, _)| ip);
    let from_rule = pod_ip.and_then(|ip| {
        node.rules.iter().find(|r| {
            r.priority == priority::FROM_POD && r.is_from_host(ip) && r.lookup_table().is_some()
        })
    });
    let (kind, mode, route_table) = match veth.role {
        VethRole::StrictBranch => {
            let iif = node.rules.iter().find(|r| {
                r.priority == priority::VLAN_IIF
                    && r.iif.as_deref() == Some(veth.name.as_str())
                    && r.lookup_table().is_some()
            });
            // Without its iif rule the pod's table is still the one holding its route.
            let table = iif
                .map(|r| r.table)
                .or(found.and_then(|(_, t)| t))
                .unwrap_or(TABLE_MAIN);
            (PathKind::BranchEni, Some(EnforcingMode::Strict), table)
        }
        VethRole::Eni => match from_rule {
            Some(r) if cni::vlan_of_table(r.table).is_some() => {
                (PathKind::BranchEni, Some(EnforcingMode::Standard), r.table)
            }
            Some(r) => (PathKind::NodeEni, None, r.table),
            None => (PathKind::NodeEni, None, TABLE_MAIN),
        },
    };
    // The VLAN is the one whose table routes the pod; the first iif rule (what the kernel
    // uses, `route_table`) may be a stale one pointing elsewhere (VPC CNI #1375).
    let vlan_id = match kind {
        PathKind::BranchEni => found
            .and_then(|(_, t)| t)
            .filter(|_| mode == Some(EnforcingMode::Strict))
            .and_then(cni::vlan_of_table)
            .or_else(|| cni::vlan_of_table(route_table)),
        PathKind::NodeEni => None,
    };
    let vlan = vlan_id.and_then(|id| vlans.iter().find(|v| v.vlan_id == id));
    let rules = steering_rules(
        &node.rules,
        &veth.name,
        vlan.map(|v| v.name.as_str()),
        pod_ip,
    );
    Path {
        kind,
        mode,
        pod_ip,
        host_veth: veth.name.clone(),
        vlan_id,
        vlan_link: vlan.map(|v| v.name.clone()),
        trunk: vlan.and_then(|v| v.trunk.clone()),
        route_table,
        rules,
        eni_id: None,
        pod: None,
        counters: None,
        window: None,
    }
}

/// Rules that name the pod: `iif` its veth or VLAN link, `from`/`to` its address.
fn steering_rules(
    rules: &[Rule],
    veth: &str,
    vlan: Option<&str>,
    pod_ip: Option<IpAddr>,
) -> Vec<PathRule> {
    let mut out: Vec<PathRule> = rules
        .iter()
        .filter(|r| {
            let iif = r.iif.as_deref();
            iif == Some(veth)
                || (vlan.is_some() && iif == vlan)
                || pod_ip.is_some_and(|ip| r.is_from_host(ip) || r.is_to_host(ip))
        })
        .map(PathRule::from)
        .collect();
    out.sort_by(|a, b| (a.priority, &a.selector).cmp(&(b.priority, &b.selector)));
    out
}
