//! Links of the node's namespace over rtnetlink (`ip -d link show`).

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage, State,
};
use rtnetlink::Handle;

use super::CollectError;
use crate::model::{Link, LinkKind, OperState};

/// Dump every link (RTM_GETLINK with NLM_F_DUMP).
///
/// # Errors
/// [`CollectError::Netlink`] when the dump fails.
pub async fn dump(handle: &Handle) -> Result<Vec<Link>, CollectError> {
    let msgs: Vec<LinkMessage> =
        handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| CollectError::Netlink {
                what: "links",
                source,
            })?;
    Ok(msgs.iter().map(from_message).collect())
}

/// Convert one RTM_NEWLINK message. Addresses are filled in later.
pub fn from_message(msg: &LinkMessage) -> Link {
    let mut link = Link::new(msg.header.index, String::new(), LinkKind::Device);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Link(i) => link.link_ifindex = Some(*i),
            LinkAttribute::Controller(i) => link.master_ifindex = Some(*i),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::OperState(s) => link.oper_state = oper_state(*s),
            LinkAttribute::Address(a) if !a.is_empty() => link.mac = Some(mac(a)),
            LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = kind(k),
                        LinkInfo::Data(InfoData::Vlan(vlan)) => {
                            link.vlan_id = vlan.iter().find_map(|v| match v {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind(k: &InfoKind) -> LinkKind {
    match k {
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Vlan => LinkKind::Vlan,
        InfoKind::Dummy => LinkKind::Dummy,
        InfoKind::Bridge => LinkKind::Bridge,
        other => LinkKind::Other(other.to_string()),
    }
}

fn oper_state(s: State) -> OperState {
    match s {
        State::Up => OperState::Up,
        State::Down => OperState::Down,
        State::LowerLayerDown => OperState::LowerLayerDown,
        State::Dormant => OperState::Dormant,
        State::NotPresent => OperState::NotPresent,
        State::Testing => OperState::Testing,
        _ => OperState::Unknown,
    }
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vlan_msg(index: u32, name: &str, id: u16, parent: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Link(parent),
            LinkAttribute::Mtu(9001),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::Address(vec![0x06, 0x74, 0x5b, 0x7b, 0x54, 0x3a]),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vlan),
                LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
            ]),
        ];
        m
    }

    #[test]
    fn vlan_link_keeps_id_parent_and_mac() {
        let l = from_message(&vlan_msg(7, "vlan.eth.3", 3, 4));
        assert_eq!(l.kind, LinkKind::Vlan);
        assert_eq!(l.vlan_id, Some(3));
        assert_eq!(l.link_ifindex, Some(4));
        assert_eq!(l.mac.as_deref(), Some("06:74:5b:7b:54:3a"));
        assert_eq!(l.oper_state, OperState::Up);
    }

    #[test]
    fn link_without_kind_is_a_device() {
        let mut m = LinkMessage::default();
        m.header.index = 2;
        m.attributes = vec![LinkAttribute::IfName("eth0".into())];
        let l = from_message(&m);
        assert_eq!(l.kind, LinkKind::Device);
        assert_eq!(l.link_ifindex, None);
    }
}
