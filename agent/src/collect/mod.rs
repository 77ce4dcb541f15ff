//! Reads the node: the only stage that talks rtnetlink, procfs or files. Produces a
//! [`Node`](crate::model::Node) snapshot of the calling thread's network namespace.

pub mod addresses;
pub mod aws;
pub mod btf;
pub mod caps;
pub mod cni_config;
pub mod ec2;
pub mod ipamd;
pub mod kallsyms;
pub mod kube;
pub mod links;
pub mod netconf;
pub mod netlink;
pub mod netns;
pub mod pod_addresses;
pub mod route_get;
pub mod routes;
pub mod rules;
pub mod sigv4;
pub mod sysctls;
pub mod watch;

use std::{collections::BTreeMap, path::PathBuf};

use crate::model::Node;

/// Why the node could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot open an rtnetlink socket: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error("route lookups over rtnetlink failed: {source}")]
    Lookups {
        #[source]
        source: std::io::Error,
    },
    #[error("rtnetlink dump of {what} failed: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rtnetlink dump of {what} failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Where to read from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub cni_config: PathBuf,
    pub proc_sys: PathBuf,
    /// IPAMD's introspection endpoint (`http://127.0.0.1:61679`); empty: not asked.
    pub ipamd: String,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cni_config: PathBuf::from("/etc/cni/net.d/10-aws.conflist"),
            proc_sys: PathBuf::from("/proc/sys"),
            ipamd: ipamd::DEFAULT_URL.to_owned(),
        }
    }
}

/// Take a snapshot of the current network namespace: dumps of links, addresses, routes
/// and rules, pod addresses, sysctls, the CNI config, then the kernel's route lookups for
/// every pod ([`route_get::pod_lookups`], batched on one rtnetlink socket).
///
/// # Errors
/// [`CollectError`] when netlink cannot be read at all. Unreadable sysctls and a bad CNI
/// config do not fail the snapshot: they land in `Node::read_warnings`.
pub async fn node(sources: &Sources) -> Result<Node, CollectError> {
    Ok(node_with_topology(sources).await?.0)
}

/// [`node`], with the [`Topology`](crate::model::Topology) it classified to know the pods
/// (the route lookups do not change it), so callers need not classify twice.
///
/// # Errors
/// As [`node`].
pub async fn node_with_topology(
    sources: &Sources,
) -> Result<(Node, crate::model::Topology), CollectError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| CollectError::Socket { source })?;
    let conn = tokio::spawn(conn);
    let node = read(&handle, sources).await;
    conn.abort();
    node
}

async fn read(
    handle: &rtnetlink::Handle,
    sources: &Sources,
) -> Result<(Node, crate::model::Topology), CollectError> {
    // The route dump is the largest read of a busy node (10,000 routes): it runs on a
    // thread of its own, on a socket opened here (in this thread's namespace), while this
    // thread reads the rest. Should a read below fail first, the thread finishes its dump
    // and ends by itself: nothing waits for it.
    let socket = netlink::socket().map_err(|source| CollectError::Socket { source })?;
    let routes = std::thread::spawn(move || routes::dump(&socket));
    let mut links = links::dump(handle).await?;
    let mut addrs = addresses::dump(handle).await?;
    for l in &mut links {
        l.addresses = addrs.remove(&l.ifindex).unwrap_or_default();
    }
    let rules = rules::dump(handle).await?;
    let (pod_addresses, ns_warnings) = pod_addresses::dump(&links).await?;

    let (sysctls, mut read_warnings) = sysctls::read(&sources.proc_sys, &links);
    read_warnings.extend(ns_warnings);
    let cni = match cni_config::read(&sources.cni_config) {
        Ok(c) => c,
        Err(e) => {
            let path = sources.cni_config.display().to_string();
            read_warnings.push(crate::model::ReadWarning::new(path, e.to_string()));
            None
        }
    };
    let ipamd = ipamd::read(&sources.ipamd, &mut read_warnings).await;
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
    let routes = routes
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let routes = routes::from_messages(&routes, &names);
    let mut node = Node {
        kernel: kernel_release(),
        links,
        rules,
        routes,
        pod_addresses,
        sysctls,
        lookups: Vec::new(),
        cni,
        read_warnings,
        ipamd,
        cluster: None,
        security_groups: None,
        index: Default::default(),
    };
    // Which pods exist and where their traffic matters comes from the snapshot itself.
    let topo = crate::model::Topology::from_node(&node);
    node.lookups = route_get::pod_lookups(&node, &topo)?;
    Ok((node, topo))
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod classify_tests;
