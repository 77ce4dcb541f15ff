//! What the VPC CNI's IPAMD says about the node's ENIs (`curl 127.0.0.1:61679/v1/enis`):
//! which ENI owns which secondary address or prefix, which one is the trunk, and which pod
//! each assigned address went to. Pure: `collect::ipamd` fetches the document.
//!
//! The document (datastore `ENIInfos`), since CNI 1.20 one per network card:
//! `{"0": {"TotalIPs", "AssignedIPs", "ENIs": {"eni-...": {"ID", "IsPrimary", "IsTrunk",
//! "IsEFA", "DeviceNumber", "AvailableIPv4Cidrs": {"<cidr>": {"Cidr", "IPAddresses":
//! {"<ip>": {"Address", "IPAMMetadata": {"k8sPodNamespace", "k8sPodName"}}}, "IsPrefix"}}}}}}`;
//! before 1.20 the inner object alone. Branch ENIs are not in it (their pods' addresses are
//! the resource controller's, not IPAMD's).

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// A node ENI as IPAMD knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpamdEni {
    /// `eni-0123...`.
    pub id: String,
    pub is_primary: bool,
    pub is_trunk: bool,
    /// The ENI's device index: its route table is `device_number + 1` (card 0).
    pub device_number: u32,
    pub network_card: u32,
    /// Secondary addresses (or prefixes' addresses) IPAMD holds on it, ascending.
    pub addresses: Vec<IpAddr>,
    /// Assigned addresses -> `namespace/pod`.
    pub pods: BTreeMap<IpAddr, String>,
}

/// Why `/v1/enis` cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("IPAMD's /v1/enis is not the datastore's ENI document: {message}")]
pub struct IpamdError {
    pub message: String,
}

#[derive(Deserialize)]
struct RawInfos {
    #[serde(rename = "ENIs", default)]
    enis: BTreeMap<String, RawEni>,
}

#[derive(Deserialize)]
struct RawEni {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "IsPrimary", default)]
    is_primary: bool,
    #[serde(rename = "IsTrunk", default)]
    is_trunk: bool,
    #[serde(rename = "DeviceNumber", default)]
    device_number: u32,
    #[serde(rename = "AvailableIPv4Cidrs", default)]
    cidrs: Option<BTreeMap<String, RawCidr>>,
}

#[derive(Deserialize)]
struct RawCidr {
    #[serde(rename = "IPAddresses", default)]
    addresses: Option<BTreeMap<String, RawAddress>>,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "IPAMMetadata", default)]
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(rename = "k8sPodNamespace", default)]
    namespace: Option<String>,
    #[serde(rename = "k8sPodName", default)]
    name: Option<String>,
}

/// Parses `/v1/enis`, either shape.
///
/// # Errors
/// [`IpamdError`] when the body is not that JSON (or an address key is not an address).
pub fn parse_enis(body: &str) -> Result<Vec<IpamdEni>, IpamdError> {
    let err = |message: String| IpamdError { message };
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| err(e.to_string()))?;
    let cards: Vec<(u32, RawInfos)> = if value.get("ENIs").is_some() {
        vec![(
            0,
            serde_json::from_value(value).map_err(|e| err(e.to_string()))?,
        )]
    } else {
        let map: BTreeMap<String, RawInfos> =
            serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        map.into_iter()
            .map(|(card, infos)| {
                card.parse::<u32>()
                    .map(|c| (c, infos))
                    .map_err(|_| err(format!("network card key {card:?} is not a number")))
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (card, infos) in cards {
        for eni in infos.enis.into_values() {
            let mut addresses = Vec::new();
            let mut pods = BTreeMap::new();
            for (_, cidr) in eni.cidrs.into_iter().flatten() {
                for (ip, a) in cidr.addresses.into_iter().flatten() {
                    let ip: IpAddr = ip
                        .parse()
                        .map_err(|_| err(format!("{ip:?} is not an address")))?;
                    addresses.push(ip);
                    if let Some(RawMetadata {
                        namespace: Some(ns),
                        name: Some(name),
                    }) = a.metadata
                        && !name.is_empty()
                    {
                        pods.insert(ip, format!("{ns}/{name}"));
                    }
                }
            }
            addresses.sort();
            out.push(IpamdEni {
                id: eni.id,
                is_primary: eni.is_primary,
                is_trunk: eni.is_trunk,
                device_number: eni.device_number,
                network_card: card,
                addresses,
                pods,
            });
        }
    }
    out.sort_by_key(|e| (e.network_card, e.device_number));
    Ok(out)
}

/// The route table of a node ENI (`pkg/networkutils`): device index + 1 on card 0,
/// 10000 + device + 100 * card beyond.
pub fn route_table(eni: &IpamdEni) -> u32 {
    if eni.network_card == 0 {
        eni.device_number + 1
    } else {
        10_000 + eni.device_number + 100 * eni.network_card
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V120: &str = r#"{"0":{"TotalIPs":28,"AssignedIPs":2,"ENIs":{
        "eni-0aaa":{"ID":"eni-0aaa","IsPrimary":true,"IsTrunk":false,"IsEFA":false,"DeviceNumber":0,
          "AvailableIPv4Cidrs":{"192.168.7.31/32":{"Cidr":{"IP":"192.168.7.31","Mask":"/////w=="},
            "IPAddresses":{"192.168.7.31":{"Address":"192.168.7.31","IPAMKey":{"networkName":"aws-cni","containerID":"c1","ifName":"eth0"},
              "IPAMMetadata":{"k8sPodNamespace":"default","k8sPodName":"ordinary-a"},"AssignedTime":"2026-11-26T10:00:00Z"}},"IsPrefix":false},
            "192.168.9.9/32":{"Cidr":{"IP":"192.168.9.9","Mask":"/////w=="},"IPAddresses":{},"IsPrefix":false}},
          "IPv6Cidrs":{},"RouteTableID":1,"SubnetID":"subnet-1"},
        "eni-0ccc":{"ID":"eni-0ccc","IsPrimary":false,"IsTrunk":true,"IsEFA":false,"DeviceNumber":1,"AvailableIPv4Cidrs":{},"IPv6Cidrs":{}},
        "eni-0bbb":{"ID":"eni-0bbb","IsPrimary":false,"IsTrunk":false,"IsEFA":false,"DeviceNumber":2,
          "AvailableIPv4Cidrs":{"192.168.60.6/32":{"IPAddresses":{"192.168.60.6":{"Address":"192.168.60.6","IPAMMetadata":{"k8sPodNamespace":"default","k8sPodName":"secondary-d"}}}}}}
    }}}"#;

    #[test]
    fn enis_by_network_card() {
        let enis = parse_enis(V120).unwrap();
        let ids: Vec<&str> = enis.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["eni-0aaa", "eni-0ccc", "eni-0bbb"]);
        assert!(enis[0].is_primary && enis[1].is_trunk);
        assert_eq!(
            enis[0].addresses.len(),
            1,
            "the unassigned /32 has no address entry"
        );
        assert_eq!(
            enis[0]
                .pods
                .get(&"192.168.7.31".parse().unwrap())
                .map(String::as_str),
            Some("default/ordinary-a")
        );
        assert_eq!(route_table(&enis[2]), 3);
    }

    #[test]
    fn the_shape_before_1_20() {
        let old = r#"{"TotalIPs":1,"AssignedIPs":0,"ENIs":{"eni-1":{"ID":"eni-1","IsPrimary":true,"DeviceNumber":0}}}"#;
        let enis = parse_enis(old).unwrap();
        assert_eq!((enis[0].id.as_str(), enis[0].network_card), ("eni-1", 0));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for body in [
            "",
            "404 page not found",
            r#"{"x": {"ENIs": {}}}"#,
            r#"{"0": {"ENIs": {"eni-1": {"IsPrimary": true}}}}"#,
            r#"{"0": {"ENIs": {"eni-1": {"ID": "eni-1", "AvailableIPv4Cidrs": {"c": {"IPAddresses": {"not-an-ip": {}}}}}}}}"#,
        ] {
            assert!(parse_enis(body).is_err(), "{body:?}");
        }
        let multi = parse_enis(r#"{"1": {"ENIs": {"eni-9": {"ID": "eni-9", "DeviceNumber": 0}}}}"#)
            .unwrap();
        assert_eq!(route_table(&multi[0]), 10_000 + 100);
    }
}
