//! A route in any table (`ip route show table all`), plain data.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::{Family, rule::table_name};

/// rtm_type of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Other,
}

/// rtm_scope of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteScope {
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

/// One route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub family: Family,
    /// The real table id (RTA_TABLE), so ids above 255 are kept.
    pub table: u32,
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface name, resolved from RTA_OIF; `None` when the route has none.
    pub oif: Option<String>,
    pub scope: RouteScope,
    pub kind: RouteKind,
    pub prefsrc: Option<IpAddr>,
}

impl Route {
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }

    /// A route to exactly one address (`/32` or `/128`).
    pub fn is_host(&self) -> bool {
        self.dst.prefix_len() == self.dst.max_prefix_len()
    }

    pub fn goes_via(&self, dev: &str) -> bool {
        self.oif.as_deref() == Some(dev)
    }
}

impl fmt::Display for Route {
    /// `default via 192.168.0.1 dev vlan.eth.1 table 101`, as `ip route show table all` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Local => write!(f, "local ")?,
            RouteKind::Broadcast => write!(f, "broadcast ")?,
            RouteKind::Blackhole => write!(f, "blackhole ")?,
            RouteKind::Unreachable => write!(f, "unreachable ")?,
            RouteKind::Prohibit => write!(f, "prohibit ")?,
            other => write!(f, "{other:?} ")?,
        }
        if self.is_default() {
            write!(f, "default")?;
        } else if self.is_host() {
            write!(f, "{}", self.dst.addr())?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.oif {
            write!(f, " dev {dev}")?;
        }
        if self.table != super::TABLE_MAIN {
            write!(f, " table {}", table_name(self.table))?;
        }
        if self.scope == RouteScope::Link {
            write!(f, " scope link")?;
        }
        Ok(())
    }
}
