//! Addresses inside pod namespaces, read from the node's namespace without entering them
//! (`ip -n <pod netns> addr show dev eth0`): RTM_GETADDR with IFA_TARGET_NETNSID, keyed by
//! the netns id a host veth reports for its peer. Needs a strict-checking socket and
//! kernel >= 4.20.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use super::{CollectError, addresses};
use crate::model::{Link, LinkKind, ReadWarning};

/// For each veth with a peer in another namespace, the addresses of that peer, by veth
/// name. A namespace that cannot be read yields a warning, not an error.
pub async fn dump(
    links: &[Link],
) -> Result<(BTreeMap<String, Vec<IpNet>>, Vec<ReadWarning>), CollectError> {
    let veths_with_peers = links
        .iter()
        .filter(|l| l.kind == LinkKind::Veth && l.peer_netns_id.is_some())
        .count();
    // Without CAP_NET_ADMIN the kernel does not fail the dump: it ends it empty (the
    // EPERM hides in NLMSG_DONE), so ask for the capability up front.
    if veths_with_peers > 0 && !super::caps::has(super::caps::Capability::NetAdmin) {
        let msg = format!(
            "pod namespaces of {veths_with_peers} veths not read: reading another namespace needs CAP_NET_ADMIN"
        );
        return Ok((
            BTreeMap::new(),
            vec![ReadWarning::new("pod namespaces", msg)],
        ));
    }
    let (conn, handle, _) = rtnetlink::new_connection_with_strict_check()
        .map_err(|source| CollectError::Socket { source })?;
    let conn = tokio::spawn(conn);
    let mut by_nsid: BTreeMap<i32, Vec<(u32, IpNet)>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut warnings = Vec::new();
    for l in links.iter().filter(|l| l.kind == LinkKind::Veth) {
        let (Some(nsid), Some(peer)) = (l.peer_netns_id, l.link_ifindex) else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = by_nsid.entry(nsid) {
            let mut req = handle.address().get();
            req.message_mut()
                .attributes
                .push(AddressAttribute::TargetNetNsId(nsid));
            let addrs = match req.execute().try_collect::<Vec<AddressMessage>>().await {
                Ok(msgs) => msgs.iter().filter_map(addresses::from_message).collect(),
                Err(e) => {
                    let why = match &e {
                        // rtnl_get_net_ns_capable() answers EACCES; EPERM for good measure.
                        rtnetlink::Error::NetlinkError(m)
                            if [libc::EACCES, libc::EPERM].contains(&-m.raw_code()) =>
                        {
                            "permission denied: reading another namespace needs CAP_NET_ADMIN"
                                .to_string()
                        }
                        other => other.to_string(),
                    };
                    let msg = format!(
                        "pod namespace of {} (netns id {nsid}): addresses unreadable, {why}",
                        l.name
                    );
                    warnings.push(ReadWarning::new(l.name.clone(), msg));
                    Vec::new()
                }
            };
            slot.insert(addrs);
        }
        let addrs: Vec<IpNet> = by_nsid[&nsid]
            .iter()
            .filter(|(i, _)| *i == peer)
            .map(|(_, n)| *n)
            .collect();
        if !addrs.is_empty() {
            out.insert(l.name.clone(), addrs);
        }
    }
    conn.abort();
    Ok((out, warnings))
}
