//! The lab's cluster DNS: dnsmasq on one ordinary pod playing CoreDNS, and the resolver
//! config every pod gets. Pure: the command lines and files are built here, [`super::Lab`]
//! runs them.
//!
//! `ip netns exec <ns>` bind-mounts `/etc/netns/<ns>/resolv.conf` over `/etc/resolv.conf`,
//! which is how the lab gives each pod (and the node) kubelet's resolver config.

use std::{net::Ipv4Addr, path::Path};

use super::spec::{Dns, Spec};

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
pub fn netns_etc(ns: &str) -> std::path::PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it for `dnsPolicy: ClusterFirst`.
pub fn resolv_conf(dns: &Dns, namespace: &str, server: Ipv4Addr) -> String {
    let d = &dns.domain;
    format!(
        "search {namespace}.svc.{d} svc.{d} {d}\nnameserver {server}\noptions ndots:5 timeout:2 attempts:1\n"
    )
}

/// dnsmasq's arguments: in the foreground, no config file, no upstream, authoritative for
/// the cluster domain (unknown names get NXDOMAIN, as from CoreDNS), one A record per pod,
/// listening on the pod's address on UDP and TCP 53.
pub fn dnsmasq_args(spec: &Spec, dns: &Dns, listen: Ipv4Addr, pid_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--port=53",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--listen-address={listen}"));
    args.push(format!("--pid-file={}", pid_file.display()));
    args.push(format!("--local=/{}/", dns.domain));
    for p in &spec.pods {
        args.push(format!("--host-record={},{}", dns.name_of(p), p.ip));
    }
    args
}

/// The address in `busybox nslookup`'s answer (the `Address:` after `Name:`; the first
/// `Address:` is the server's own).
pub fn nslookup_answer(stdout: &str) -> Option<Ipv4Addr> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .find_map(|a| a.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_gets_a_record_and_the_server_listens_on_its_pod() {
        let spec = Spec::default_lab();
        let dns = spec.dns.clone().unwrap();
        let (_, pod) = spec.dns_pod().unwrap();
        let a = dnsmasq_args(&spec, &dns, pod.ip, Path::new("/tmp/x.pid"));
        assert!(
            a.contains(&"--listen-address=192.168.7.31".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--local=/cluster.local/".to_string()));
        assert!(a.contains(
            &"--host-record=my-deployment-5b7f8c9d6-2xk4p.sg-test.svc.cluster.local,192.168.3.219"
                .to_string()
        ));
        assert_eq!(
            a.iter().filter(|x| x.starts_with("--host-record=")).count(),
            8
        );
    }

    #[test]
    fn resolv_conf_searches_the_pods_namespace_first() {
        let spec = Spec::default_lab();
        let r = resolv_conf(
            spec.dns.as_ref().unwrap(),
            "sg-test",
            "192.168.7.31".parse().unwrap(),
        );
        assert!(r.starts_with("search sg-test.svc.cluster.local svc.cluster.local cluster.local\nnameserver 192.168.7.31\n"), "{r}");
    }

    #[test]
    fn nslookup_answer_skips_the_servers_address() {
        let out = "Server:\t\t192.168.7.31\nAddress:\t192.168.7.31:53\n\nName:\tmy-deployment-5b7f8c9d6-c4n7v.sg-test.svc.cluster.local\nAddress: 192.168.41.23\n\n";
        assert_eq!(nslookup_answer(out), Some("192.168.41.23".parse().unwrap()));
        assert_eq!(
            nslookup_answer(";; connection timed out; no servers could be reached\n"),
            None
        );
    }
}
