//! Routing policy rules over rtnetlink (`ip rule show` and `ip -6 rule show`).

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    rule::{RuleAction as NlAction, RuleAttribute, RuleFlags, RuleMessage},
};
use rtnetlink::{Handle, IpVersion};

use super::CollectError;
use crate::model::{Family, Rule, RuleAction};

/// Dump IPv4 and IPv6 rules (RTM_GETRULE).
///
/// # Errors
/// [`CollectError::Netlink`] when a dump fails. A kernel without IPv6 gives no v6 rules,
/// not an error.
pub async fn dump(handle: &Handle) -> Result<Vec<Rule>, CollectError> {
    let mut rules = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let v6 = version == IpVersion::V6;
        let res: Result<Vec<RuleMessage>, _> =
            handle.rule().get(version).execute().try_collect().await;
        match res {
            Ok(msgs) => rules.extend(msgs.iter().filter_map(from_message)),
            // EAFNOSUPPORT: IPv6 disabled on this kernel.
            Err(_) if v6 => {}
            Err(source) => {
                return Err(CollectError::Netlink {
                    what: "rules",
                    source,
                });
            }
        }
    }
    Ok(rules)
}

/// Convert one RTM_NEWRULE message.
pub fn from_message(msg: &RuleMessage) -> Option<Rule> {
    let family = match msg.header.family {
        AddressFamily::Inet => Family::Ipv4,
        AddressFamily::Inet6 => Family::Ipv6,
        _ => return None,
    };
    let mut rule = Rule {
        family,
        // A rule without FRA_PRIORITY is at priority 0 (the local rule).
        priority: 0,
        src: None,
        dst: None,
        iif: None,
        oif: None,
        fwmark: None,
        fwmask: None,
        ipproto: None,
        action: action(msg.header.action),
        invert: msg.header.flags.contains(RuleFlags::Invert),
        // FRA_TABLE overrides the u8 header field for ids above 255.
        table: u32::from(msg.header.table),
    };
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Source(ip) => rule.src = IpNet::new(*ip, msg.header.src_len).ok(),
            RuleAttribute::Destination(ip) => rule.dst = IpNet::new(*ip, msg.header.dst_len).ok(),
            RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => rule.oif = Some(n.clone()),
            RuleAttribute::FwMark(m) => rule.fwmark = Some(*m),
            RuleAttribute::FwMask(m) => rule.fwmask = Some(*m),
            RuleAttribute::IpProtocol(p) => rule.ipproto = Some(u8::from(*p)),
            RuleAttribute::Table(t) => rule.table = *t,
            _ => {}
        }
    }
    Some(rule)
}

fn action(a: NlAction) -> RuleAction {
    match a {
        NlAction::ToTable => RuleAction::Lookup,
        NlAction::Goto => RuleAction::Goto,
        NlAction::Nop => RuleAction::Nop,
        NlAction::Blackhole => RuleAction::Blackhole,
        NlAction::Unreachable => RuleAction::Unreachable,
        NlAction::Prohibit => RuleAction::Prohibit,
        NlAction::Unspec => RuleAction::Other(0),
        NlAction::Other(o) => RuleAction::Other(o),
        _ => RuleAction::Other(255),
    }
}
