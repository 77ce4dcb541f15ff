//! A policy routing rule (`ip rule show` / `ip -6 rule show`), plain data.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::Family;

/// FRA action of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    /// `lookup <table>`
    Lookup,
    Goto,
    Nop,
    Blackhole,
    Unreachable,
    Prohibit,
    Other(u8),
}

/// One routing policy rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    /// FRA_IP_PROTO (`ipproto`), e.g. 58 for ipv6-icmp.
    pub ipproto: Option<u8>,
    pub action: RuleAction,
    /// FIB_RULE_INVERT: the selector is negated (`not from ...`).
    pub invert: bool,
    /// The table looked up; 0 when the action is not `lookup`.
    pub table: u32,
}

impl Rule {
    /// The selector part as `ip rule` prints it: `from all iif vlan.eth.1`.
    pub fn selector(&self) -> String {
        let mut s = if self.invert {
            "not ".to_string()
        } else {
            String::new()
        };
        s += &match self.src {
            Some(src) => format!("from {}", host_or_net(src)),
            None => "from all".to_string(),
        };
        if let Some(dst) = self.dst {
            s.push_str(&format!(" to {}", host_or_net(dst)));
        }
        if let Some(ipproto) = self.ipproto {
            let name = match ipproto {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                58 => "ipv6-icmp".to_string(),
                n => n.to_string(),
            };
            s.push_str(&format!(" ipproto {name}"));
        }
        if let Some(mark) = self.fwmark {
            match self.fwmask {
                Some(mask) if mask != u32::MAX => {
                    s.push_str(&format!(" fwmark {mark:#x}/{mask:#x}"))
                }
                _ => s.push_str(&format!(" fwmark {mark:#x}")),
            }
        }
        if let Some(iif) = &self.iif {
            s.push_str(&format!(" iif {iif}"));
        }
        if let Some(oif) = &self.oif {
            s.push_str(&format!(" oif {oif}"));
        }
        s
    }

    /// Whether the rule selects packets from exactly this address (`from <ip>`).
    pub fn is_from_host(&self, ip: std::net::IpAddr) -> bool {
        !self.invert
            && self
                .src
                .is_some_and(|n| n.addr() == ip && n.prefix_len() == n.max_prefix_len())
    }

    /// Whether the rule selects packets to exactly this address (`to <ip>`).
    pub fn is_to_host(&self, ip: std::net::IpAddr) -> bool {
        !self.invert
            && self
                .dst
                .is_some_and(|n| n.addr() == ip && n.prefix_len() == n.max_prefix_len())
    }

    /// The table a `lookup` rule sends packets to.
    pub fn lookup_table(&self) -> Option<u32> {
        (self.action == RuleAction::Lookup).then_some(self.table)
    }
}

fn host_or_net(n: IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

impl fmt::Display for Rule {
    /// `10: from all iif vlan.eth.1 lookup 101`, as `ip rule show` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.priority, self.selector())?;
        match self.action {
            RuleAction::Lookup => write!(f, " lookup {}", table_name(self.table)),
            RuleAction::Goto => write!(f, " goto"),
            RuleAction::Nop => write!(f, " nop"),
            RuleAction::Blackhole => write!(f, " blackhole"),
            RuleAction::Unreachable => write!(f, " unreachable"),
            RuleAction::Prohibit => write!(f, " prohibit"),
            RuleAction::Other(a) => write!(f, " action {a}"),
        }
    }
}

/// Table name as iproute2 prints it (`main`, `local`, `default`, or the number).
pub fn table_name(table: u32) -> String {
    match table {
        super::TABLE_MAIN => "main".into(),
        super::TABLE_LOCAL => "local".into(),
        super::TABLE_DEFAULT => "default".into(),
        t => t.to_string(),
    }
}
