//! The kernel's own answers, per pod, for the addresses every pod needs: its VPC gateway,
//! the node's primary IP (kubelet), every address only this node can deliver (NodeLocal
//! DNSCache, the EKS Pod Identity agent, kube-ipvs0...) and instance metadata. `collect`
//! asks (`ip route get <addr> from <pod ip> iif <host veth>`); checks judge the answers
//! instead of re-deriving them from the tables. Plain data and pure planning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::{
    Family, LinkKind, Node, Route, TABLE_MAIN, Topology,
    fib::Flow,
    trace::{self, Leg},
};

/// Why the kernel refused a route lookup: the errno of RTM_GETROUTE, as
/// `ip route get` prints it ("RTNETLINK answers: Invalid cross-device link").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// EXDEV: the reverse path filter (rp_filter) refused the packet's source.
    ReversePath,
    /// ENETUNREACH: no route (or an `unreachable` rule).
    NetUnreachable,
    /// EHOSTUNREACH: an `unreachable` route, or forwarding is off on the interface.
    HostUnreachable,
    /// EACCES: a `prohibit` route or rule.
    Prohibited,
    /// EINVAL: a `blackhole` route or rule, or a martian source or destination.
    Invalid,
    /// ENODEV: the interface is down or gone.
    NoDevice,
    /// Any other errno.
    Other(i32),
}

impl Refusal {
    pub fn from_errno(e: i32) -> Refusal {
        match e {
            libc::EXDEV => Refusal::ReversePath,
            libc::ENETUNREACH => Refusal::NetUnreachable,
            libc::EHOSTUNREACH => Refusal::HostUnreachable,
            libc::EACCES => Refusal::Prohibited,
            libc::EINVAL => Refusal::Invalid,
            libc::ENODEV => Refusal::NoDevice,
            other => Refusal::Other(other),
        }
    }

    /// The errno's name with what it means for a route lookup:
    /// `EXDEV (reverse path filter)`.
    pub fn name(self) -> String {
        match self {
            Refusal::ReversePath => "EXDEV (reverse path filter)".into(),
            Refusal::NetUnreachable => "ENETUNREACH (no route)".into(),
            Refusal::HostUnreachable => "EHOSTUNREACH (host unreachable)".into(),
            Refusal::Prohibited => "EACCES (prohibited)".into(),
            Refusal::Invalid => "EINVAL (invalid route or martian address)".into(),
            Refusal::NoDevice => "ENODEV (interface down or gone)".into(),
            Refusal::Other(e) => format!("errno {e}"),
        }
    }
}

/// The kernel's answer to one lookup: the route it matched (in its real table) or why it
/// refused.
pub type Answer = Result<Route, Refusal>;

/// What an address is to the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// The VPC subnet gateway the pod's table routes through (`default via <gw>`).
    Gateway,
    /// The node's primary IP (kubelet; the source of liveness and readiness probes).
    NodeIp,
    /// An address of a node interface that only this node can deliver: NodeLocal
    /// DNSCache's 169.254.20.10, the Pod Identity agent's 169.254.170.23, kube-ipvs0's
    /// service IPs. The VPC never brings a packet for it back.
    Service {
        /// The interface that owns the address (`nodelocaldns`, `pod-id-link0`).
        link: String,
    },
    /// Instance metadata (169.254.169.254, fd00:ec2::254).
    InstanceMetadata,
}

/// Instance metadata over IPv4.
pub const IMDS_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
/// Instance metadata over IPv6 (Nitro).
pub const IMDS_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254));

/// At most this many addresses of one service interface are looked up per pod: kube-proxy's
/// IPVS dummy `kube-ipvs0` holds every service IP, and the first few tell as much as all.
pub const MAX_ADDRESSES_PER_SERVICE_LINK: usize = 8;

/// One question sgpath asks the kernel about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub host_veth: String,
    /// The host veth's ifindex (the lookup's `iif`).
    pub ifindex: u32,
    pub pod_ip: IpAddr,
    pub target: Target,
    pub addr: IpAddr,
}

impl Question {
    /// Whether the node's answer back to the pod is looked up too (addresses of this node
    /// that only it can deliver: the service answers from them).
    pub fn asks_reply(&self) -> bool {
        matches!(self.target, Target::Service { .. })
    }
}

/// The kernel's answers to one question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lookup {
    pub host_veth: String,
    pub pod_ip: IpAddr,
    pub target: Target,
    pub addr: IpAddr,
    /// The pod's packet: `ip route get <addr> from <pod ip> iif <host veth>`.
    pub forward: Answer,
    /// The service's answer to the pod: `ip route get <pod ip> from <addr>`; only for
    /// [`Target::Service`].
    pub reply: Option<Answer>,
}

impl Lookup {
    /// Whether the kernel delivers the pod's packet on the node itself (a local route).
    pub fn delivered_locally(&self) -> bool {
        self.forward
            .as_ref()
            .is_ok_and(|r| r.kind == super::RouteKind::Local)
    }

    /// The pod's packet as the rules see it.
    pub fn forward_flow(&self) -> Flow<'_> {
        Flow {
            iif: Some(&self.host_veth),
            src: Some(self.pod_ip),
            dst: self.addr,
            ipproto: None,
        }
    }

    /// The answer from the address, sent by the node itself.
    pub fn reply_flow(&self) -> Flow<'_> {
        Flow {
            iif: None,
            src: Some(self.addr),
            dst: self.pod_ip,
            ipproto: None,
        }
    }

    /// The forward answer explained: rule, table, egress, VPC drop, why refused.
    pub fn forward_leg(&self, node: &Node, topo: &Topology) -> Leg {
        trace::leg(node, topo, &self.forward_flow(), &self.forward)
    }

    /// The reply answer explained, when it was looked up.
    pub fn reply_leg(&self, node: &Node, topo: &Topology) -> Option<Leg> {
        self.reply
            .as_ref()
            .map(|a| trace::leg(node, topo, &self.reply_flow(), a))
    }

    /// Whether the answer from the address goes straight back into the pod's host veth.
    pub fn reply_reaches_pod(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|a| a.as_ref().is_ok_and(|r| r.goes_via(&self.host_veth)))
    }
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv6() {
        Family::Ipv6
    } else {
        Family::Ipv4
    }
}

/// Addresses a packet can be sent to: not loopback, not multicast, not IPv6 link-local
/// (those belong to one link and never leave it).
fn addressable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_multicast() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback()
                && !v6.is_multicast()
                && !v6.is_unspecified()
                && !v6.is_unicast_link_local()
        }
    }
}

/// Links that are ENIs of the node: the primary ENI, the trunks, and any link a table's
/// default route leaves by that is not a branch ENI's VLAN (secondary ENIs, table
/// device index + 1).
pub fn node_eni_links(node: &Node, topo: &Topology) -> Vec<String> {
    let mut out: Vec<String> = topo.primary_eni.iter().cloned().collect();
    out.extend(topo.trunks.iter().map(|t| t.name.clone()));
    for r in node.routes.iter().filter(|r| r.is_default()) {
        if let Some(dev) = &r.oif
            && !topo.vlan_links.iter().any(|v| &v.name == dev)
            && !out.contains(dev)
        {
            out.push(dev.clone());
        }
    }
    out
}

/// Addresses only this node can deliver, with the interface that owns each: every
/// address of a node interface that is not an ENI, a VLAN link, a pod's veth or loopback.
pub fn service_addresses(node: &Node, topo: &Topology) -> Vec<(String, IpAddr)> {
    let enis = node_eni_links(node, topo);
    let mut out = Vec::new();
    for l in &node.links {
        let skip = l.name == "lo"
            || enis.contains(&l.name)
            || topo.vlan_links.iter().any(|v| v.name == l.name)
            || topo.host_veths.iter().any(|v| v.name == l.name)
            || (l.kind == LinkKind::Vlan
                && topo
                    .trunks
                    .iter()
                    .any(|t| Some(t.ifindex) == l.link_ifindex));
        if skip {
            continue;
        }
        let mut addrs: Vec<IpAddr> = l
            .addresses
            .iter()
            .map(|a| a.addr())
            .filter(|a| addressable(*a))
            .collect();
        addrs.sort();
        addrs.dedup();
        out.extend(
            addrs
                .into_iter()
                .take(MAX_ADDRESSES_PER_SERVICE_LINK)
                .map(|a| (l.name.clone(), a)),
        );
    }
    out
}

/// Every question to ask the kernel for every pod whose address and host veth are known,
/// in pod order: its gateway, the node's primary IP, each service address and instance
/// metadata, of the pod address's family.
pub fn questions(node: &Node, topo: &Topology) -> Vec<Question> {
    let services = service_addresses(node, topo);
    let node_ip = |family: Family| {
        let eni = topo.primary_eni.as_deref()?;
        node.link_by_name(eni)?
            .addresses
            .iter()
            .map(|a| a.addr())
            .find(|a| family_of(*a) == family && addressable(*a) && !is_link_local(*a))
    };
    let mut out = Vec::new();
    for p in &topo.paths {
        let (Some(pod_ip), Some(veth)) = (
            p.pod_ip,
            topo.host_veths.iter().find(|v| v.name == p.host_veth),
        ) else {
            continue;
        };
        let family = family_of(pod_ip);
        let gateway = [p.route_table, TABLE_MAIN].into_iter().find_map(|t| {
            node.table(t)
                .find(|r| r.is_default() && r.family == family && r.gateway.is_some())
                .and_then(|r| r.gateway)
        });
        let imds = if family == Family::Ipv4 {
            IMDS_V4
        } else {
            IMDS_V6
        };
        let mut targets: Vec<(Target, IpAddr)> = Vec::new();
        if let Some(gw) = gateway {
            targets.push((Target::Gateway, gw));
        }
        if let Some(ip) = node_ip(family) {
            targets.push((Target::NodeIp, ip));
        }
        for (link, addr) in services.iter().filter(|(_, a)| family_of(*a) == family) {
            targets.push((Target::Service { link: link.clone() }, *addr));
        }
        targets.push((Target::InstanceMetadata, imds));
        for (target, addr) in targets {
            out.push(Question {
                host_veth: p.host_veth.clone(),
                ifindex: veth.ifindex,
                pod_ip,
                target,
                addr,
            });
        }
    }
    out
}

/// IPv4 169.254.0.0/16 or IPv6 fe80::/10.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Link, OperState};

    fn link(ifindex: u32, name: &str, kind: LinkKind, addrs: &[&str]) -> Link {
        Link {
            oper_state: OperState::Up,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            peer_netns_id: (kind == LinkKind::Veth).then_some(0),
            ..Link::new(ifindex, name, kind)
        }
    }

    fn route(table: u32, dst: &str, gw: Option<&str>, dev: &str) -> Route {
        crate::model::fixtures::uni(table, dst, gw, dev)
    }

    fn node() -> Node {
        Node {
            links: vec![
                link(1, "lo", LinkKind::Device, &["127.0.0.1/8", "::1/128"]),
                link(
                    2,
                    "eth0",
                    LinkKind::Veth,
                    &["192.168.1.10/16", "fe80::1/64"],
                ),
                link(3, "eth2", LinkKind::Device, &["192.168.2.20/16"]),
                link(7, "eni3bbf5fcab96", LinkKind::Veth, &["fe80::2/64"]),
                link(8, "nodelocaldns", LinkKind::Dummy, &["169.254.20.10/32"]),
                link(
                    9,
                    "pod-id-link0",
                    LinkKind::Dummy,
                    &["169.254.170.23/32", "fd00:ec2::23/128", "fe80::3/64"],
                ),
            ],
            routes: vec![
                route(254, "0.0.0.0/0", Some("192.168.0.1"), "eth0"),
                route(3, "0.0.0.0/0", Some("192.168.0.1"), "eth2"),
                route(254, "192.168.7.31/32", None, "eni3bbf5fcab96"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn services_are_addresses_of_interfaces_that_are_no_eni() {
        let n = node();
        let topo = Topology::from_node(&n);
        assert_eq!(node_eni_links(&n, &topo), ["eth0", "eth2"]);
        let s = service_addresses(&n, &topo);
        let s: Vec<(&str, String)> = s.iter().map(|(l, a)| (l.as_str(), a.to_string())).collect();
        assert_eq!(
            s,
            [
                ("nodelocaldns", "169.254.20.10".to_string()),
                ("pod-id-link0", "169.254.170.23".to_string()),
                ("pod-id-link0", "fd00:ec2::23".to_string()),
            ]
        );
    }

    #[test]
    fn an_ipv4_pod_asks_for_its_gateway_node_services_and_metadata() {
        let n = node();
        let topo = Topology::from_node(&n);
        let q = questions(&n, &topo);
        let got: Vec<(Target, String)> = q
            .iter()
            .map(|q| (q.target.clone(), q.addr.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (Target::Gateway, "192.168.0.1".to_string()),
                (Target::NodeIp, "192.168.1.10".to_string()),
                (
                    Target::Service {
                        link: "nodelocaldns".into()
                    },
                    "169.254.20.10".to_string()
                ),
                (
                    Target::Service {
                        link: "pod-id-link0".into()
                    },
                    "169.254.170.23".to_string()
                ),
                (Target::InstanceMetadata, "169.254.169.254".to_string()),
            ]
        );
        assert!(
            q.iter()
                .all(|q| q.ifindex == 7 && q.pod_ip.to_string() == "192.168.7.31")
        );
        assert_eq!(q.iter().filter(|q| q.asks_reply()).count(), 2);
    }

    #[test]
    fn kube_ipvs0_is_capped() {
        let mut n = node();
        let addrs: Vec<String> = (1..=40).map(|i| format!("10.100.0.{i}/32")).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        n.links
            .push(link(10, "kube-ipvs0", LinkKind::Dummy, &addrs));
        let topo = Topology::from_node(&n);
        let s = service_addresses(&n, &topo);
        assert_eq!(
            s.iter().filter(|(l, _)| l == "kube-ipvs0").count(),
            MAX_ADDRESSES_PER_SERVICE_LINK
        );
    }

    #[test]
    fn errnos_have_names() {
        assert_eq!(Refusal::from_errno(libc::EXDEV), Refusal::ReversePath);
        assert_eq!(
            Refusal::from_errno(libc::EXDEV).name(),
            "EXDEV (reverse path filter)"
        );
        assert_eq!(Refusal::from_errno(5).name(), "errno 5");
    }
}
