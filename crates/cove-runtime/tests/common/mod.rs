//! Shared by the root integration tests (sandbox.rs, step.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The static busybox the fixtures are made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether we may create namespaces, mounts and cgroups.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A busybox root filesystem: the binary, one symlink per applet, `/etc/passwd` and
/// `/etc/group` with `root` and `app` (1000), and the directories named in `dirs` (besides
/// bin, etc, root, tmp (1777), proc, sys, dev and home/app). No `/etc/hosts`.
pub fn busybox_rootfs(root: &Path, dirs: &[&str]) {
    for d in ["bin", "etc", "root", "tmp", "proc", "sys", "dev", "home/app"].iter().chain(dirs) {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
        .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
}
