//! Host integration tests (PLACEHOLDER written by the xtask work; to be replaced). Run as
//! root by `cargo xtask test`; creates and deletes a network namespace `sgpath-host-smoke`.
//! (The host kernel here has veth but no dummy or 802.1Q.)

use std::process::Command;

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

#[test]
fn netns_with_veth_pair() {
    let ns = "sgpath-host-smoke";
    let _ = ip(&["netns", "del", ns]);
    assert!(ip(&["netns", "add", ns]).status.success(), "ip netns add");
    let add = ip(&[
        "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    let show = ip(&["-n", ns, "link", "show", "v1"]);
    let _ = ip(&["netns", "del", ns]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(show.status.success(), "veth peer v1 missing");
}
