//! Shared by the root integration tests (sandbox.rs, step.rs, network.rs, gpu.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The static busybox the fixtures are made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Long-running entrypoint that exits promptly on SIGTERM.
pub const IDLE: &str = "trap 'exit 0' TERM; sleep 1000 & wait";

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

/// Lines of `/proc/self/mountinfo` that mention `needle`.
pub fn mounts_containing(needle: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let n = needle.to_string_lossy();
    info.lines().filter(|l| l.contains(&*n)).map(String::from).collect()
}

/// `/sys/fs/cgroup` (v2) and every v1 hierarchy under it.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
        v.extend(d.flatten().map(|e| e.path()));
    }
    v
}

/// Removes a directory tree of empty directories (a cgroup subtree), deepest first.
pub fn rmdir_tree(p: &Path) {
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// Puts back the forwarding sysctls a runtime changed (recorded in its state file) when it
/// was not shut down cleanly, and removes the file. Best effort.
pub fn restore_recorded_sysctls(state: &Path) {
    let Ok(bytes) = std::fs::read(state) else { return };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return };
    for (key, old) in v["changed"].as_object().into_iter().flatten() {
        let _ = std::fs::write(Path::new("/proc/sys").join(key), old.as_str().unwrap_or_default());
    }
    let _ = std::fs::remove_file(state);
}

/// What a test runtime may leave on the host once its containers are gone: mounts under its
/// root, its network namespaces, bridge and nftables table, changed sysctls, its cgroup
/// parent. Best effort.
pub fn remove_host_leftovers(cfg: &cove_runtime::RuntimeConfig) {
    let mut mounts: Vec<String> =
        mounts_containing(&cfg.root).iter().filter_map(|l| l.split(' ').nth(4).map(String::from)).collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).output();
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&cfg.name_prefix) {
                let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            }
        }
    }
    let _ = Command::new("ip").args(["link", "delete", &cfg.bridge]).output();
    let table = cove_runtime::firewall::table_name(&cfg.bridge);
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft").args(["delete", "table", family, &table]).output();
    }
    restore_recorded_sysctls(&cfg.root.join(cove_runtime::firewall::STATE_FILE));
    for c in cgroup_hierarchies() {
        rmdir_tree(&c.join(cfg.cgroup_parent.trim_start_matches('/')));
    }
}

/// A test runtime's teardown (its guard's `Drop`): drops the runtime, kills and force-deletes
/// the container of every sandbox under its root, then [`remove_host_leftovers`]. Best effort.
pub fn tear_down(rt: &mut Option<cove_runtime::Runtime>, cfg: &cove_runtime::RuntimeConfig) {
    drop(rt.take());
    let runc = |args: &[&str]| {
        let _ = Command::new("runc").arg("--root").arg(&cfg.runc_root).args(args).output();
    };
    if let Ok(entries) = std::fs::read_dir(&cfg.root) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // Containers Cove's launcher made are not runc's to load: killed by their pid.
            if let Some(pid) = launched_pid(&cfg.runc_root, &id) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
                std::thread::sleep(Duration::from_millis(50));
                let _ = std::fs::remove_dir_all(cfg.runc_root.join(&id));
                continue;
            }
            runc(&["kill", &id, "KILL"]);
            std::thread::sleep(Duration::from_millis(50));
            runc(&["delete", "--force", &id]);
        }
    }
    remove_host_leftovers(cfg);
}

/// A small sandbox of the rootfs `lower` whose entrypoint is `sh -c <script>`: 1 CPU,
/// 128 MiB, a 32 MiB disk, 64 pids, no env, unprivileged, no GPU. Tests change fields with
/// `SandboxSpec { field, ..sandbox_spec(lower, script) }`.
pub fn sandbox_spec(lower: &Path, script: &str) -> cove_runtime::SandboxSpec {
    cove_runtime::SandboxSpec {
        id: uuid::Uuid::new_v4().to_string(),
        lower: lower.to_path_buf(),
        entrypoint: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        workdir: None,
        user: None,
        cpu: 1,
        memory_mib: 128,
        disk_mib: 32,
        pids: 64,
        privileged: false,
        gpu: 0,
        engine: false,
    }
}

/// A stand-in agent in `dir`: runs its arguments (the entrypoint) with the image's own shell.
pub fn stand_in_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("agent");
    // Like the real agent (`sys::wait_for_release`): started by Cove's launcher, it first waits
    // on the exec fifo it was handed.
    let script = "#!/bin/sh\nif [ -n \"$COVE_EXEC_FIFO\" ]; then\n  echo 0 > /proc/self/fd/$COVE_EXEC_FIFO\n  eval \"exec $COVE_EXEC_FIFO>&-\"\n  unset COVE_EXEC_FIFO\nfi\nexec \"$@\"\n";
    std::fs::write(&agent, script).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent
}

/// Names of a test runtime's host plumbing, unique per test binary and instance.
pub struct TestNet {
    /// Bridge (≤ 15 bytes).
    pub bridge: String,
    /// Sandbox network.
    pub cidr: String,
    /// Cgroup parent.
    pub cgroup_parent: String,
    /// netns/veth prefix (≤ 7 bytes).
    pub name_prefix: String,
}

/// A runtime configuration under `dir` (which must be traversable by the sandboxes' root,
/// host uid 100000) with a stand-in agent, Docker's seccomp profile and egress on.
pub fn test_runtime_config(dir: &Path, net: TestNet) -> cove_runtime::RuntimeConfig {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    cove_runtime::RuntimeConfig {
        root: dir.join("sandboxes"),
        runc_root: dir.join("runc"),
        agent_binary: stand_in_agent(dir),
        bridge: net.bridge,
        cidr: net.cidr,
        cgroup_parent: net.cgroup_parent,
        name_prefix: net.name_prefix,
        seccomp_profile: None,
        userns: "100000:65536".parse().unwrap(),
        ca_bundle: None,
        egress: true,
        allow_private: vec![],
        cdi_spec_dirs: vec![],
        sparse_disks: false,
        native_launcher: true,
    }
}

/// `runc exec <id> sh -c <script>`: (success, stdout + stderr).
pub async fn runc_exec(runc_root: &Path, id: &str, script: &str) -> (bool, String) {
    let out = tokio::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root)
        .args(["exec", id, "sh", "-c", script])
        .output()
        .await
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The init pid of a container Cove's launcher made (`None`: runc's, or gone).
pub fn launched_pid(runc_root: &Path, id: &str) -> Option<i64> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runc_root.join(id).join("state.json")).ok()?).ok()?;
    (state["launcher"] == "cove").then(|| state["init_process_pid"].as_i64()).flatten()
}

/// `sh -c <script>` inside sandbox `id` as `runc exec` would run it (the launcher's
/// equivalent for containers it made): (success, stdout + stderr).
pub async fn sandbox_exec(cfg: &cove_runtime::RuntimeConfig, id: &str, script: &str) -> (bool, String) {
    if launched_pid(&cfg.runc_root, id).is_none() {
        return runc_exec(&cfg.runc_root, id, script).await;
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.root.join(id).join("config.json")).unwrap()).unwrap();
    let (runc_root, id, script) = (cfg.runc_root.clone(), id.to_string(), script.to_string());
    tokio::task::spawn_blocking(move || {
        let host = cove_runtime::launch::Host::discover();
        let bpf = config["linux"].get("seccomp").map(|s| cove_runtime::seccomp::compile(s).unwrap());
        match cove_runtime::launch::exec(&runc_root, &id, &config, &host, bpf.as_ref(), &["/bin/sh", "-c", &script]) {
            Ok(out) => (out.code == 0, out.output),
            Err(e) => (false, cove_types::error::chain(&e)),
        }
    })
    .await
    .unwrap()
}
