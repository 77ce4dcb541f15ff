//! A network interface as the node sees it (`ip -d link show`), plain data.

use ipnet::IpNet;
use serde::Serialize;

/// What kind of device a link is (IFLA_INFO_KIND), as far as sgpath cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// A link with no IFLA_INFO_KIND: a physical NIC such as an ENA ENI, or loopback.
    Device,
    Veth,
    Vlan,
    Dummy,
    Bridge,
    /// Any other kind, named as the kernel names it.
    Other(String),
}

/// IFLA_OPERSTATE (RFC 2863 operational state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperState {
    Up,
    Down,
    LowerLayerDown,
    Dormant,
    NotPresent,
    Testing,
    /// The kernel does not know (common for veth before carrier, lo, dummy).
    Unknown,
}

/// One link in the node's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    /// IFLA_VLAN_ID for a VLAN link.
    pub vlan_id: Option<u16>,
    /// IFLA_LINK: the parent of a VLAN link, or the peer's ifindex (in `peer_netns_id`) for a veth.
    pub link_ifindex: Option<u32>,
    /// IFLA_MASTER: the bridge or bond this link is enslaved to.
    pub master_ifindex: Option<u32>,
    pub mtu: Option<u32>,
    pub oper_state: OperState,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// IFLA_LINK_NETNSID: the netns id (as this namespace numbers it) of a veth's peer.
    pub peer_netns_id: Option<i32>,
    /// Addresses configured on this link (`ip addr show dev <name>`).
    pub addresses: Vec<IpNet>,
}

impl Link {
    /// A link of which only the index, name and kind are known yet.
    pub fn new(ifindex: u32, name: impl Into<String>, kind: LinkKind) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind,
            vlan_id: None,
            link_ifindex: None,
            master_ifindex: None,
            mtu: None,
            oper_state: OperState::Unknown,
            mac: None,
            peer_netns_id: None,
            addresses: Vec::new(),
        }
    }

    /// A link is up for traffic when its operational state is up or unknown (loopback and
    /// dummies report unknown; a link that is administratively down reports down).
    pub fn is_up(&self) -> bool {
        matches!(self.oper_state, OperState::Up | OperState::Unknown)
    }
}
