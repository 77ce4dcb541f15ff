//! Turns a [`Spec`] into the shell script that builds the lab: `ip`, `sysctl` and `nft`
//! commands, exactly what an SRE would type. Pure: nothing runs here.
//!
//! Namespaces, for prefix `P`: `P-node` (the EKS node), `P-vpc` (the VPC: routes between the
//! bastion, the node's `eth0` and the 802.1Q-tagged trunk, and enforces security groups the
//! way AWS does outside the node), `P-bastion`, and `P-pod<i>` per pod.

use std::fmt::Write as _;

use super::{
    names,
    spec::{Fault, Mode, Pod, PodKind, Proto, RuleOn, SecurityGroup, Spec, VlanRoute},
};

/// Append one line to the script (writing to a String cannot fail).
macro_rules! emit {
    ($($arg:tt)*) => {
        let _ = writeln!($($arg)*);
    };
}

/// The two routes the CNI puts in an ENI's own table (secondary ENI or branch ENI):
/// `<gw> dev <dev> scope link` and `default via <gw> dev <dev>`.
fn eni_table_routes(s: &mut String, node: &str, gw: std::net::Ipv4Addr, dev: &str, table: u32) {
    emit!(
        s,
        "ip -n {node} route add {gw} dev {dev} scope link table {table}"
    );
    emit!(
        s,
        "ip -n {node} route add default via {gw} dev {dev} table {table}"
    );
}

/// Names of the lab's namespaces and links.
#[derive(Clone, Debug)]
pub struct Layout {
    pub prefix: String,
}

/// The VPC's side of the node's primary ENI.
pub const VPC_ENI0: &str = "eni-node";
/// The VPC's side of the trunk ENI; branch ENIs are its VLANs `trunk.<id>`.
pub const VPC_TRUNK: &str = "trunk";
/// Where pods send everything: the CNI's link-local gateway.
pub const POD_GATEWAY: &str = "169.254.1.1";
/// The EKS Pod Identity agent's dummy interface and addresses.
pub const POD_IDENTITY_LINK: &str = "pod-id-link0";
pub const POD_IDENTITY_V4: &str = "169.254.170.23";
pub const POD_IDENTITY_V6: &str = "fd00:ec2::23";

impl Layout {
    pub fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }
    pub fn vpc(&self) -> String {
        format!("{}-vpc", self.prefix)
    }
    pub fn bastion(&self) -> String {
        format!("{}-bastion", self.prefix)
    }
    pub fn pod(&self, index: usize) -> String {
        format!("{}-pod{index}", self.prefix)
    }
    pub fn namespaces(&self, spec: &Spec) -> Vec<String> {
        let mut v = vec![self.node(), self.vpc(), self.bastion()];
        v.extend((0..spec.pods.len()).map(|i| self.pod(i)));
        v
    }
}

/// MAC of a pod's host veth (the CNI uses a random locally administered one; fixed here
/// so the pod's permanent neighbour entry can name it up front).
fn host_veth_mac(i: usize) -> String {
    format!("02:5e:00:00:{:02x}:{:02x}", i / 256, i % 256)
}

/// MAC of the branch ENI on VLAN `vlan`, as the resource controller's annotation gives it.
pub fn branch_eni_mac(vlan: u16) -> String {
    format!("0a:b7:00:00:00:{vlan:02x}")
}

const ETH0_MAC: &str = "02:e0:00:00:00:01";

/// MAC of the k-th secondary ENI.
fn eni_mac(k: usize) -> String {
    format!("02:e0:00:00:01:{k:02x}")
}

/// The VPC's side of a secondary ENI.
pub fn vpc_eni(name: &str) -> String {
    format!("eni-{name}")
}

/// The script that builds the whole lab, the pods plumbed by the lab itself.
pub fn script(spec: &Spec, l: &Layout) -> String {
    script_with(spec, l, |_| true)
}

/// Whether the real plugin can plumb `pod`: not a branch pod on a node without a trunk
/// (the host kernel's lab: no 802.1Q, so no VLAN link any plugin could make; the lab
/// plumbs that pod's veth and rules itself and leaves the VLAN out).
pub fn plugin_can_plumb(spec: &Spec, pod: &Pod) -> bool {
    pod.kind != PodKind::Branch || spec.node.trunk.is_some()
}

/// The script that builds the lab; for a pod where `lab_plumbs(i)` is false it leaves out
/// what the CNI plugin does on the node and in the pod (veths, addresses, VLAN links, rules,
/// routes), so [`super::cni`] can run the real plugin instead. What ipamd and AWS do
/// (namespaces, ENIs, tables of secondary ENIs, sysctls, the VPC's side of every pod) stays.
pub fn script_with(spec: &Spec, l: &Layout, lab_plumbs: impl Fn(usize) -> bool) -> String {
    let mut s = String::from("set -eu\n");
    let (node, vpc, bastion) = (l.node(), l.vpc(), l.bastion());
    let mtu = spec.node.mtu;
    let gw = spec.vpc.gateway();
    let vpc_len = spec.vpc.cidr.prefix_len();
    for ns in l.namespaces(spec) {
        emit!(s, "ip netns add {ns}\nip -n {ns} link set lo up");
    }
    emit!(
        s,
        "\n# VPC: the primary ENI eth0, the bastion's subnet, routing and forwarding"
    );
    emit!(
        s,
        "ip -n {node} link add eth0 address {ETH0_MAC} mtu {mtu} type veth peer name {VPC_ENI0} netns {vpc} mtu {mtu}"
    );
    emit!(
        s,
        "ip -n {node} addr add {}/{vpc_len} dev eth0",
        spec.node.primary_ip
    );
    emit!(s, "ip -n {node} link set eth0 up");
    emit!(
        s,
        "ip -n {vpc} addr add {gw}/{vpc_len} dev {VPC_ENI0}\nip -n {vpc} link set {VPC_ENI0} up"
    );
    emit!(s, "ip -n {node} route add default via {gw} dev eth0");
    let bastion_gw = std::net::Ipv4Addr::from(u32::from(spec.vpc.bastion.network()) + 1);
    emit!(
        s,
        "ip -n {bastion} link add eth0 type veth peer name bastion netns {vpc}"
    );
    emit!(
        s,
        "ip -n {bastion} addr add {} dev eth0\nip -n {bastion} link set eth0 up",
        spec.vpc.bastion
    );
    emit!(s, "ip -n {bastion} route add default via {bastion_gw}");
    emit!(
        s,
        "ip -n {vpc} addr add {bastion_gw}/{} dev bastion\nip -n {vpc} link set bastion up",
        spec.vpc.bastion.prefix_len()
    );
    // AWS answers ARP for every address of the subnet (the node ARPs on eth0 for a branch
    // pod's IP, which sits in the same subnet, and for other nodes): proxy ARP, at once.
    emit!(
        s,
        "ip netns exec {vpc} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.{VPC_ENI0}.proxy_arp=1 net.ipv4.neigh.{VPC_ENI0}.proxy_delay=0"
    );
    if let Some(trunk) = &spec.node.trunk {
        emit!(
            s,
            "\n# Trunk ENI {trunk}: the VPC sees each branch ENI as an 802.1Q VLAN of it"
        );
        emit!(
            s,
            "ip -n {node} link add {trunk} address 02:e0:00:00:00:02 mtu {mtu} type veth peer name {VPC_TRUNK} netns {vpc} mtu {mtu}"
        );
        emit!(
            s,
            "ip -n {node} link set {trunk} up\nip -n {vpc} link set {VPC_TRUNK} up"
        );
    }

    for (k, eni) in spec.node.secondary_enis.iter().enumerate() {
        let (name, t, v) = (&eni.name, eni.table(), vpc_eni(&eni.name));
        emit!(
            s,
            "\n# Secondary ENI {name} (device {}): table {t}, rule 32765 from its IP",
            eni.device_index
        );
        emit!(
            s,
            "ip -n {node} link add {name} address {} mtu {mtu} type veth peer name {v} netns {vpc} mtu {mtu}",
            eni_mac(k)
        );
        emit!(
            s,
            "ip -n {node} addr add {}/{vpc_len} dev {name}\nip -n {node} link set {name} up",
            eni.ip
        );
        // The CNI removes the connected route the kernel adds, so the main table keeps one.
        emit!(s, "ip -n {node} route del {} dev {name}", spec.vpc.cidr);
        eni_table_routes(&mut s, &node, gw, name, t);
        emit!(
            s,
            "ip -n {node} rule add pref 32765 from {} table {t}",
            eni.ip
        );
        emit!(
            s,
            "ip -n {vpc} addr add {gw}/32 dev {v}\nip -n {vpc} link set {v} up"
        );
        emit!(s, "ip -n {vpc} route add {}/32 dev {v}", eni.ip);
        emit!(
            s,
            "ip netns exec {vpc} sysctl -qw net.ipv4.conf.{v}.proxy_arp=1 net.ipv4.neigh.{v}.proxy_delay=0"
        );
        emit!(
            s,
            "ip -n {vpc} neigh add {} lladdr {} dev {v} nud permanent",
            eni.ip,
            eni_mac(k)
        );
    }

    emit!(
        s,
        "\n# Node sysctls as aws-node's init container and the AMI leave them"
    );
    let demux = if spec.node.disable_tcp_early_demux {
        0
    } else {
        1
    };
    emit!(
        s,
        "ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=2 net.ipv4.tcp_early_demux={demux}"
    );
    // SetupHostNetwork: NodePort return traffic marked 0x80 goes out of the main ENI.
    emit!(
        s,
        "ip -n {node} rule add pref 1024 fwmark 0x80/0x80 table main"
    );
    if spec.node.enforcing_mode == Mode::Strict {
        emit!(
            s,
            "# strict mode (ENABLE_POD_ENI): SetupHostNetwork moves the local rule from 0 to 20, below the VLAN iif rules"
        );
        emit!(
            s,
            "ip -n {node} rule add pref 20 lookup local\nip -n {node} rule del pref 0 lookup local"
        );
    }

    for (i, pod) in spec.pods.iter().enumerate() {
        if lab_plumbs(i) {
            pod_script(&mut s, spec, l, i, pod);
        }
        pod_vpc_script(&mut s, spec, l, pod);
    }
    emit!(s, "\n# Security groups, enforced in the VPC as AWS does");
    emit!(
        s,
        "ip netns exec {vpc} nft -f - <<'NFT'\n{}NFT",
        nft_ruleset(spec)
    );
    s
}

fn pod_script(s: &mut String, spec: &Spec, l: &Layout, i: usize, pod: &Pod) {
    let (node, pns) = (l.node(), l.pod(i));
    let veth = names::host_veth(spec, pod);
    let mac = host_veth_mac(i);
    let ip = pod.ip;
    let gw = spec.vpc.gateway();
    emit!(
        s,
        "\n# pod {}/{} ({:?}) on {veth}",
        pod.namespace,
        pod.name,
        pod.kind
    );
    emit!(
        s,
        "ip -n {node} link add {veth} address {mac} mtu {} type veth peer name eth0 netns {pns} mtu {}",
        spec.node.mtu,
        spec.node.mtu
    );
    // The plugin (v1.11+) hardens every host-side link for IPv6 before bringing it up.
    link_v6_sysctls(s, &node, &veth);
    emit!(s, "ip -n {node} link set {veth} up");
    emit!(
        s,
        "ip -n {pns} addr add {ip}/32 dev eth0\nip -n {pns} link set eth0 up"
    );
    emit!(s, "ip -n {pns} route add {POD_GATEWAY} dev eth0 scope link");
    emit!(
        s,
        "ip -n {pns} route add default via {POD_GATEWAY} dev eth0"
    );
    emit!(
        s,
        "ip -n {pns} neigh add {POD_GATEWAY} lladdr {mac} dev eth0 nud permanent"
    );
    match (pod.kind, pod.vlan) {
        (PodKind::Branch, Some(vlan)) => {
            let table = names::vlan_table(vlan);
            let vl = names::vlan_link(vlan);
            if let Some(trunk) = &spec.node.trunk {
                let bmac = branch_eni_mac(vlan);
                emit!(
                    s,
                    "ip -n {node} link add link {trunk} name {vl} address {bmac} type vlan id {vlan}"
                );
                link_v6_sysctls(s, &node, &vl);
                emit!(s, "ip -n {node} link set {vl} up");
                eni_table_routes(s, &node, gw, &vl, table);
            }
            match spec.mode_of(pod) {
                Mode::Strict => {
                    emit!(
                        s,
                        "ip -n {node} route add {ip} dev {veth} scope link table {table}"
                    );
                    if spec.node.trunk.is_some() {
                        emit!(s, "ip -n {node} rule add pref 10 iif {vl} table {table}");
                    }
                    emit!(s, "ip -n {node} rule add pref 10 iif {veth} table {table}");
                }
                Mode::Standard => {
                    emit!(s, "ip -n {node} route add {ip} dev {veth} scope link");
                    emit!(s, "ip -n {node} rule add pref 512 to {ip} table main");
                    emit!(s, "ip -n {node} rule add pref 1536 from {ip} table {table}");
                }
            }
        }
        _ => {
            emit!(s, "ip -n {node} route add {ip} dev {veth} scope link");
            emit!(s, "ip -n {node} rule add pref 512 to {ip} table main");
            if let Some(eni) = spec.eni_of(pod) {
                emit!(
                    s,
                    "ip -n {node} rule add pref 1536 from {ip} table {}",
                    eni.table()
                );
            }
        }
    }
}

/// What the plugin's `setHostVethV6Sysctls` and `setupVlan` write for a host-side link:
/// no router advertisements, redirects accepted, no IPv6 forwarding (slash form: VLAN link
/// names hold dots).
fn link_v6_sysctls(s: &mut String, node: &str, dev: &str) {
    emit!(
        s,
        "ip netns exec {node} sysctl -qw net/ipv6/conf/{dev}/accept_ra=0 net/ipv6/conf/{dev}/accept_redirects=1 net/ipv6/conf/{dev}/forwarding=0"
    );
}

/// The VPC's side of a pod: AWS delivers a branch ENI's traffic on its VLAN of the trunk to
/// the branch ENI's MAC (answering ARP for the gateway on every VLAN), and an ENI's
/// secondary IPs to that ENI's MAC.
fn pod_vpc_script(s: &mut String, spec: &Spec, l: &Layout, pod: &Pod) {
    let vpc = l.vpc();
    let (ip, gw) = (pod.ip, spec.vpc.gateway());
    match (pod.kind, pod.vlan) {
        (PodKind::Branch, Some(vlan)) => {
            if spec.node.trunk.is_none() {
                return;
            }
            let bmac = branch_eni_mac(vlan);
            emit!(
                s,
                "ip -n {vpc} link add link {VPC_TRUNK} name {VPC_TRUNK}.{vlan} type vlan id {vlan}"
            );
            emit!(
                s,
                "ip -n {vpc} addr add {gw}/32 dev {VPC_TRUNK}.{vlan}\nip -n {vpc} link set {VPC_TRUNK}.{vlan} up"
            );
            emit!(s, "ip -n {vpc} route add {ip}/32 dev {VPC_TRUNK}.{vlan}");
            emit!(
                s,
                "ip -n {vpc} neigh add {ip} lladdr {bmac} dev {VPC_TRUNK}.{vlan} nud permanent"
            );
        }
        _ => {
            let (vdev, mac) = match spec.eni_of(pod) {
                Some(eni) => {
                    let k = spec
                        .node
                        .secondary_enis
                        .iter()
                        .position(|e| e.name == eni.name)
                        .expect("validated");
                    (vpc_eni(&eni.name), eni_mac(k))
                }
                None => (VPC_ENI0.to_string(), ETH0_MAC.to_string()),
            };
            emit!(s, "ip -n {vpc} route add {ip}/32 dev {vdev}");
            emit!(
                s,
                "ip -n {vpc} neigh add {ip} lladdr {mac} dev {vdev} nud permanent"
            );
        }
    }
}

/// The nftables ruleset of the VPC: stateful allow-lists per ENI, as security groups are.
/// Each ENI has an `in_*` chain (traffic the VPC delivers to it) and an `out_*` chain
/// (traffic it sends); a matching rule returns, anything else is dropped.
pub fn nft_ruleset(spec: &Spec) -> String {
    let mut enis: Vec<(String, String, Vec<&SecurityGroup>)> = Vec::new();
    let groups = |ids: &[String]| -> Vec<&SecurityGroup> {
        spec.security_groups
            .iter()
            .filter(|g| ids.contains(&g.id))
            .collect()
    };
    enis.push((
        "node".into(),
        VPC_ENI0.into(),
        groups(&spec.node.security_groups),
    ));
    for eni in &spec.node.secondary_enis {
        enis.push((
            eni.name.clone(),
            vpc_eni(&eni.name),
            groups(&spec.node.security_groups),
        ));
    }
    if spec.node.trunk.is_some() {
        for p in spec.pods.iter().filter(|p| p.kind == PodKind::Branch) {
            let vlan = p.vlan.expect("validated");
            enis.push((
                format!("v{vlan}"),
                format!("{VPC_TRUNK}.{vlan}"),
                groups(&p.security_groups),
            ));
        }
    }
    let mut s = String::from(
        "flush ruleset\ntable inet sg {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ct state established,related accept\n",
    );
    for (id, dev, _) in &enis {
        emit!(
            s,
            "    iifname \"{dev}\" jump out_{id}\n    oifname \"{dev}\" jump in_{id}"
        );
    }
    s.push_str("  }\n");
    for (id, _, gs) in &enis {
        for (dir, peer) in [("in", "saddr"), ("out", "daddr")] {
            emit!(s, "  chain {dir}_{id} {{");
            for g in gs {
                let rules = if dir == "in" { &g.ingress } else { &g.egress };
                for r in rules {
                    let l4 = match (r.proto, r.port_range().expect("validated")) {
                        (Proto::All, _) => String::new(),
                        (Proto::Icmp, _) => " meta l4proto icmp".into(),
                        (p, None) => format!(
                            " meta l4proto {}",
                            if p == Proto::Tcp { "tcp" } else { "udp" }
                        ),
                        (p, Some((lo, hi))) => {
                            let name = if p == Proto::Tcp { "tcp" } else { "udp" };
                            if lo == hi {
                                format!(" {name} dport {lo}")
                            } else {
                                format!(" {name} dport {lo}-{hi}")
                            }
                        }
                    };
                    emit!(s, "    ip {peer} {}{l4} return # {}", r.cidr, g.id);
                }
            }
            emit!(s, "    counter drop\n  }}");
        }
    }
    s.push_str("}\n");
    s
}

/// The script that injects one fault into a built lab.
///
/// # Errors
/// When the fault names a pod or VLAN the spec does not have.
pub fn fault_script(spec: &Spec, l: &Layout, fault: &Fault) -> anyhow::Result<String> {
    let node = l.node();
    let pod_vlan = |name: &str| -> anyhow::Result<(&Pod, u16)> {
        let p = spec.pod(name)?;
        let v = p
            .vlan
            .ok_or_else(|| anyhow::anyhow!("pod {name} is not a branch pod"))?;
        Ok((p, v))
    };
    Ok(match fault {
        Fault::Sysctl { name, value } => format!("ip netns exec {node} sysctl -qw {name}={value}"),
        Fault::DeleteVlanRule { pod, on } => {
            let (p, vlan) = pod_vlan(pod)?;
            let iif = match on {
                RuleOn::Veth => names::host_veth(spec, p),
                RuleOn::Vlan => names::vlan_link(vlan),
            };
            format!(
                "ip -n {node} rule del pref 10 iif {iif} table {}",
                names::vlan_table(vlan)
            )
        }
        Fault::StaleVlanRule { iif, table } => {
            let stale = format!("ip -n {node} rule add pref 10 iif {iif} table {table}");
            // A live strict veth (a pod re-created under the same name, #1375): the old
            // rule was there first, so it sits before the new pod's own rule.
            let live = spec
                .pods
                .iter()
                .find(|p| names::host_veth(spec, p) == *iif && p.vlan.is_some());
            match live.and_then(|p| p.vlan) {
                Some(vlan) => {
                    let own = format!("pref 10 iif {iif} table {}", names::vlan_table(vlan));
                    format!("ip -n {node} rule del {own}\n{stale}\nip -n {node} rule add {own}")
                }
                None => stale,
            }
        }
        Fault::DeleteVlanRoute { pod, route } => {
            let (p, vlan) = pod_vlan(pod)?;
            let t = names::vlan_table(vlan);
            let gw = spec.vpc.gateway();
            match route {
                VlanRoute::Gateway => format!(
                    "ip -n {node} route del {gw} dev {} table {t}",
                    names::vlan_link(vlan)
                ),
                VlanRoute::Default => format!("ip -n {node} route del default table {t}"),
                VlanRoute::Pod => format!("ip -n {node} route del {} table {t}", p.ip),
            }
        }
        Fault::DeletePodRoute { pod } => {
            let p = spec.pod(pod)?;
            format!(
                "ip -n {node} route del {} dev {}",
                p.ip,
                names::host_veth(spec, p)
            )
        }
        Fault::DeleteToPodRule { pod } => format!(
            "ip -n {node} rule del pref 512 to {} table main",
            spec.pod(pod)?.ip
        ),
        Fault::LocalRuleAtZero => format!("ip -n {node} rule add pref 0 lookup local"),
        Fault::NodelocalDns { address } => {
            format!(
                "ip -n {node} link add nodelocaldns type dummy\nip -n {node} addr add {address}/32 dev nodelocaldns\nip -n {node} link set nodelocaldns up"
            )
        }
        Fault::NodelocalDnsWorkaround { pod, address } => {
            let (p, vlan) = pod_vlan(pod)?;
            let t = names::vlan_table(vlan);
            format!(
                "ip -n {node} route add local {address} dev nodelocaldns table {t}\nip -n {node} rule add pref 9 from {address} to {} table {t}",
                p.ip
            )
        }
        Fault::PodIdentityAgent => format!(
            "ip -n {node} link add {POD_IDENTITY_LINK} type dummy\nip -n {node} addr add {POD_IDENTITY_V4}/32 dev {POD_IDENTITY_LINK}\nip -n {node} addr add {POD_IDENTITY_V6}/128 dev {POD_IDENTITY_LINK}\nip -n {node} link set {POD_IDENTITY_LINK} up"
        ),
        Fault::Mtu { link, mtu } => {
            let dev = match spec.pod(link) {
                Ok(p) => names::host_veth(spec, p),
                Err(_) => link.clone(),
            };
            format!("ip -n {node} link set {dev} mtu {mtu}")
        }
        Fault::TrunkDown => {
            let trunk = spec
                .node
                .trunk
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("the lab has no trunk"))?;
            format!("ip -n {node} link set {trunk} down")
        }
        Fault::DeleteVlanLink { pod } => {
            let (_, vlan) = pod_vlan(pod)?;
            format!("ip -n {node} link del {}", names::vlan_link(vlan))
        }
        Fault::PodGoneWithoutDel { pod } => {
            let p = spec.pod(pod)?;
            let i = spec
                .pods
                .iter()
                .position(|q| q.name == p.name)
                .expect("a pod of the spec");
            let (pns, veth) = (l.pod(i), names::host_veth(spec, p));
            // The kernel frees the namespace, and with it the veth pair, asynchronously.
            format!(
                "ip netns pids {pns} | xargs -r kill -9\nip netns del {pns}\n\
                 for _ in $(seq 100); do ip -n {node} link show {veth} >/dev/null 2>&1 || break; sleep 0.1; done\n\
                 ! ip -n {node} link show {veth} >/dev/null 2>&1"
            )
        }
    })
}

/// The CNI config the lab's node would have (/etc/cni/net.d/10-aws.conflist).
pub fn conflist(spec: &Spec) -> String {
    format!(
        r#"{{"cniVersion":"0.4.0","name":"aws-cni","disableCheck":true,"plugins":[{{"name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"{}","podSGEnforcingMode":"{}","pluginLogFile":"/var/log/aws-routed-eni/plugin.log","pluginLogLevel":"DEBUG"}},{{"name":"egress-cni","type":"egress-cni","enabled":"false"}},{{"type":"portmap","capabilities":{{"portMappings":true}},"snat":true}}]}}"#,
        spec.node.mtu,
        spec.node.enforcing_mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_pod_gets_vlan_table_and_both_iif_rules() {
        let spec = Spec::default_lab();
        let s = script(&spec, &Layout { prefix: "t".into() });
        let veth = names::host_veth(&spec, &spec.pods[0]);
        assert!(veth.starts_with("vlan") && veth.len() == 15, "{veth}");
        assert!(s.contains("ip -n t-node rule add pref 10 iif vlan.eth.1 table 101"));
        assert!(s.contains(&format!(
            "ip -n t-node rule add pref 10 iif {veth} table 101"
        )));
        assert!(s.contains(&format!(
            "ip -n t-node route add 192.168.3.219 dev {veth} scope link table 101"
        )));
        assert!(
            s.contains("ip -n t-node route add default via 192.168.0.1 dev vlan.eth.1 table 101")
        );
        assert!(s.contains("ip -n t-node rule add pref 20 lookup local"));
    }

    #[test]
    fn nodelocal_dns_workaround_routes_the_query_locally_and_the_answer_back() {
        let spec = Spec::default_lab();
        let f = Fault::NodelocalDnsWorkaround {
            pod: spec.pods[1].name.clone(),
            address: "169.254.20.10".parse().unwrap(),
        };
        let s = fault_script(&spec, &Layout { prefix: "t".into() }, &f).unwrap();
        assert_eq!(
            s,
            "ip -n t-node route add local 169.254.20.10 dev nodelocaldns table 102\nip -n t-node rule add pref 9 from 169.254.20.10 to 192.168.26.147 table 102"
        );
        let ordinary = Fault::NodelocalDnsWorkaround {
            pod: spec.pods[4].name.clone(),
            address: "169.254.20.10".parse().unwrap(),
        };
        assert!(fault_script(&spec, &Layout { prefix: "t".into() }, &ordinary).is_err());
    }

    #[test]
    fn pod_identity_agent_gets_both_addresses_on_its_dummy() {
        let spec = Spec::default_lab();
        let s = fault_script(
            &spec,
            &Layout { prefix: "t".into() },
            &Fault::PodIdentityAgent,
        )
        .unwrap();
        assert!(
            s.contains("ip -n t-node addr add 169.254.170.23/32 dev pod-id-link0"),
            "{s}"
        );
        assert!(
            s.contains("ip -n t-node addr add fd00:ec2::23/128 dev pod-id-link0"),
            "{s}"
        );
    }

    #[test]
    fn security_groups_become_return_rules_and_a_drop() {
        let spec = Spec::default_lab();
        let r = nft_ruleset(&spec);
        assert!(
            r.contains("chain in_v1 {\n    ip saddr 0.0.0.0/0 tcp dport 80 return # sg-pod"),
            "{r}"
        );
        assert!(
            r.contains("chain in_node {\n    ip saddr 0.0.0.0/0 tcp dport 80 return # sg-node"),
            "{r}"
        );
        assert_eq!(r.matches("counter drop").count(), 2 * 5);
    }
}
