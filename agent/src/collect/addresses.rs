//! Interface addresses over rtnetlink (`ip addr show`).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::Handle;

use super::CollectError;

/// Dump every address (RTM_GETADDR), grouped by ifindex.
///
/// # Errors
/// [`CollectError::Netlink`] when the dump fails.
pub async fn dump(handle: &Handle) -> Result<BTreeMap<u32, Vec<IpNet>>, CollectError> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| CollectError::Netlink {
            what: "addresses",
            source,
        })?;
    let mut by_link: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (ifindex, net) in msgs.iter().filter_map(from_message) {
        by_link.entry(ifindex).or_default().push(net);
    }
    Ok(by_link)
}

/// The interface and prefix of one RTM_NEWADDR message (IFA_LOCAL if present, as for
/// point-to-point links, else IFA_ADDRESS).
pub fn from_message(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    let find = |want_local: bool| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    IpNet::new(ip, msg.header.prefix_len)
        .ok()
        .map(|n| (msg.header.index, n))
}
