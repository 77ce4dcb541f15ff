//! Topology change notifications: an rtnetlink socket subscribed to the link, address,
//! route and rule groups (what `ip monitor link address route rule` prints). Each batch of
//! notifications is one "something changed" tick; the caller re-reads the node. A lost
//! notification (ENOBUFS, the socket overflowed) is a tick too: a re-read is a full resync.
//! Side effects: one netlink socket, closed when the [`Watch`] drops.

use futures::StreamExt;
use rtnetlink::sys::{AsyncSocket, SocketAddr};

use super::CollectError;

/// Multicast groups (RTMGRP_* bit masks, linux/rtnetlink.h).
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32
    // RTNLGRP_IPV4_RULE (8) and RTNLGRP_IPV6_RULE (19) have no RTMGRP_* constant.
    | 1 << (8 - 1)
    | 1 << (19 - 1);

/// A subscription; [`Watch::changed`] waits for the next change.
pub struct Watch {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        SocketAddr,
    )>,
    conn: tokio::task::JoinHandle<()>,
    /// What the messages taken so far say, until a `changed` call returns it.
    pending: Option<Tick>,
}

impl Watch {
    /// Subscribes in the calling thread's network namespace.
    ///
    /// # Errors
    /// [`CollectError::Socket`] when the socket cannot be opened or bound.
    pub fn new() -> Result<Watch, CollectError> {
        let (mut conn, _handle, messages) =
            rtnetlink::new_connection().map_err(|source| CollectError::Socket { source })?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, GROUPS))
            .map_err(|source| CollectError::Socket { source })?;
        Ok(Watch {
            messages,
            conn: tokio::spawn(conn),
            pending: None,
        })
    }

    /// Waits for the next notification, then drains whatever else is already queued, so a
    /// burst (a pod's veth, addresses, routes and rules) is one tick. `None` when the socket
    /// closed.
    ///
    /// Cancel-safe: the agent's loop drops this future whenever another branch wins, and a
    /// message taken before that (an overrun, say) stays in `pending` for the next call.
    pub async fn changed(&mut self) -> Option<Tick> {
        if self.pending.is_none() {
            let first = self.messages.next().await?;
            self.pending = Some(Tick::of(&first.0));
        }
        // The CNI adds a pod's veth, address, routes and rules within milliseconds.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        while let Ok((message, _)) = self.messages.try_recv() {
            self.pending = self.pending.max(Some(Tick::of(&message)));
        }
        self.pending.take()
    }
}

/// What a [`Watch::changed`] tick says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tick {
    /// Notifications arrived: something changed.
    Changed,
    /// The socket overflowed (ENOBUFS, which netlink-proto turns into an `NLMSG_OVERRUN`
    /// message): notifications were lost, only a full re-read is right.
    Overrun,
}

impl Tick {
    fn of<T>(message: &rtnetlink::packet_core::NetlinkMessage<T>) -> Tick {
        match message.payload {
            rtnetlink::packet_core::NetlinkPayload::Overrun(_) => Tick::Overrun,
            _ => Tick::Changed,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
