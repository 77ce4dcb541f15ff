//! VM integration tests (PLACEHOLDER written by the xtask work; to be replaced). Built by
//! `cargo xtask test` and run as root inside a virtme-ng VM per kernel, with `SGPATH_BIN` and
//! `SGPATH_KERNEL` set; creates and deletes a network namespace `sgpath-vm-smoke`.

use std::process::Command;

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

#[test]
fn kernel_boots_with_vlan_support() {
    let kernel = std::env::var("SGPATH_KERNEL").unwrap_or_default();
    let ns = "sgpath-vm-smoke";
    let _ = ip(&["netns", "del", ns]);
    assert!(ip(&["netns", "add", ns]).status.success(), "ip netns add");
    let dummy = ip(&["-n", ns, "link", "add", "d0", "type", "dummy"]);
    let vlan = ip(&[
        "-n", ns, "link", "add", "link", "d0", "name", "d0.7", "type", "vlan", "id", "7",
    ]);
    let show = ip(&["-n", ns, "-d", "link", "show", "d0.7"]);
    let _ = ip(&["netns", "del", ns]);
    assert!(
        dummy.status.success(),
        "dummy on {kernel}: {}",
        String::from_utf8_lossy(&dummy.stderr)
    );
    assert!(
        vlan.status.success(),
        "vlan on {kernel}: {}",
        String::from_utf8_lossy(&vlan.stderr)
    );
    let details = String::from_utf8_lossy(&show.stdout);
    assert!(
        details.contains("vlan protocol 802.1Q id 7"),
        "on {kernel}: {details}"
    );
}
