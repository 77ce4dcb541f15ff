//! Security groups and their rules as EC2 describes them, and how the VPC judges a flow
//! against them ([`judge`]). Pure data and pure functions: `collect::ec2` fills a
//! [`Catalog`] from `DescribeSecurityGroups`, `DescribeNetworkInterfaces` and the managed
//! prefix lists; checks, `trace` and the lab ask [`judge`] for verdicts.
//!
//! The semantics are AWS's documented ones ("Security group rules", Amazon VPC User Guide):
//! - **allow-only**: a flow passes a direction when some rule of some group on the ENI
//!   admits it; nothing denies;
//! - **union**: the rules of every group on the ENI count together;
//! - **stateful**: only the connection's first packet is judged; its replies pass whatever
//!   the rules say (so [`judge`] never looks at the receiver's egress or the sender's
//!   ingress);
//! - a peer is an IPv4 or IPv6 CIDR, a managed prefix list (its entries' CIDRs), or a
//!   security group: the flow matches when the *other* ENI carries that group (and the
//!   address is that ENI's private address, which is what sgpath knows ENIs by);
//! - protocol `-1` is every protocol and every port; TCP and UDP rules have a port range;
//!   ICMP rules a type and code, `-1` for any;
//! - a group created by `CreateSecurityGroup` has one egress rule, all traffic to
//!   `0.0.0.0/0` ([`SecurityGroup::new`]); the VPC has no implicit allow beyond it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The two directions a security group rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the ENI (`IpPermissions`).
    Ingress,
    /// Out of the ENI (`IpPermissionsEgress`).
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A rule's protocol (`IpProtocol`): a name EC2 knows or an IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `-1`: every protocol, every port.
    All,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Another IP protocol by number (`47` for GRE); no ports.
    Number(u8),
}

impl Protocol {
    /// Parses EC2's `IpProtocol`: `-1`, `tcp`, `udp`, `icmp`, `icmpv6` or a number (EC2
    /// answers with names for these and numbers for the rest; `6` is `tcp`).
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "-1" | "all" => Protocol::All,
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            "icmpv6" | "58" => Protocol::Icmpv6,
            n => Protocol::Number(n.parse().ok()?),
        })
    }

    /// The IP protocol number; `None` for `-1`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::All => None,
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Number(n) => Some(n),
        }
    }

    /// `IpProtocol` as the AWS CLI takes it.
    pub fn as_cli(self) -> String {
        match self {
            Protocol::All => "-1".into(),
            Protocol::Tcp => "tcp".into(),
            Protocol::Udp => "udp".into(),
            Protocol::Icmp => "icmp".into(),
            Protocol::Icmpv6 => "icmpv6".into(),
            Protocol::Number(n) => n.to_string(),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("all traffic"),
            p => f.write_str(&p.as_cli()),
        }
    }
}

/// What of a protocol a rule admits: a port range (TCP, UDP) or an ICMP type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ports {
    /// Every port, type and code (protocol `-1`, or a protocol without ports).
    Any,
    /// `FromPort`..=`ToPort` of a TCP or UDP rule.
    Range { from: u16, to: u16 },
    /// An ICMP rule: `FromPort` is the type and `ToPort` the code, `None` for `-1`.
    Icmp { type_: Option<u8>, code: Option<u8> },
}

impl Ports {
    /// One port.
    pub fn port(p: u16) -> Ports {
        Ports::Range { from: p, to: p }
    }

    /// Reads EC2's `FromPort`/`ToPort` for a protocol (absent or `-1` mean "any").
    ///
    /// # Errors
    /// A message naming the values when they are not a port range (`from` above `to`,
    /// beyond 65535) or an ICMP type and code (beyond 255).
    pub fn from_ec2(proto: Protocol, from: Option<i32>, to: Option<i32>) -> Result<Ports, String> {
        let any = |v: Option<i32>| v.is_none_or(|v| v == -1);
        match proto {
            Protocol::All | Protocol::Number(_) => Ok(Ports::Any),
            Protocol::Tcp | Protocol::Udp => {
                if any(from) && any(to) {
                    return Ok(Ports::Range { from: 0, to: 65535 });
                }
                let port = |v: Option<i32>| {
                    v.and_then(|v| u16::try_from(v).ok()).ok_or_else(|| {
                        format!("FromPort {from:?} ToPort {to:?} is not a port range")
                    })
                };
                let (f, t) = (port(from)?, port(to)?);
                if f > t {
                    return Err(format!("FromPort {f} is above ToPort {t}"));
                }
                Ok(Ports::Range { from: f, to: t })
            }
            Protocol::Icmp | Protocol::Icmpv6 => {
                let byte = |v: Option<i32>| -> Result<Option<u8>, String> {
                    match v {
                        None | Some(-1) => Ok(None),
                        Some(v) => u8::try_from(v)
                            .map(Some)
                            .map_err(|_| format!("ICMP type/code {v} is beyond 255")),
                    }
                };
                Ok(Ports::Icmp {
                    type_: byte(from)?,
                    code: byte(to)?,
                })
            }
        }
    }

    fn admits(self, what: FlowPorts) -> bool {
        match (self, what) {
            (Ports::Any, _) => true,
            (Ports::Range { from, to }, FlowPorts::Port(p)) => (from..=to).contains(&p),
            (Ports::Icmp { type_, code }, FlowPorts::Icmp { type_: t, code: c }) => {
                type_.is_none_or(|x| x == t) && code.is_none_or(|x| x == c)
            }
            _ => false,
        }
    }
}

/// The other end of a rule: the source of an ingress rule, the destination of an egress one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Peer {
    /// `CidrIp` or `CidrIpv6`.
    Cidr { cidr: IpNet },
    /// `PrefixListId`, with the CIDRs of its entries (`GetManagedPrefixListEntries`);
    /// empty when they could not be read, and then the rule admits nothing sgpath can prove.
    PrefixList { id: String, cidrs: Vec<IpNet> },
    /// `UserIdGroupPairs`: ENIs that carry this group.
    Group { id: String },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Cidr { cidr } => write!(f, "{cidr}"),
            Peer::PrefixList { id, .. } => write!(f, "prefix list {id}"),
            Peer::Group { id } => write!(f, "members of {id}"),
        }
    }
}

/// One allow rule of a security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgRule {
    /// `sgr-...` from `DescribeSecurityGroupRules`, when known.
    pub id: Option<String>,
    pub protocol: Protocol,
    pub ports: Ports,
    pub peer: Peer,
    pub description: Option<String>,
}

impl SgRule {
    pub fn new(protocol: Protocol, ports: Ports, peer: Peer) -> SgRule {
        SgRule {
            id: None,
            protocol,
            ports,
            peer,
            description: None,
        }
    }

    /// Whether this rule admits the flow's protocol and ports (not its peer).
    fn admits_traffic(&self, flow: &Flow) -> bool {
        match self.protocol {
            Protocol::All => true,
            p => p.number() == Some(flow.protocol) && self.ports.admits(flow.ports),
        }
    }

    /// Whether `remote` (the far address, and the groups of the ENI owning it when known)
    /// is this rule's peer.
    fn admits_peer(&self, remote: &Remote<'_>) -> bool {
        match &self.peer {
            Peer::Cidr { cidr } => cidr.contains(&remote.addr),
            Peer::PrefixList { cidrs, .. } => cidrs.iter().any(|c| c.contains(&remote.addr)),
            Peer::Group { id } => remote
                .locus
                .groups()
                .is_some_and(|g| g.iter().any(|g| g == id)),
        }
    }
}

/// `tcp/80 from 10.0.1.10/32`, as an operator reads a rule.
impl fmt::Display for SgRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_traffic(f, self.protocol, self.ports)?;
        write!(f, " {}", self.peer)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        Ok(())
    }
}

fn write_traffic(f: &mut fmt::Formatter<'_>, protocol: Protocol, ports: Ports) -> fmt::Result {
    match (protocol, ports) {
        (Protocol::All, _) => f.write_str("all traffic"),
        (p, Ports::Range { from, to }) if from == to => write!(f, "{p}/{from}"),
        (p, Ports::Range { from: 0, to: 65535 }) => write!(f, "{p}/all ports"),
        (p, Ports::Range { from, to }) => write!(f, "{p}/{from}-{to}"),
        (p, Ports::Icmp { type_, code }) => {
            let v = |v: Option<u8>| v.map_or_else(|| "any".to_owned(), |v| v.to_string());
            write!(f, "{p} type {} code {}", v(type_), v(code))
        }
        (p, Ports::Any) => write!(f, "{p}"),
    }
}

/// A security group: its id and its rules, both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    /// `GroupName`, when known.
    pub name: Option<String>,
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
}

impl SecurityGroup {
    /// A group as `CreateSecurityGroup` leaves it: no ingress rule, and the one egress rule
    /// allowing all traffic to `0.0.0.0/0`.
    pub fn new(id: impl Into<String>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: None,
            ingress: Vec::new(),
            egress: vec![SgRule::new(
                Protocol::All,
                Ports::Any,
                Peer::Cidr {
                    cidr: "0.0.0.0/0".parse().expect("a CIDR"),
                },
            )],
        }
    }

    pub fn rules(&self, direction: Direction) -> &[SgRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Every group sgpath has read, by id, the ENIs it knows with their groups, and what it
/// knows of the VPC's address space: enough to tell, for any address a verdict needs,
/// whether it is an ENI (and which groups it carries), outside the VPC, or unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub groups: BTreeMap<String, SecurityGroup>,
    /// ENIs by private address: the ENI id and its groups' ids.
    pub enis: BTreeMap<IpAddr, Eni>,
    /// Prefixes delegated to ENIs (`ipv4PrefixSet` / `ipv6PrefixSet`, instance metadata's
    /// `ipv4-prefix` / `ipv6-prefix`): with prefix delegation the VPC CNI gives pods
    /// addresses out of these, and they carry the ENI's groups.
    pub prefixes: BTreeMap<IpNet, Eni>,
    /// Every CIDR block of the VPC, secondary ones and IPv6 included. Empty when unknown:
    /// then no address can be called outside the VPC.
    pub vpc_cidrs: Vec<IpNet>,
    /// Addresses EC2 was asked about (`DescribeNetworkInterfaces`). One of these inside the
    /// VPC with no ENI in [`Catalog::enis`] is owned by no ENI EC2 would name.
    pub looked_up: BTreeSet<IpAddr>,
    /// Prefix lists sgpath could not read (`GetManagedPrefixListEntries` refused): a rule
    /// naming one may admit what the judge cannot see.
    pub unread_prefix_lists: BTreeSet<String>,
}

/// An ENI as `DescribeNetworkInterfaces` (or instance metadata) gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    /// `eni-...`; empty when only metadata named its groups.
    pub id: String,
    pub groups: Vec<String>,
}

/// Where an address sits, as far as the catalog can tell: what a verdict about it may say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locus<'a> {
    /// An ENI's private address, or an address in a prefix delegated to it.
    Eni(&'a Eni),
    /// Outside every CIDR block of the VPC (a bastion, the internet): no group of this VPC
    /// sits on its side.
    OutsideVpc,
    /// Inside the VPC, looked up, and EC2 named no ENI with that private address (a VPC
    /// router or resolver address, an ENI created since, an address in another node's
    /// delegated prefix): its groups, if any, are unknown.
    NoEni,
    /// Not looked up, or the VPC's CIDR blocks are unknown: nothing can be said of it.
    Unknown,
}

impl Locus<'_> {
    /// The groups of the ENI, when it is one.
    fn groups(&self) -> Option<&[String]> {
        match self {
            Locus::Eni(e) => Some(&e.groups),
            _ => None,
        }
    }
}

impl Catalog {
    pub fn insert_group(&mut self, g: SecurityGroup) {
        self.groups.insert(g.id.clone(), g);
    }

    pub fn insert_eni(&mut self, addr: IpAddr, id: impl Into<String>, groups: &[&str]) {
        self.enis.insert(
            addr,
            Eni {
                id: id.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            },
        );
    }

    /// Records a prefix delegated to an ENI.
    pub fn insert_prefix(&mut self, prefix: IpNet, id: impl Into<String>, groups: &[&str]) {
        self.prefixes.insert(
            prefix.trunc(),
            Eni {
                id: id.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            },
        );
    }

    /// Where `addr` sits: an ENI (by private address, then by delegated prefix), outside
    /// the VPC, or inside it and unknown.
    pub fn locate(&self, addr: IpAddr) -> Locus<'_> {
        if let Some(e) = self.enis.get(&addr) {
            return Locus::Eni(e);
        }
        if let Some((_, e)) = self.prefixes.iter().find(|(p, _)| p.contains(&addr)) {
            return Locus::Eni(e);
        }
        if self.vpc_cidrs.is_empty() {
            return Locus::Unknown;
        }
        if !self.vpc_cidrs.iter().any(|c| c.contains(&addr)) {
            return Locus::OutsideVpc;
        }
        if self.looked_up.contains(&addr) {
            Locus::NoEni
        } else {
            Locus::Unknown
        }
    }

    /// The groups of the ENI owning `addr` (its private address or a prefix delegated to
    /// it), when known.
    pub fn groups_of(&self, addr: IpAddr) -> Option<&[String]> {
        match self.locate(addr) {
            Locus::Eni(e) => Some(e.groups.as_slice()),
            _ => None,
        }
    }

    /// The first rule of `group_ids` admitting `flow`'s traffic from every address of
    /// `net` (a CIDR rule or a prefix-list entry containing it): what a load balancer
    /// anywhere in the VPC needs.
    pub fn admits_whole(&self, group_ids: &[String], flow: &Flow, net: IpNet) -> Option<Admitted> {
        group_ids.iter().find_map(|id| {
            let g = self.groups.get(id)?;
            let rule = g.ingress.iter().find(|r| {
                r.admits_traffic(flow)
                    && match &r.peer {
                        Peer::Cidr { cidr } => cidr.contains(&net),
                        Peer::PrefixList { cidrs, .. } => cidrs.iter().any(|c| c.contains(&net)),
                        Peer::Group { .. } => false,
                    }
            })?;
            Some(Admitted {
                direction: Direction::Ingress,
                group: id.clone(),
                rule: rule.clone(),
            })
        })
    }

    /// Judges `flow` as the VPC would, each end located by [`Catalog::locate`]: an ENI's
    /// side is judged by its groups; an address outside the VPC has no side; an address
    /// inside the VPC that sgpath does not know makes any denial unverified (its groups may
    /// be the peer of a group rule, and its own ingress cannot be judged).
    pub fn judge(&self, flow: &Flow) -> Verdict {
        judge(self, flow, self.locate(flow.src), self.locate(flow.dst))
    }

    /// Judges `flow` as if its source carried `groups` (a SecurityGroupPolicy's, for a pod
    /// that left by the node ENI): would those groups have been admitted?
    pub fn judge_from_groups(&self, flow: &Flow, groups: &[String]) -> Verdict {
        let eni = Eni {
            id: String::new(),
            groups: groups.to_vec(),
        };
        judge(self, flow, Locus::Eni(&eni), self.locate(flow.dst))
    }
}

/// What sgpath knows of the groups' rules at one moment: read (and how old), or why not.
/// Checks judge flows only on [`Rules::Fresh`]: a verdict from rules that could not be
/// re-read is never presented as current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Rules {
    /// The last read succeeded.
    Fresh { catalog: Catalog },
    /// The EC2 API (or instance metadata) could not be read: `reason` says what failed,
    /// naming the call and what to do.
    Unavailable { reason: String },
}

impl Rules {
    /// The catalog, when fresh.
    pub fn fresh(&self) -> Option<&Catalog> {
        match self {
            Rules::Fresh { catalog, .. } => Some(catalog),
            Rules::Unavailable { .. } => None,
        }
    }
}

/// What of a flow's layer 4 a rule looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPorts {
    /// The destination port (TCP, UDP).
    Port(u16),
    /// ICMP type and code.
    Icmp { type_: u8, code: u8 },
    /// Another protocol: no ports.
    None,
}

/// The first packet of a connection, as the VPC judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Flow {
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ports: FlowPorts,
}

impl Flow {
    pub fn tcp(src: IpAddr, dst: IpAddr, port: u16) -> Flow {
        Flow {
            protocol: 6,
            src,
            dst,
            ports: FlowPorts::Port(port),
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, port: u16) -> Flow {
        Flow {
            protocol: 17,
            src,
            dst,
            ports: FlowPorts::Port(port),
        }
    }

    /// An echo request (ICMP type 8, or ICMPv6 type 128 between IPv6 addresses).
    pub fn ping(src: IpAddr, dst: IpAddr) -> Flow {
        let (protocol, type_) = if dst.is_ipv6() { (58, 128) } else { (1, 8) };
        Flow {
            protocol,
            src,
            dst,
            ports: FlowPorts::Icmp { type_, code: 0 },
        }
    }

    fn protocol(&self) -> Protocol {
        match self.protocol {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            n => Protocol::Number(n),
        }
    }

    /// The narrowest rule that admits this flow from/to `peer` (the rule sgpath proposes).
    fn rule_for(&self, peer: Peer) -> SgRule {
        let ports = match self.ports {
            FlowPorts::Port(p) => Ports::port(p),
            FlowPorts::Icmp { type_, code } => Ports::Icmp {
                type_: Some(type_),
                code: Some(code),
            },
            FlowPorts::None => Ports::Any,
        };
        SgRule::new(self.protocol(), ports, peer)
    }
}

/// `tcp/80 10.0.1.10 -> 192.168.3.219`.
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            FlowPorts::Port(p) => write!(f, "{}/{p}", self.protocol())?,
            FlowPorts::Icmp { type_, code } => {
                write!(f, "{} type {type_} code {code}", self.protocol())?
            }
            FlowPorts::None => write!(f, "{}", self.protocol())?,
        }
        write!(f, " {} -> {}", self.src, self.dst)
    }
}

/// The far end as a rule sees it: an address, and where it sits.
struct Remote<'a> {
    addr: IpAddr,
    locus: Locus<'a>,
}

/// What sgpath knows of the far end of a denied flow, as a report says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FarEnd {
    /// An ENI sgpath read, with its groups.
    Eni,
    /// Outside every CIDR block of the VPC.
    OutsideVpc,
    /// Inside the VPC; EC2 named no ENI with that private address.
    NoEni,
    /// Not looked up, or the VPC's CIDR blocks are unknown.
    Unknown,
}

impl From<Locus<'_>> for FarEnd {
    fn from(l: Locus<'_>) -> FarEnd {
        match l {
            Locus::Eni(_) => FarEnd::Eni,
            Locus::OutsideVpc => FarEnd::OutsideVpc,
            Locus::NoEni => FarEnd::NoEni,
            Locus::Unknown => FarEnd::Unknown,
        }
    }
}

/// The group and rule that admit a flow in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Admitted {
    pub direction: Direction,
    pub group: String,
    pub rule: SgRule,
}

/// A rule none of an ENI's groups has, and which would admit the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub direction: Direction,
    /// The ENI's groups (all of them were searched), in EC2's order; never empty.
    pub groups: Vec<String>,
    /// Ids among `groups` (or prefix lists their rules name) that sgpath could not read:
    /// the rule may be there.
    pub unread: Vec<String>,
    /// The far end's address and what sgpath knows of it.
    pub far_addr: IpAddr,
    pub far_end: FarEnd,
    /// Rules of `groups` that admit the traffic from members of a group, when the far end's
    /// groups are unknown: any of them may admit it.
    pub group_rules: Vec<Admitted>,
    /// `GroupName` of `groups[0]`, when known: operators name groups, EC2 numbers them.
    pub name: Option<String>,
    /// The rule to add to `groups[0]`: the flow's protocol and port, from or to the far
    /// end's first group when it is an ENI sgpath knows, else its address.
    pub rule: SgRule,
}

impl Missing {
    /// `sg-pod admits no tcp/80 from 10.0.1.10`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let g = match &self.name {
            Some(n) if *n != self.groups[0] => format!("{} ({n})", self.groups[0]),
            _ => self.groups[0].clone(),
        };
        let others = if self.groups.len() > 1 {
            format!(" (nor do {})", self.groups[1..].join(", "))
        } else {
            String::new()
        };
        let what = DisplayTraffic(self.rule.protocol, self.rule.ports);
        let peer = match &self.rule.peer {
            Peer::Cidr { cidr } if cidr.prefix_len() == cidr.max_prefix_len() => {
                cidr.addr().to_string()
            }
            p => p.to_string(),
        };
        let word = match self.direction {
            Direction::Ingress => "admits no",
            Direction::Egress => "lets out no",
        };
        let dir = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        use std::fmt::Write;
        let _ = write!(s, "{g}{others} {word} {what} {dir} {peer}");
        let doubts = self.doubts();
        if !doubts.is_empty() {
            let _ = write!(s, " (unverified: {})", doubts.join("; "));
        }
        s
    }

    /// Whether the rules prove the denial: every group and prefix list read, the far end
    /// an ENI sgpath read or outside the VPC, and no group rule that might admit it. Only
    /// a confirmed denial may be presented as the cause, with its command as the fix.
    pub fn is_confirmed(&self) -> bool {
        self.unread.is_empty()
            && self.group_rules.is_empty()
            && matches!(self.far_end, FarEnd::Eni | FarEnd::OutsideVpc)
    }

    /// Why the denial is not proven, one clause each; empty when it is.
    pub fn doubts(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.unread.is_empty() {
            out.push(format!("sgpath could not read {}", self.unread.join(", ")));
        }
        let addr = self.far_addr;
        match self.far_end {
            FarEnd::Eni | FarEnd::OutsideVpc => {}
            FarEnd::NoEni => out.push(format!(
                "{addr} is inside the VPC but EC2 names no ENI with that private address \
                 (another node's delegated prefix, a VPC-reserved address, or an ENI created \
                 since the last read): its groups and its own rules are unknown"
            )),
            FarEnd::Unknown => out.push(format!(
                "sgpath has not looked {addr} up in EC2 (or the VPC's CIDR blocks are \
                 unknown): its groups and its own rules are unknown"
            )),
        }
        for a in &self.group_rules {
            if let Peer::Group { id } = &a.rule.peer {
                out.push(format!(
                    "{}'s rule {} admits it if {addr} carries {id}",
                    a.group, a.rule
                ));
            }
        }
        out
    }

    /// The AWS CLI command that adds the rule to the ENI's first group. Ingress rules from
    /// an IPv4 CIDR or a group use the short options; everything else (egress, IPv6, ICMP,
    /// prefix lists) needs `--ip-permissions`, which the CLI's egress command requires.
    pub fn remediation(&self) -> String {
        authorize_command(&self.groups[0], self.direction, &self.rule)
    }
}

struct DisplayTraffic(Protocol, Ports);

impl fmt::Display for DisplayTraffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_traffic(f, self.0, self.1)
    }
}

/// `aws ec2 authorize-security-group-{ingress,egress}` adding `rule` to `group`.
pub fn authorize_command(group: &str, direction: Direction, rule: &SgRule) -> String {
    let verb = format!("aws ec2 authorize-security-group-{}", direction.as_str());
    let short_ports = match (rule.protocol, rule.ports) {
        (Protocol::All, _) => Some(None),
        (Protocol::Tcp | Protocol::Udp, Ports::Range { from, to }) if from == to => {
            Some(Some(from.to_string()))
        }
        (Protocol::Tcp | Protocol::Udp, Ports::Range { from, to }) => {
            Some(Some(format!("{from}-{to}")))
        }
        _ => None,
    };
    let short_peer = match &rule.peer {
        Peer::Cidr { cidr: IpNet::V4(c) } => Some(format!("--cidr {c}")),
        Peer::Group { id } => Some(format!("--source-group {id}")),
        _ => None,
    };
    if let (Direction::Ingress, Some(ports), Some(peer)) = (direction, short_ports, short_peer) {
        let ports = ports.map_or_else(String::new, |p| format!(" --port {p}"));
        return format!(
            "{verb} --group-id {group} --protocol {}{ports} {peer}",
            rule.protocol.as_cli()
        );
    }
    let ports = match rule.ports {
        Ports::Any => String::new(),
        Ports::Range { from, to } => format!(",FromPort={from},ToPort={to}"),
        Ports::Icmp { type_, code } => {
            let v = |v: Option<u8>| v.map_or(-1, i32::from);
            format!(",FromPort={},ToPort={}", v(type_), v(code))
        }
    };
    let peer = match &rule.peer {
        Peer::Cidr { cidr: IpNet::V4(c) } => format!("IpRanges=[{{CidrIp={c}}}]"),
        Peer::Cidr { cidr: IpNet::V6(c) } => format!("Ipv6Ranges=[{{CidrIpv6={c}}}]"),
        Peer::PrefixList { id, .. } => format!("PrefixListIds=[{{PrefixListId={id}}}]"),
        Peer::Group { id } => format!("UserIdGroupPairs=[{{GroupId={id}}}]"),
    };
    format!(
        "{verb} --group-id {group} --ip-permissions 'IpProtocol={}{ports},{peer}'",
        rule.protocol.as_cli()
    )
}

/// The VPC's verdict on a flow's first packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict")]
pub enum Verdict {
    /// Every side with groups admits it: the rule that does, per side judged (none for a
    /// side that is not an ENI sgpath knows).
    Allowed {
        egress: Option<Admitted>,
        ingress: Option<Admitted>,
    },
    /// The first side that does not admit it: the sender's egress, else the receiver's
    /// ingress.
    Denied(Missing),
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }
}

/// Judges a flow's first packet as the VPC does: the sending ENI's egress rules, then the
/// receiving ENI's ingress rules. An end that is no ENI sgpath knows is not judged: outside
/// the VPC it has no groups; inside it, its groups are unknown and a denial of the other
/// side says so ([`Missing::is_confirmed`]). Replies of an admitted flow are not judged
/// (security groups are stateful): judge the flow in the direction it was opened.
fn judge(catalog: &Catalog, flow: &Flow, src: Locus<'_>, dst: Locus<'_>) -> Verdict {
    let mut egress = None;
    if let Some(groups) = src.groups() {
        let remote = Remote {
            addr: flow.dst,
            locus: dst,
        };
        match judge_side(catalog, flow, Direction::Egress, groups, &remote) {
            Ok(a) => egress = a,
            Err(m) => return Verdict::Denied(*m),
        }
    }
    let mut ingress = None;
    if let Some(groups) = dst.groups() {
        let remote = Remote {
            addr: flow.src,
            locus: src,
        };
        match judge_side(catalog, flow, Direction::Ingress, groups, &remote) {
            Ok(a) => ingress = a,
            Err(m) => return Verdict::Denied(*m),
        }
    }
    Verdict::Allowed { egress, ingress }
}

/// One side: the first rule (in group order, then rule order) that admits, or what is
/// missing. An ENI without groups is not judged (`Ok(None)`).
fn judge_side(
    catalog: &Catalog,
    flow: &Flow,
    direction: Direction,
    group_ids: &[String],
    remote: &Remote<'_>,
) -> Result<Option<Admitted>, Box<Missing>> {
    if group_ids.is_empty() {
        return Ok(None);
    }
    let mut unread = Vec::new();
    let mut group_rules = Vec::new();
    let far_groups = remote.locus.groups();
    for id in group_ids {
        let Some(g) = catalog.groups.get(id) else {
            unread.push(id.clone());
            continue;
        };
        for r in g.rules(direction).iter().filter(|r| r.admits_traffic(flow)) {
            match &r.peer {
                // A rule for this traffic from a prefix list sgpath could not read: maybe
                // admitted.
                Peer::PrefixList { id: pl, .. }
                    if catalog.unread_prefix_lists.contains(pl) && !unread.contains(pl) =>
                {
                    unread.push(pl.clone());
                }
                // A group rule, and the far end's groups are unknown: maybe admitted.
                Peer::Group { .. } if far_groups.is_none() => group_rules.push(Admitted {
                    direction,
                    group: id.clone(),
                    rule: r.clone(),
                }),
                _ => {}
            }
        }
        if let Some(rule) = g
            .rules(direction)
            .iter()
            .find(|r| r.admits_traffic(flow) && r.admits_peer(remote))
        {
            return Ok(Some(Admitted {
                direction,
                group: id.clone(),
                rule: rule.clone(),
            }));
        }
    }
    let peer = match far_groups.and_then(|g| g.first()) {
        Some(g) => Peer::Group { id: g.clone() },
        None => Peer::Cidr {
            cidr: IpNet::from(remote.addr),
        },
    };
    Err(Box::new(Missing {
        direction,
        groups: group_ids.to_vec(),
        unread,
        far_addr: remote.addr,
        far_end: remote.locus.into(),
        group_rules,
        name: group_ids
            .first()
            .and_then(|id| catalog.groups.get(id))
            .and_then(|g| g.name.clone()),
        rule: flow.rule_for(peer),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Peer {
        Peer::Cidr {
            cidr: s.parse().unwrap(),
        }
    }

    fn tcp(port: u16, peer: Peer) -> SgRule {
        SgRule::new(Protocol::Tcp, Ports::port(port), peer)
    }

    fn all(peer: Peer) -> SgRule {
        SgRule::new(Protocol::All, Ports::Any, peer)
    }

    /// The default lab: sg-node on the node (192.168.1.10), sg-pod on the branch pod
    /// (192.168.3.219), the bastion 10.0.1.10 outside the VPC's ENIs.
    fn lab() -> Catalog {
        let mut c = Catalog::default();
        let mut node = SecurityGroup::new("sg-node");
        node.ingress = vec![tcp(80, cidr("0.0.0.0/0")), all(cidr("192.168.0.0/16"))];
        let mut pod = SecurityGroup::new("sg-pod");
        pod.ingress = vec![tcp(80, cidr("0.0.0.0/0")), all(cidr("192.168.1.10/32"))];
        c.insert_group(node);
        c.insert_group(pod);
        c.insert_eni(ip("192.168.1.10"), "eni-node", &["sg-node"]);
        c.insert_eni(ip("192.168.3.219"), "eni-branch1", &["sg-pod"]);
        c.vpc_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
        c
    }

    fn denied(v: Verdict) -> Missing {
        match v {
            Verdict::Denied(m) => m,
            v => panic!("expected a denial, got {v:?}"),
        }
    }

    fn admitted(v: &Verdict, d: Direction) -> Admitted {
        match v {
            Verdict::Allowed { egress, ingress } => match d {
                Direction::Egress => egress.clone(),
                Direction::Ingress => ingress.clone(),
            }
            .unwrap_or_else(|| panic!("no {d:?} rule in {v:?}")),
            v => panic!("expected allowed, got {v:?}"),
        }
    }

    #[test]
    fn outside_to_pod_is_judged_by_the_pods_ingress_only() {
        let mut c = lab();
        let f = Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 80);
        let v = c.judge(&f);
        let a = admitted(&v, Direction::Ingress);
        assert_eq!(
            (a.group.as_str(), a.rule.to_string()),
            ("sg-pod", "tcp/80 0.0.0.0/0".into())
        );
        // Port 80 removed from the pod's group: the seed's step 2.
        c.groups.get_mut("sg-pod").unwrap().ingress.remove(0);
        let m = denied(c.judge(&f));
        assert_eq!(m.summary(), "sg-pod admits no tcp/80 from 10.0.1.10");
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol tcp --port 80 --cidr 10.0.1.10/32"
        );
        // The node's own rules do not matter to the pod's branch ENI.
        assert!(
            c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.1.10"), 80))
                .is_allowed()
        );
    }

    #[test]
    fn union_of_groups_and_the_first_admitting_rule_is_named() {
        let mut c = lab();
        let mut extra = SecurityGroup::new("sg-extra");
        extra.ingress = vec![SgRule::new(
            Protocol::Tcp,
            Ports::Range {
                from: 8000,
                to: 8100,
            },
            cidr("10.0.0.0/8"),
        )];
        c.insert_group(extra);
        c.insert_eni(ip("192.168.3.219"), "eni-branch1", &["sg-pod", "sg-extra"]);
        let v = c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 8080));
        assert_eq!(admitted(&v, Direction::Ingress).group, "sg-extra");
        // Port ranges are inclusive at both ends and nothing past them.
        assert!(
            c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 8000))
                .is_allowed()
        );
        assert!(
            c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 8100))
                .is_allowed()
        );
        let m = denied(c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 8101)));
        assert_eq!(m.groups, ["sg-pod", "sg-extra"]);
        assert_eq!(
            m.summary(),
            "sg-pod (nor do sg-extra) admits no tcp/8101 from 10.0.1.10"
        );
        // UDP on a TCP range does not match.
        assert!(
            !c.judge(&Flow::udp(ip("10.0.1.10"), ip("192.168.3.219"), 8080))
                .is_allowed()
        );
    }

    #[test]
    fn referenced_group_admits_enis_that_carry_it() {
        let mut c = Catalog::default();
        let mut pod = SecurityGroup::new("sg-pod");
        pod.ingress = vec![all(Peer::Group {
            id: "sg-node".into(),
        })];
        c.insert_group(pod);
        c.insert_group(SecurityGroup::new("sg-node"));
        c.insert_group(SecurityGroup::new("sg-other"));
        c.insert_eni(ip("192.168.3.219"), "eni-b", &["sg-pod"]);
        c.insert_eni(ip("192.168.1.10"), "eni-node", &["sg-other", "sg-node"]);
        c.insert_eni(ip("192.168.1.11"), "eni-other", &["sg-other"]);
        let probe = Flow::tcp(ip("192.168.1.10"), ip("192.168.3.219"), 8080);
        let a = admitted(&c.judge(&probe), Direction::Ingress);
        assert_eq!(
            a.rule.peer,
            Peer::Group {
                id: "sg-node".into()
            }
        );
        // An ENI without sg-node is not admitted; the missing rule names its group.
        let m = denied(c.judge(&Flow::tcp(ip("192.168.1.11"), ip("192.168.3.219"), 8080)));
        assert_eq!(
            m.rule.peer,
            Peer::Group {
                id: "sg-other".into()
            }
        );
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol tcp --port 8080 --source-group sg-other"
        );
        // An address that is no ENI sgpath knows never matches a group reference, and
        // without the VPC's CIDRs nothing says it is outside: the denial is unverified.
        let m = denied(c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 80)));
        assert!(!m.is_confirmed());
        assert_eq!(m.far_end, FarEnd::Unknown);
        assert_eq!(m.group_rules.len(), 1, "{m:?}");
        // Outside the VPC it is confirmed.
        c.vpc_cidrs = vec!["192.168.0.0/16".parse().unwrap()];
        let m = denied(c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 80)));
        assert_eq!(m.far_end, FarEnd::OutsideVpc);
        // ... unless a group rule admits the traffic: a peered VPC's ENI may carry sg-node.
        assert!(!m.is_confirmed());
        assert_eq!(
            m.doubts(),
            ["sg-pod's rule all traffic members of sg-node admits it if 10.0.1.10 carries sg-node"]
        );
    }

    /// Issue 29: a branch pod's unanswered SYNs to a database in the same VPC were an error
    /// "sg-pod lets out no tcp/5432 to 10.x" with a /32 nobody needs, because every address
    /// the agent had not looked up was taken for outside the VPC.
    #[test]
    fn a_group_peer_rule_to_a_database_is_found_not_denied() {
        let mut c = lab();
        c.vpc_cidrs.push("10.0.0.0/16".parse().unwrap());
        let mut db = SecurityGroup::new("sg-db");
        db.ingress = vec![tcp(
            5432,
            Peer::Group {
                id: "sg-pod".into(),
            },
        )];
        c.insert_group(db);
        c.groups.get_mut("sg-pod").unwrap().egress =
            vec![tcp(5432, Peer::Group { id: "sg-db".into() })];
        let f = Flow::tcp(ip("192.168.3.219"), ip("10.0.5.9"), 5432);
        // Not looked up: unverified, never confirmed.
        let m = denied(c.judge(&f));
        assert_eq!(m.far_end, FarEnd::Unknown);
        assert!(!m.is_confirmed());
        assert!(m.summary().contains("(unverified: "), "{}", m.summary());
        assert!(
            m.summary().contains(
                "sg-pod's rule tcp/5432 members of sg-db admits it if 10.0.5.9 carries sg-db"
            ),
            "{}",
            m.summary()
        );
        // Looked up, and no ENI has it: still unverified.
        c.looked_up.insert(ip("10.0.5.9"));
        let m = denied(c.judge(&f));
        assert_eq!(m.far_end, FarEnd::NoEni);
        assert!(!m.is_confirmed());
        // The database's ENI found: the group rules admit it, both ways.
        c.insert_eni(ip("10.0.5.9"), "eni-db", &["sg-db"]);
        let v = c.judge(&f);
        assert_eq!(admitted(&v, Direction::Egress).group, "sg-pod");
        assert_eq!(
            admitted(&v, Direction::Ingress).rule.to_string(),
            "tcp/5432 members of sg-pod"
        );
        // The database's group no longer admits the pod: a confirmed denial, by group.
        c.groups.get_mut("sg-db").unwrap().ingress.clear();
        let m = denied(c.judge(&f));
        assert!(m.is_confirmed(), "{m:?}");
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-ingress --group-id sg-db --protocol tcp --port 5432 --source-group sg-pod"
        );
    }

    /// With prefix delegation the CNI gives pods addresses out of /28 prefixes of the node's
    /// ENIs: CoreDNS at such an address carries the node ENI's groups, and AWS's recommended
    /// rule (pod group egress to the cluster group on 53) admits it.
    #[test]
    fn prefix_delegated_addresses_carry_their_enis_groups() {
        let mut c = lab();
        c.insert_group(SecurityGroup::new("sg-cluster"));
        c.groups.get_mut("sg-cluster").unwrap().ingress = vec![all(Peer::Group {
            id: "sg-pod".into(),
        })];
        c.groups.get_mut("sg-pod").unwrap().egress = vec![SgRule::new(
            Protocol::Udp,
            Ports::port(53),
            Peer::Group {
                id: "sg-cluster".into(),
            },
        )];
        let dns = Flow::udp(ip("192.168.3.219"), ip("192.168.7.37"), 53);
        assert!(!c.judge(&dns).is_allowed());
        assert!(!denied(c.judge(&dns)).is_confirmed());
        c.insert_prefix(
            "192.168.7.32/28".parse().unwrap(),
            "eni-node2",
            &["sg-cluster"],
        );
        let v = c.judge(&dns);
        assert_eq!(
            admitted(&v, Direction::Egress).rule.to_string(),
            "udp/53 members of sg-cluster"
        );
        assert_eq!(admitted(&v, Direction::Ingress).group, "sg-cluster");
        // The prefix's neighbour is not in it.
        assert_eq!(c.locate(ip("192.168.7.48")), Locus::Unknown);
        assert_eq!(c.locate(ip("10.9.9.9")), Locus::OutsideVpc);
    }

    #[test]
    fn prefix_lists_admit_their_entries_only() {
        let mut c = Catalog {
            vpc_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let mut pod = SecurityGroup::new("sg-pod");
        pod.ingress = vec![tcp(
            443,
            Peer::PrefixList {
                id: "pl-0abc".into(),
                cidrs: vec![
                    "10.0.1.0/24".parse().unwrap(),
                    "172.16.0.0/12".parse().unwrap(),
                ],
            },
        )];
        c.insert_group(pod);
        c.insert_eni(ip("192.168.3.219"), "eni-b", &["sg-pod"]);
        let v = c.judge(&Flow::tcp(ip("172.20.0.5"), ip("192.168.3.219"), 443));
        assert_eq!(
            admitted(&v, Direction::Ingress).rule.to_string(),
            "tcp/443 prefix list pl-0abc"
        );
        assert!(
            !c.judge(&Flow::tcp(ip("10.0.2.1"), ip("192.168.3.219"), 443))
                .is_allowed()
        );
        // An unreadable prefix list (no entries) proves nothing: the denial says so.
        if let Peer::PrefixList { cidrs, .. } =
            &mut c.groups.get_mut("sg-pod").unwrap().ingress[0].peer
        {
            cidrs.clear();
        }
        c.unread_prefix_lists.insert("pl-0abc".into());
        let m = denied(c.judge(&Flow::tcp(ip("172.20.0.5"), ip("192.168.3.219"), 443)));
        assert_eq!(m.unread, ["pl-0abc"]);
        assert!(
            m.summary()
                .ends_with("(unverified: sgpath could not read pl-0abc)"),
            "{}",
            m.summary()
        );
        // Traffic that rule would not admit anyway stays a plain denial.
        let m = denied(c.judge(&Flow::tcp(ip("172.20.0.5"), ip("192.168.3.219"), 22)));
        assert!(m.unread.is_empty());
    }

    #[test]
    fn protocol_minus_one_admits_every_protocol_and_port() {
        let p = Protocol::parse("-1").unwrap();
        assert_eq!(p, Protocol::All);
        assert_eq!(Ports::from_ec2(p, Some(-1), Some(-1)), Ok(Ports::Any));
        let mut c = Catalog::default();
        let mut g = SecurityGroup::new("sg-a");
        g.ingress = vec![SgRule::new(p, Ports::Any, cidr("192.168.0.0/16"))];
        c.insert_group(g);
        c.insert_eni(ip("192.168.3.219"), "eni-b", &["sg-a"]);
        for f in [
            Flow::tcp(ip("192.168.9.9"), ip("192.168.3.219"), 1),
            Flow::udp(ip("192.168.9.9"), ip("192.168.3.219"), 65535),
            Flow::ping(ip("192.168.9.9"), ip("192.168.3.219")),
            Flow {
                protocol: 47,
                src: ip("192.168.9.9"),
                dst: ip("192.168.3.219"),
                ports: FlowPorts::None,
            },
        ] {
            assert!(c.judge(&f).is_allowed(), "{f}");
        }
        // ... but only from its CIDR.
        assert!(
            !c.judge(&Flow::tcp(ip("10.9.9.9"), ip("192.168.3.219"), 1))
                .is_allowed()
        );
    }

    #[test]
    fn icmp_type_and_code() {
        let mut c = Catalog::default();
        let mut g = SecurityGroup::new("sg-a");
        let echo = Ports::from_ec2(Protocol::Icmp, Some(8), Some(-1)).unwrap();
        assert_eq!(
            echo,
            Ports::Icmp {
                type_: Some(8),
                code: None
            }
        );
        g.ingress = vec![SgRule::new(Protocol::Icmp, echo, cidr("0.0.0.0/0"))];
        c.insert_group(g);
        c.insert_eni(ip("192.168.3.219"), "eni-b", &["sg-a"]);
        assert!(
            c.judge(&Flow::ping(ip("10.0.1.10"), ip("192.168.3.219")))
                .is_allowed()
        );
        let unreachable = Flow {
            protocol: 1,
            src: ip("10.0.1.10"),
            dst: ip("192.168.3.219"),
            ports: FlowPorts::Icmp { type_: 3, code: 4 },
        };
        let m = denied(c.judge(&unreachable));
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-ingress --group-id sg-a --ip-permissions \
             'IpProtocol=icmp,FromPort=3,ToPort=4,IpRanges=[{CidrIp=10.0.1.10/32}]'"
        );
    }

    #[test]
    fn ipv6_cidrs_match_ipv6_only() {
        let mut c = Catalog {
            vpc_cidrs: vec!["2600:1f14::/56".parse().unwrap()],
            ..Default::default()
        };
        let mut g = SecurityGroup::new("sg-a");
        g.ingress = vec![tcp(80, cidr("2600:1f14::/56")), tcp(80, cidr("0.0.0.0/0"))];
        c.insert_group(g);
        c.insert_eni(ip("2600:1f14::10"), "eni-b", &["sg-a"]);
        let inside = Flow::tcp(ip("2600:1f14::99"), ip("2600:1f14::10"), 80);
        assert_eq!(
            admitted(&c.judge(&inside), Direction::Ingress)
                .rule
                .to_string(),
            "tcp/80 2600:1f14::/56"
        );
        // 0.0.0.0/0 admits no IPv6 address: an IPv6 source needs ::/0.
        let m = denied(c.judge(&Flow::tcp(ip("2a05::1"), ip("2600:1f14::10"), 80)));
        assert_eq!(m.summary(), "sg-a admits no tcp/80 from 2a05::1");
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-ingress --group-id sg-a --ip-permissions \
             'IpProtocol=tcp,FromPort=80,ToPort=80,Ipv6Ranges=[{CidrIpv6=2a05::1/128}]'"
        );
        // SecurityGroup::new's default egress is IPv4 only, as EC2 creates it.
        c.insert_eni(ip("2600:1f14::20"), "eni-c", &["sg-a"]);
        let m = denied(c.judge(&Flow::tcp(ip("2600:1f14::20"), ip("2a05::1"), 443)));
        assert_eq!(m.direction, Direction::Egress);
    }

    #[test]
    fn default_egress_allows_all_and_egress_is_judged_first() {
        let mut c = lab();
        let out = Flow::tcp(ip("192.168.3.219"), ip("10.0.1.10"), 8080);
        let a = admitted(&c.judge(&out), Direction::Egress);
        assert_eq!(
            (a.group.as_str(), a.rule.to_string()),
            ("sg-pod", "all traffic 0.0.0.0/0".into())
        );
        // Without its egress rule the pod can open nothing; the reply side (the bastion's
        // answer) is never judged.
        c.groups.get_mut("sg-pod").unwrap().egress.clear();
        let m = denied(c.judge(&out));
        assert_eq!(m.direction, Direction::Egress);
        assert_eq!(m.summary(), "sg-pod lets out no tcp/8080 to 10.0.1.10");
        assert_eq!(
            m.remediation(),
            "aws ec2 authorize-security-group-egress --group-id sg-pod --ip-permissions \
             'IpProtocol=tcp,FromPort=8080,ToPort=8080,IpRanges=[{CidrIp=10.0.1.10/32}]'"
        );
        // Stateful: the node's probe into the pod is still admitted by the pod's ingress
        // although the pod may send nothing out (its SYN-ACK is a reply).
        assert!(
            c.judge(&Flow::tcp(ip("192.168.1.10"), ip("192.168.3.219"), 80))
                .is_allowed()
        );
    }

    #[test]
    fn both_ends_in_the_vpc_need_egress_and_ingress() {
        let mut c = lab();
        // Pod -> node: sg-pod's default egress and sg-node's 192.168.0.0/16 rule.
        let f = Flow::udp(ip("192.168.3.219"), ip("192.168.1.10"), 53);
        let v = c.judge(&f);
        assert_eq!(admitted(&v, Direction::Egress).group, "sg-pod");
        assert_eq!(
            admitted(&v, Direction::Ingress).rule.to_string(),
            "all traffic 192.168.0.0/16"
        );
        // The far end's ingress denies: the missing rule names the sender's group.
        c.groups.get_mut("sg-node").unwrap().ingress.clear();
        let m = denied(c.judge(&f));
        assert_eq!(m.direction, Direction::Ingress);
        assert_eq!(m.groups, ["sg-node"]);
        assert_eq!(
            m.summary(),
            "sg-node admits no udp/53 from members of sg-pod"
        );
    }

    #[test]
    fn an_unread_group_is_named_and_the_verdict_marked_unverified() {
        let mut c = lab();
        c.insert_eni(ip("192.168.3.219"), "eni-b", &["sg-pod", "sg-gone"]);
        c.groups.get_mut("sg-pod").unwrap().ingress.clear();
        let m = denied(c.judge(&Flow::tcp(ip("10.0.1.10"), ip("192.168.3.219"), 80)));
        assert_eq!(m.unread, ["sg-gone"]);
        assert!(
            m.summary()
                .contains("unverified: sgpath could not read sg-gone"),
            "{}",
            m.summary()
        );
    }

    #[test]
    fn ec2_ports_are_validated() {
        assert_eq!(
            Ports::from_ec2(Protocol::Tcp, Some(80), Some(79)),
            Err("FromPort 80 is above ToPort 79".into())
        );
        assert!(Ports::from_ec2(Protocol::Tcp, Some(70000), Some(70000)).is_err());
        assert!(Ports::from_ec2(Protocol::Icmp, Some(300), Some(0)).is_err());
        assert_eq!(
            Ports::from_ec2(Protocol::Udp, None, None),
            Ok(Ports::Range { from: 0, to: 65535 })
        );
        assert_eq!(Protocol::parse("6"), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("47"), Some(Protocol::Number(47)));
        assert_eq!(Protocol::parse("bogus"), None);
    }

    #[test]
    fn remediation_for_all_traffic_and_prefix_list_egress() {
        let r = SgRule::new(
            Protocol::All,
            Ports::Any,
            Peer::Group {
                id: "sg-node".into(),
            },
        );
        assert_eq!(
            authorize_command("sg-pod", Direction::Ingress, &r),
            "aws ec2 authorize-security-group-ingress --group-id sg-pod --protocol -1 --source-group sg-node"
        );
        let r = SgRule::new(
            Protocol::Tcp,
            Ports::Range {
                from: 1024,
                to: 65535,
            },
            Peer::PrefixList {
                id: "pl-1".into(),
                cidrs: vec![],
            },
        );
        assert_eq!(
            authorize_command("sg-pod", Direction::Egress, &r),
            "aws ec2 authorize-security-group-egress --group-id sg-pod --ip-permissions \
             'IpProtocol=tcp,FromPort=1024,ToPort=65535,PrefixListIds=[{PrefixListId=pl-1}]'"
        );
    }
}
