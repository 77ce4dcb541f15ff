//! Network namespaces by inode: the node's own (`/proc/self/ns/net`) and the named ones
//! under `/run/netns` that hold a pod (the far end of a host veth), as `ip netns list-id`
//! pairs names and ids. The drop probe charges only drops in these namespaces.
//! Side effects: stats files, one RTM_GETNSID request per named namespace.

use std::os::unix::fs::MetadataExt;

use crate::model::Node;

/// Inode of the calling thread's network namespace.
///
/// # Errors
/// The I/O error of `stat /proc/thread-self/ns/net`.
pub fn own_inode() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32)
}

/// (host veth, inode) of the namespaces under `/run/netns` whose netns id (as this namespace numbers
/// them) is the peer namespace of one of `host_veths` (the pods' host veths: not every
/// veth, a lab's or a tool's veth to some other namespace is no pod). Unreadable entries
/// are skipped.
pub async fn pod_inodes(node: &Node, host_veths: &[&str]) -> Vec<(String, u32)> {
    let wanted: std::collections::BTreeMap<i32, &str> = host_veths
        .iter()
        .filter_map(|v| node.link_by_name(v))
        .filter_map(|l| Some((l.peer_netns_id?, l.name.as_str())))
        .collect();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
        return Vec::new();
    };
    let conn = tokio::spawn(conn);
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if let Ok(Some(id)) = handle.link().get_netns_id(name).execute().await
            && let Some(veth) = wanted.get(&id)
        {
            out.push(((*veth).to_owned(), meta.ino() as u32));
        }
    }
    conn.abort();
    out
}
