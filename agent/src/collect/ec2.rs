//! The EC2 Query API's answers, read into [`crate::model::sg`]: `DescribeSecurityGroups`,
//! `DescribeNetworkInterfaces`, `GetManagedPrefixListEntries`, `DescribeVpcs` (the hub's
//! VPC CIDR blocks), and EC2's error document.
//! Parsing only, no I/O: the same as `aws ec2 describe-security-groups --group-ids ...`,
//! `aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values=...`
//! and `aws ec2 get-managed-prefix-list-entries --prefix-list-id ...` print as JSON.
//!
//! Read-only IAM actions these need: `ec2:DescribeSecurityGroups`,
//! `ec2:DescribeNetworkInterfaces`, `ec2:GetManagedPrefixListEntries` (deploy/README.md).

use std::net::IpAddr;

use ipnet::IpNet;
use roxmltree::{Document, Node};

use crate::model::sg::{Peer, Ports, Protocol, SecurityGroup, SgRule};

/// Why an EC2 answer could not be used. Each names the call.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {call}: the answer is not XML: {source}")]
    Xml {
        call: &'static str,
        #[source]
        source: roxmltree::Error,
    },
    #[error("EC2 {call}: {code}: {message}")]
    Api {
        call: &'static str,
        /// `RequestLimitExceeded`, `UnauthorizedOperation`, `InvalidGroup.NotFound`...
        code: String,
        message: String,
    },
    #[error("EC2 {call}: malformed answer: {what}")]
    Malformed { call: &'static str, what: String },
}

impl Ec2Error {
    /// EC2 throttled the call or failed inside (`RequestLimitExceeded`, `InternalError`,
    /// `Unavailable`...): the retry policy's codes ([`super::aws::retry`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Ec2Error::Api { code, .. } if super::aws::retry::is_transient_code(code))
    }
}

/// One page of an answer, with the token of the next.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

/// A network interface: id, groups, every private address (IPv4 and IPv6) and every
/// prefix delegated to it (`ipv4PrefixSet`, `ipv6PrefixSet`: prefix delegation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInterface {
    pub id: String,
    pub groups: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub prefixes: Vec<IpNet>,
    /// `vpcId`, when answered.
    pub vpc_id: Option<String>,
}

/// A VPC and every CIDR block associated with it (IPv4 and IPv6, secondary ones included).
#[derive(Debug, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub cidrs: Vec<IpNet>,
}

/// EC2's error document in an answer to `call`, when it is one.
pub fn api_error(call: &'static str, xml: &str) -> Option<Ec2Error> {
    match parse(call, xml) {
        Err(e @ Ec2Error::Api { .. }) => Some(e),
        _ => None,
    }
}

fn parse<'a>(call: &'static str, xml: &'a str) -> Result<Document<'a>, Ec2Error> {
    let doc = Document::parse(xml).map_err(|source| Ec2Error::Xml { call, source })?;
    // EC2's error document: <Response><Errors><Error><Code>..</Code><Message>..</Message>.
    let root = doc.root_element();
    if let Some(err) = child(root, "Errors").and_then(|e| child(e, "Error")) {
        return Err(Ec2Error::Api {
            call,
            code: text(err, "Code").unwrap_or("unknown").to_owned(),
            message: text(err, "Message").unwrap_or_default().to_owned(),
        });
    }
    Ok(doc)
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name).and_then(|c| c.text()).map(str::trim)
}

/// The `<item>` elements of the list `name` under `n` (none when the list is absent).
fn items<'a, 'i>(n: Node<'a, 'i>, name: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(n, name).into_iter().flat_map(|l| {
        l.children()
            .filter(|c| c.is_element() && c.tag_name().name() == "item")
    })
}

fn next_token(root: Node<'_, '_>) -> Option<String> {
    text(root, "nextToken")
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn required<'a>(call: &'static str, n: Node<'a, '_>, name: &str) -> Result<&'a str, Ec2Error> {
    text(n, name)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Ec2Error::Malformed {
            call,
            what: format!("an item without <{name}>"),
        })
}

fn cidr(call: &'static str, s: &str) -> Result<IpNet, Ec2Error> {
    s.parse().map_err(|_| Ec2Error::Malformed {
        call,
        what: format!("{s:?} is not a CIDR"),
    })
}

/// `DescribeSecurityGroupsResponse`: the groups and their rules. Prefix-list peers come
/// without their CIDRs: fill them with [`resolve_prefix_lists`].
///
/// # Errors
/// [`Ec2Error`] for an error document, XML that does not parse, or a rule whose protocol,
/// ports or CIDR are not EC2's.
pub fn security_groups(xml: &str) -> Result<Page<SecurityGroup>, Ec2Error> {
    const CALL: &str = "DescribeSecurityGroups";
    let doc = parse(CALL, xml)?;
    let root = doc.root_element();
    let mut out = Vec::new();
    for g in items(root, "securityGroupInfo") {
        let id = required(CALL, g, "groupId")?;
        let rules = |list: &str| -> Result<Vec<SgRule>, Ec2Error> {
            let mut rules = Vec::new();
            for p in items(g, list) {
                let proto = required(CALL, p, "ipProtocol")?;
                let protocol = Protocol::parse(proto).ok_or_else(|| Ec2Error::Malformed {
                    call: CALL,
                    what: format!("{id}: ipProtocol {proto:?}"),
                })?;
                let port = |name: &str| -> Result<Option<i32>, Ec2Error> {
                    text(p, name)
                        .map(|v| {
                            v.parse().map_err(|_| Ec2Error::Malformed {
                                call: CALL,
                                what: format!("{id}: {name} {v:?}"),
                            })
                        })
                        .transpose()
                };
                let ports = Ports::from_ec2(protocol, port("fromPort")?, port("toPort")?).map_err(
                    |what| Ec2Error::Malformed {
                        call: CALL,
                        what: format!("{id}: {what}"),
                    },
                )?;
                let description = |n: Node<'_, '_>| text(n, "description").map(str::to_owned);
                let mut push = |peer: Peer, desc: Option<String>| {
                    rules.push(SgRule {
                        id: None,
                        protocol,
                        ports,
                        peer,
                        description: desc,
                    })
                };
                for r in items(p, "ipRanges") {
                    let c = cidr(CALL, required(CALL, r, "cidrIp")?)?;
                    push(Peer::Cidr { cidr: c }, description(r));
                }
                for r in items(p, "ipv6Ranges") {
                    let c = cidr(CALL, required(CALL, r, "cidrIpv6")?)?;
                    push(Peer::Cidr { cidr: c }, description(r));
                }
                for r in items(p, "prefixListIds") {
                    let id = required(CALL, r, "prefixListId")?.to_owned();
                    push(
                        Peer::PrefixList {
                            id,
                            cidrs: Vec::new(),
                        },
                        description(r),
                    );
                }
                for r in items(p, "groups") {
                    let id = required(CALL, r, "groupId")?.to_owned();
                    push(Peer::Group { id }, description(r));
                }
            }
            Ok(rules)
        };
        out.push(SecurityGroup {
            id: id.to_owned(),
            name: text(g, "groupName").map(str::to_owned),
            ingress: rules("ipPermissions")?,
            egress: rules("ipPermissionsEgress")?,
        });
    }
    Ok(Page {
        items: out,
        next_token: next_token(root),
    })
}

/// The prefix lists the groups' rules name, each once.
pub fn prefix_list_ids(groups: &[SecurityGroup]) -> Vec<String> {
    let mut ids: Vec<String> = groups
        .iter()
        .flat_map(|g| g.ingress.iter().chain(&g.egress))
        .filter_map(|r| match &r.peer {
            Peer::PrefixList { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Fills each prefix-list peer with the CIDRs `entries` gives for its id.
pub fn resolve_prefix_lists(
    groups: &mut [SecurityGroup],
    entries: &std::collections::BTreeMap<String, Vec<IpNet>>,
) {
    for r in groups
        .iter_mut()
        .flat_map(|g| g.ingress.iter_mut().chain(g.egress.iter_mut()))
    {
        if let Peer::PrefixList { id, cidrs } = &mut r.peer
            && let Some(e) = entries.get(id)
        {
            cidrs.clone_from(e);
        }
    }
}

/// `GetManagedPrefixListEntriesResponse`: the list's CIDRs.
///
/// # Errors
/// [`Ec2Error`] for an error document, bad XML or an entry that is not a CIDR.
pub fn prefix_list_entries(xml: &str) -> Result<Page<IpNet>, Ec2Error> {
    const CALL: &str = "GetManagedPrefixListEntries";
    let doc = parse(CALL, xml)?;
    let root = doc.root_element();
    let items = items(root, "entrySet")
        .map(|e| cidr(CALL, required(CALL, e, "cidr")?))
        .collect::<Result<_, _>>()?;
    Ok(Page {
        items,
        next_token: next_token(root),
    })
}

/// `DescribeNetworkInterfacesResponse`: each ENI's id, groups, private addresses and
/// delegated prefixes.
///
/// # Errors
/// [`Ec2Error`] for an error document, bad XML, or an ENI without id or with an address
/// that is not one.
pub fn network_interfaces(xml: &str) -> Result<Page<NetworkInterface>, Ec2Error> {
    const CALL: &str = "DescribeNetworkInterfaces";
    let doc = parse(CALL, xml)?;
    let root = doc.root_element();
    let mut out = Vec::new();
    for e in items(root, "networkInterfaceSet") {
        let id = required(CALL, e, "networkInterfaceId")?.to_owned();
        let groups = items(e, "groupSet")
            .map(|g| required(CALL, g, "groupId").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let addr = |s: &str| -> Result<IpAddr, Ec2Error> {
            s.parse().map_err(|_| Ec2Error::Malformed {
                call: CALL,
                what: format!("{id}: {s:?} is not an address"),
            })
        };
        let mut addresses = Vec::new();
        if let Some(a) = text(e, "privateIpAddress") {
            addresses.push(addr(a)?);
        }
        for a in items(e, "privateIpAddressesSet") {
            addresses.push(addr(required(CALL, a, "privateIpAddress")?)?);
        }
        for a in items(e, "ipv6AddressesSet") {
            addresses.push(addr(required(CALL, a, "ipv6Address")?)?);
        }
        addresses.sort();
        addresses.dedup();
        let mut prefixes = Vec::new();
        for p in items(e, "ipv4PrefixSet") {
            prefixes.push(cidr(CALL, required(CALL, p, "ipv4Prefix")?)?);
        }
        for p in items(e, "ipv6PrefixSet") {
            prefixes.push(cidr(CALL, required(CALL, p, "ipv6Prefix")?)?);
        }
        out.push(NetworkInterface {
            vpc_id: text(e, "vpcId")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            id,
            groups,
            addresses,
            prefixes,
        });
    }
    Ok(Page {
        items: out,
        next_token: next_token(root),
    })
}

/// `DescribeVpcsResponse`: each VPC's associated CIDR blocks (`cidrBlockAssociationSet`,
/// `ipv6CidrBlockAssociationSet`; blocks being disassociated or failed are left out).
///
/// # Errors
/// [`Ec2Error`] for an error document, bad XML, or a block that is not a CIDR.
pub fn vpcs(xml: &str) -> Result<Page<Vpc>, Ec2Error> {
    const CALL: &str = "DescribeVpcs";
    let doc = parse(CALL, xml)?;
    let root = doc.root_element();
    let mut out = Vec::new();
    for v in items(root, "vpcSet") {
        let id = required(CALL, v, "vpcId")?.to_owned();
        let mut cidrs = Vec::new();
        let live = |a: Node<'_, '_>, state: &str| {
            child(a, state)
                .and_then(|s| text(s, "state"))
                .is_none_or(|s| s == "associated" || s == "associating")
        };
        for a in items(v, "cidrBlockAssociationSet") {
            if live(a, "cidrBlockState") {
                cidrs.push(cidr(CALL, required(CALL, a, "cidrBlock")?)?);
            }
        }
        for a in items(v, "ipv6CidrBlockAssociationSet") {
            if live(a, "ipv6CidrBlockState") {
                cidrs.push(cidr(CALL, required(CALL, a, "ipv6CidrBlock")?)?);
            }
        }
        if cidrs.is_empty()
            && let Some(c) = text(v, "cidrBlock")
        {
            cidrs.push(cidr(CALL, c)?);
        }
        cidrs.sort();
        cidrs.dedup();
        out.push(Vpc { id, cidrs });
    }
    Ok(Page {
        items: out,
        next_token: next_token(root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VPC with a secondary IPv4 block, one being disassociated, and an IPv6 block.
    #[test]
    fn vpcs_give_every_associated_block() {
        let xml = r#"<DescribeVpcsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <vpcSet><item><vpcId>vpc-1</vpcId><cidrBlock>192.168.0.0/16</cidrBlock>
    <cidrBlockAssociationSet>
      <item><cidrBlock>192.168.0.0/16</cidrBlock><cidrBlockState><state>associated</state></cidrBlockState></item>
      <item><cidrBlock>100.64.0.0/16</cidrBlock><cidrBlockState><state>associated</state></cidrBlockState></item>
      <item><cidrBlock>10.9.0.0/16</cidrBlock><cidrBlockState><state>disassociating</state></cidrBlockState></item>
    </cidrBlockAssociationSet>
    <ipv6CidrBlockAssociationSet>
      <item><ipv6CidrBlock>2600:1f14::/56</ipv6CidrBlock><ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item>
    </ipv6CidrBlockAssociationSet></item></vpcSet></DescribeVpcsResponse>"#;
        let page = vpcs(xml).unwrap();
        let cidrs: Vec<String> = page.items[0]
            .cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["100.64.0.0/16", "192.168.0.0/16", "2600:1f14::/56"]);
        assert_eq!(page.items[0].id, "vpc-1");
    }

    #[test]
    fn internal_errors_are_transient_and_denials_are_not() {
        let e = |code: &str| Ec2Error::Api {
            call: "DescribeVpcs",
            code: code.into(),
            message: String::new(),
        };
        for code in ["RequestLimitExceeded", "InternalError", "Unavailable"] {
            assert!(e(code).is_transient(), "{code}");
        }
        assert!(!e("UnauthorizedOperation").is_transient());
        assert!(!e("InvalidGroup.NotFound").is_transient());
    }

    /// The shape EC2 (and moto) answer with, trimmed to the fields read.
    const GROUPS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeSecurityGroupsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <securityGroupInfo>
    <item>
      <ownerId>111122223333</ownerId>
      <groupId>sg-0pod</groupId>
      <groupName>pod</groupName>
      <vpcId>vpc-1</vpcId>
      <ipPermissions>
        <item>
          <ipProtocol>tcp</ipProtocol>
          <fromPort>80</fromPort>
          <toPort>80</toPort>
          <groups/>
          <ipRanges><item><cidrIp>0.0.0.0/0</cidrIp><description>web</description></item></ipRanges>
          <ipv6Ranges><item><cidrIpv6>::/0</cidrIpv6></item></ipv6Ranges>
          <prefixListIds/>
        </item>
        <item>
          <ipProtocol>-1</ipProtocol>
          <groups><item><userId>111122223333</userId><groupId>sg-0node</groupId></item></groups>
          <ipRanges/>
        </item>
        <item>
          <ipProtocol>icmp</ipProtocol>
          <fromPort>8</fromPort>
          <toPort>-1</toPort>
          <prefixListIds><item><prefixListId>pl-0abc</prefixListId></item></prefixListIds>
        </item>
      </ipPermissions>
      <ipPermissionsEgress>
        <item>
          <ipProtocol>-1</ipProtocol>
          <ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges>
        </item>
      </ipPermissionsEgress>
    </item>
  </securityGroupInfo>
  <nextToken>t-2</nextToken>
</DescribeSecurityGroupsResponse>"#;

    #[test]
    fn describe_security_groups() {
        let page = security_groups(GROUPS).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("t-2"));
        let g = &page.items[0];
        assert_eq!((g.id.as_str(), g.name.as_deref()), ("sg-0pod", Some("pod")));
        let rules: Vec<String> = g.ingress.iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            [
                "tcp/80 0.0.0.0/0",
                "tcp/80 ::/0",
                "all traffic members of sg-0node",
                "icmp type 8 code any prefix list pl-0abc",
            ]
        );
        assert_eq!(g.ingress[0].description.as_deref(), Some("web"));
        assert_eq!(g.egress.len(), 1);
        let mut groups = page.items;
        assert_eq!(prefix_list_ids(&groups), ["pl-0abc"]);
        let entries = [("pl-0abc".to_owned(), vec!["10.0.0.0/8".parse().unwrap()])].into();
        resolve_prefix_lists(&mut groups, &entries);
        assert_eq!(
            groups[0].ingress[3].peer,
            Peer::PrefixList {
                id: "pl-0abc".into(),
                cidrs: vec!["10.0.0.0/8".parse().unwrap()]
            }
        );
    }

    #[test]
    fn describe_network_interfaces() {
        let xml = r#"<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0b1</networkInterfaceId>
      <interfaceType>branch</interfaceType>
      <vpcId>vpc-1</vpcId>
      <groupSet><item><groupId>sg-0pod</groupId><groupName>pod</groupName></item><item><groupId>sg-0x</groupId></item></groupSet>
      <privateIpAddress>192.168.3.219</privateIpAddress>
      <privateIpAddressesSet><item><privateIpAddress>192.168.3.219</privateIpAddress><primary>true</primary></item></privateIpAddressesSet>
      <ipv6AddressesSet><item><ipv6Address>2600:1f14::10</ipv6Address></item></ipv6AddressesSet>
      <ipv4PrefixSet><item><ipv4Prefix>192.168.7.32/28</ipv4Prefix></item></ipv4PrefixSet>
      <ipv6PrefixSet><item><ipv6Prefix>2600:1f14::a0:0:0:0/80</ipv6Prefix></item></ipv6PrefixSet>
    </item>
  </networkInterfaceSet>
</DescribeNetworkInterfacesResponse>"#;
        let page = network_interfaces(xml).unwrap();
        assert_eq!(
            page.items,
            [NetworkInterface {
                id: "eni-0b1".into(),
                groups: vec!["sg-0pod".into(), "sg-0x".into()],
                addresses: vec![
                    "192.168.3.219".parse().unwrap(),
                    "2600:1f14::10".parse().unwrap()
                ],
                prefixes: vec![
                    "192.168.7.32/28".parse().unwrap(),
                    "2600:1f14::a0:0:0:0/80".parse().unwrap()
                ],
                vpc_id: Some("vpc-1".into()),
            }]
        );
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn prefix_list_entries_page() {
        let xml = r#"<GetManagedPrefixListEntriesResponse><entrySet><item><cidr>10.0.1.0/24</cidr></item><item><cidr>2600::/40</cidr></item></entrySet></GetManagedPrefixListEntriesResponse>"#;
        assert_eq!(prefix_list_entries(xml).unwrap().items.len(), 2);
    }

    #[test]
    fn faults_are_errors_naming_the_call() {
        let throttled = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>r</RequestID></Response>"#;
        let e = security_groups(throttled).unwrap_err();
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "EC2 DescribeSecurityGroups: RequestLimitExceeded: Request limit exceeded."
        );
        let denied = throttled
            .replace("RequestLimitExceeded", "UnauthorizedOperation")
            .replace(
                "Request limit exceeded.",
                "You are not authorized to perform this operation.",
            );
        let e = network_interfaces(&denied).unwrap_err();
        assert!(!e.is_transient());
        assert!(
            e.to_string()
                .starts_with("EC2 DescribeNetworkInterfaces: UnauthorizedOperation")
        );
        // Truncated XML, a bad CIDR, a bad port, a missing id: named, never a panic.
        let e = security_groups(&GROUPS[..GROUPS.len() / 2]).unwrap_err();
        assert!(matches!(e, Ec2Error::Xml { .. }), "{e}");
        let e = security_groups(&GROUPS.replace(
            "0.0.0.0/0</cidrIp><description",
            "0.0.0.300/0</cidrIp><description",
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "EC2 DescribeSecurityGroups: malformed answer: \"0.0.0.300/0\" is not a CIDR"
        );
        let e = security_groups(
            &GROUPS.replace("<fromPort>80</fromPort>", "<fromPort>eighty</fromPort>"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("sg-0pod: fromPort \"eighty\""),
            "{e}"
        );
        let e = security_groups(&GROUPS.replace("<groupId>sg-0pod</groupId>", "")).unwrap_err();
        assert!(e.to_string().contains("an item without <groupId>"), "{e}");
        let e = prefix_list_entries("<x><entrySet><item><cidr>nope</cidr></item></entrySet></x>")
            .unwrap_err();
        assert!(e.to_string().contains("\"nope\" is not a CIDR"), "{e}");
    }
}
