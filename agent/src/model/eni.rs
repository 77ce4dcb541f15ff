//! Which ENI owns which address, as the VPC knows it: the VPC drops a packet whose source
//! is not an address of the ENI it leaves by (the source/destination check, on by default
//! for every ENI of an EKS node). A branch ENI owns exactly its pod's addresses; a node ENI
//! its own addresses and the secondary IPs of the ordinary pods it carries. Pure.

use std::net::IpAddr;

use serde::Serialize;

use super::{Node, Path, PathKind, Topology, ipamd::IpamdEni, lookup};

/// What kind of ENI a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EniKind {
    /// A branch ENI, seen on the node as its `vlan.eth.N`.
    Branch,
    /// An ENI of the node itself (primary, secondary, trunk).
    Node,
}

/// An ENI as the node sees it: the link a packet leaves by and the addresses the VPC
/// accepts as its sources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eni {
    /// `vlan.eth.7`, `eth0`.
    pub link: String,
    pub kind: EniKind,
    /// The VLAN id of a branch ENI.
    pub vlan_id: Option<u16>,
    /// Addresses the ENI owns, ascending.
    pub owns: Vec<IpAddr>,
    /// The ENI id, when IPAMD (node ENIs) or the pod's annotation (branch ENIs) names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Eni {
    /// `the branch ENI on VLAN 7 (vlan.eth.7)`, `the node ENI eth0`.
    pub fn describe(&self) -> String {
        let id = self
            .id
            .as_deref()
            .map(|i| format!(" {i}"))
            .unwrap_or_default();
        match (self.kind, self.vlan_id) {
            (EniKind::Branch, Some(v)) => format!("the branch ENI{id} on VLAN {v} ({})", self.link),
            (EniKind::Branch, None) => format!("the branch ENI{id} of {}", self.link),
            (EniKind::Node, _) if id.is_empty() => format!("the node ENI {}", self.link),
            (EniKind::Node, _) => format!("the node ENI {} ({})", self.link, id.trim()),
        }
    }

    /// The owned addresses for a sentence: `whose only address is 192.168.26.147`,
    /// `whose addresses are a, b, c and 4 more`, `which owns no address`.
    pub fn owned(&self) -> String {
        const SHOWN: usize = 3;
        let shown: Vec<String> = self
            .owns
            .iter()
            .take(SHOWN)
            .map(|a| a.to_string())
            .collect();
        match self.owns.len() {
            0 => "which owns no address".into(),
            1 => format!("whose only address is {}", shown[0]),
            n if n <= SHOWN => format!("whose addresses are {}", shown.join(", ")),
            n => format!(
                "whose addresses are {} and {} more",
                shown.join(", "),
                n - SHOWN
            ),
        }
    }
}

/// The global addresses of a pod: its path's IP and those of its namespace's `eth0`.
fn pod_addresses(node: &Node, p: &Path) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = p.pod_ip.into_iter().collect();
    if let Some(addrs) = node.pod_addresses.get(&p.host_veth) {
        v.extend(
            addrs
                .iter()
                .map(|a| a.addr())
                .filter(|a| !lookup::is_link_local(*a) && !a.is_loopback()),
        );
    }
    v
}

/// Where the VPC hands a packet for the pod to the node: its branch ENI's VLAN link, or
/// the node ENI whose table routes the pod (`eth0` for a pod in the main table).
pub fn pod_eni(node: &Node, topo: &Topology, from: &Path) -> Option<String> {
    match from.kind {
        PathKind::BranchEni => from.vlan_link.clone(),
        PathKind::NodeEni => node
            .table(from.route_table)
            .find(|r| r.is_default())
            .and_then(|r| r.oif.clone())
            .or_else(|| topo.primary_eni.clone()),
    }
}

/// Every ENI of the node with the addresses it owns: one per `vlan.eth.N` (its branch
/// pod's addresses) and one per node ENI (its own addresses and its ordinary pods').
/// Computed once per snapshot into [`Topology::enis`].
pub fn all(node: &Node, topo: &Topology) -> Vec<Eni> {
    let mut out = Vec::new();
    for v in &topo.vlan_links {
        let mut owns: Vec<IpAddr> = topo
            .paths
            .iter()
            .filter(|p| p.kind == PathKind::BranchEni && p.vlan_id == Some(v.vlan_id))
            .flat_map(|p| pod_addresses(node, p))
            .collect();
        owns.sort();
        owns.dedup();
        out.push(Eni {
            link: v.name.clone(),
            kind: EniKind::Branch,
            vlan_id: Some(v.vlan_id),
            owns,
            id: None,
        });
    }
    // Where each node-ENI pod's table leads, looked up once per table.
    let mut default_of: std::collections::BTreeMap<u32, Option<String>> = Default::default();
    for r in node.routes.iter().filter(|r| r.is_default()) {
        default_of.entry(r.table).or_insert_with(|| r.oif.clone());
    }
    let mut pods: Vec<(String, IpAddr)> = Vec::new();
    for p in topo.paths.iter().filter(|p| p.kind == PathKind::NodeEni) {
        let eni = default_of
            .get(&p.route_table)
            .cloned()
            .flatten()
            .or_else(|| topo.primary_eni.clone());
        if let Some(eni) = eni {
            pods.extend(pod_addresses(node, p).into_iter().map(|a| (eni.clone(), a)));
        }
    }
    for link in lookup::node_eni_links(node, topo) {
        let mut owns: Vec<IpAddr> = node
            .link_by_name(&link)
            .map(|l| {
                l.addresses
                    .iter()
                    .map(|a| a.addr())
                    .filter(|a| !lookup::is_link_local(*a))
                    .collect()
            })
            .unwrap_or_default();
        owns.extend(pods.iter().filter(|(l, _)| *l == link).map(|(_, a)| *a));
        // IPAMD knows every secondary address the VPC gave this ENI, the pods on it
        // whatever their rules say, and the ENI's id.
        let ipamd = ipamd_eni(node, topo, &link);
        if let Some(e) = ipamd {
            owns.extend(e.addresses.iter().copied());
        }
        owns.sort();
        owns.dedup();
        out.push(Eni {
            link,
            kind: EniKind::Node,
            vlan_id: None,
            owns,
            id: ipamd.map(|e| e.id.clone()),
        });
    }
    out
}

/// The IPAMD ENI behind a node link: the primary ENI is the primary link, the trunk the
/// parent of the `vlan.eth.*` links, any other the device of its table's default route
/// (table device index + 1).
fn ipamd_eni<'a>(node: &'a Node, topo: &Topology, link: &str) -> Option<&'a IpamdEni> {
    node.ipamd.as_ref()?.iter().find(|e| {
        if e.is_primary {
            return topo.primary_eni.as_deref() == Some(link);
        }
        if e.is_trunk && topo.trunks.len() == 1 {
            return topo.trunks[0].name == link;
        }
        node.table(super::ipamd::route_table(e))
            .find(|r| r.is_default())
            .and_then(|r| r.oif.as_deref())
            == Some(link)
    })
}

/// The ENI behind a link, `None` when the link is no ENI (a pod's veth, a dummy, `lo`).
pub fn of_link<'a>(topo: &'a Topology, link: &str) -> Option<&'a Eni> {
    topo.enis.iter().find(|e| e.link == link)
}

/// Whether the VPC delivers packets for `ip` to one of this node's ENIs (its own address
/// or one of its pods'), so a packet for it that leaves the node comes back.
pub fn vpc_delivers_here(topo: &Topology, ip: IpAddr) -> bool {
    topo.enis.iter().any(|e| e.owns.contains(&ip))
}

/// The VPC's source/destination check of a packet with source `src` leaving by `link`:
/// `Some(eni)` when `link` is an ENI that does not own `src` (the VPC drops the packet).
pub fn source_check(topo: &Topology, link: &str, src: IpAddr) -> Option<Eni> {
    of_link(topo, link)
        .filter(|e| !e.owns.contains(&src))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnforcingMode, LinkKind, Route, Rule};

    use crate::model::fixtures::link;

    fn route(table: u32, dst: &str, gw: Option<&str>, dev: &str) -> Route {
        crate::model::fixtures::uni(table, dst, gw, dev)
    }

    fn iif_rule(iif: &str, table: u32) -> Rule {
        crate::model::fixtures::rule(10, None, None, Some(iif), table)
    }

    /// Two strict pods on VLANs 1 and 7, one ordinary pod in the main table.
    fn node() -> Node {
        Node {
            links: vec![
                link(2, "eth0", LinkKind::Device, None, &["192.168.1.10/16"]),
                link(3, "eth1", LinkKind::Device, None, &[]),
                link(10, "vlan.eth.1", LinkKind::Vlan, Some(3), &[]),
                link(11, "vlan.eth.7", LinkKind::Vlan, Some(3), &[]),
                link(12, "vlanaaaaaaaaaaa", LinkKind::Veth, None, &[]),
                link(13, "vlanbbbbbbbbbbb", LinkKind::Veth, None, &[]),
                link(14, "eni3bbf5fcab96", LinkKind::Veth, None, &[]),
            ],
            routes: vec![
                route(254, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                route(254, "192.168.7.31/32", None, "eni3bbf5fcab96"),
                route(101, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.1"),
                route(101, "192.168.3.219/32", None, "vlanaaaaaaaaaaa"),
                route(107, "0.0.0.0/0", Some("192.168.0.1"), "vlan.eth.7"),
                route(107, "192.168.26.147/32", None, "vlanbbbbbbbbbbb"),
            ],
            rules: vec![
                iif_rule("vlanaaaaaaaaaaa", 101),
                iif_rule("vlan.eth.1", 101),
                iif_rule("vlanbbbbbbbbbbb", 107),
                iif_rule("vlan.eth.7", 107),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_branch_eni_owns_exactly_its_pod() {
        let n = node();
        let topo = Topology::from_node(&n);
        assert_eq!(topo.paths[0].mode, Some(EnforcingMode::Strict));
        let e = of_link(&topo, "vlan.eth.7").unwrap().clone();
        assert_eq!(e.owns, ["192.168.26.147".parse::<IpAddr>().unwrap()]);
        assert_eq!(e.describe(), "the branch ENI on VLAN 7 (vlan.eth.7)");
        let src: IpAddr = "192.168.3.219".parse().unwrap();
        assert_eq!(source_check(&topo, "vlan.eth.7", src), Some(e));
        assert_eq!(source_check(&topo, "vlan.eth.1", src), None);
    }

    #[test]
    fn a_node_eni_owns_its_address_and_its_ordinary_pods() {
        let n = node();
        let topo = Topology::from_node(&n);
        let e = of_link(&topo, "eth0").unwrap();
        let want: Vec<IpAddr> = ["192.168.1.10", "192.168.7.31"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(e.owns, want);
        assert_eq!(e.owned(), "whose addresses are 192.168.1.10, 192.168.7.31");
        let bastion: IpAddr = "10.0.1.10".parse().unwrap();
        assert!(source_check(&topo, "eth0", bastion).is_some());
        assert_eq!(of_link(&topo, "vlanaaaaaaaaaaa"), None, "a veth is no ENI");
        assert!(vpc_delivers_here(&topo, "192.168.1.10".parse().unwrap()));
        assert!(!vpc_delivers_here(&topo, "169.254.20.10".parse().unwrap()));
    }

    #[test]
    fn ipamd_names_node_enis_and_adds_their_addresses() {
        use crate::model::ipamd::parse_enis;
        let mut n = node();
        n.links.push(link(
            4,
            "eth2",
            LinkKind::Device,
            None,
            &["192.168.2.20/16"],
        ));
        n.routes
            .push(route(3, "0.0.0.0/0", Some("192.168.0.1"), "eth2"));
        n.ipamd = Some(
            parse_enis(
                r#"{"0": {"ENIs": {
                "eni-0prim": {"ID": "eni-0prim", "IsPrimary": true, "DeviceNumber": 0,
                  "AvailableIPv4Cidrs": {"192.168.7.31/32": {"IPAddresses": {"192.168.7.31": {"IPAMMetadata": {"k8sPodNamespace": "default", "k8sPodName": "a"}}}}}},
                "eni-0trunk": {"ID": "eni-0trunk", "IsTrunk": true, "DeviceNumber": 1},
                "eni-0sec": {"ID": "eni-0sec", "DeviceNumber": 2,
                  "AvailableIPv4Cidrs": {"192.168.60.6/32": {"IPAddresses": {"192.168.60.6": {}}}}}}}}"#,
            )
            .unwrap(),
        );
        let topo = Topology::from_node(&n);
        let eth0 = of_link(&topo, "eth0").unwrap();
        assert_eq!(eth0.id.as_deref(), Some("eni-0prim"));
        assert_eq!(eth0.describe(), "the node ENI eth0 (eni-0prim)");
        let eth2 = of_link(&topo, "eth2").unwrap();
        assert_eq!(eth2.id.as_deref(), Some("eni-0sec"));
        // An address IPAMD holds on eth2 is eth2's for the VPC, whatever the rules say.
        let held: IpAddr = "192.168.60.6".parse().unwrap();
        assert!(eth2.owns.contains(&held));
        assert_eq!(source_check(&topo, "eth2", held), None);
        assert!(source_check(&topo, "eth0", held).is_some());
        // The ordinary pod's path is named after the ENI holding its address.
        let p = topo
            .paths
            .iter()
            .find(|p| p.kind == PathKind::NodeEni)
            .unwrap();
        assert_eq!(p.eni_id.as_deref(), Some("eni-0prim"));
    }
}
