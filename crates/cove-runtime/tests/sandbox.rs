//! Integration tests: real sandboxes with runc, loop disks, overlays, netns and cgroups.
//! They need root (skipped with a message otherwise), `runc`, `ip`, `mkfs.ext4` and a static
//! busybox at /bin/busybox. Each test has its own bridge, CIDR, name prefix, cgroup parent and
//! runc root, and cleans up in a Drop guard.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cove_runtime::{Runtime, RuntimeConfig, SandboxSpec, SandboxStatus};

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
mod common;
use common::{
    IDLE, TestNet, busybox_rootfs, is_root, mounts_containing, sandbox_exec, sandbox_spec, tear_down,
    test_runtime_config,
};

struct Env {
    rt: Option<Runtime>,
    cfg: RuntimeConfig,
    lower: PathBuf,
    _dir: tempfile::TempDir,
}

/// The busybox rootfs plus a web root.
fn build_rootfs(lower: &Path) {
    busybox_rootfs(lower, &["mnt", "www"]);
    std::fs::write(lower.join("www/index.html"), "hello\n").unwrap();
}

async fn setup(n: u32) -> Option<Env> {
    setup_with(n, true).await
}

/// As `setup`, with sandboxes started by Cove's launcher (`native`) or by runc.
async fn setup_with(n: u32, native: bool) -> Option<Env> {
    if !is_root() {
        eprintln!("skipping: sandbox tests need root");
        return None;
    }
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    build_rootfs(&lower);
    let cfg = test_runtime_config(
        dir.path(),
        TestNet {
            bridge: format!("cvb{n:02}{:05}", pid % 100_000),
            cidr: format!("10.{}.{}.0/24", 100 + n, pid % 250),
            cgroup_parent: format!("/cove-test-{pid}-{n}"),
            name_prefix: format!("t{n:02}{:04}", pid % 10_000),
        },
    );
    let cfg = RuntimeConfig { native_launcher: native, ..cfg };
    let rt = Runtime::new(cfg.clone()).await.unwrap();
    Some(Env { rt: Some(rt), cfg, lower, _dir: dir })
}

impl Env {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn spec(&self, script: &str) -> SandboxSpec {
        SandboxSpec { env: vec!["GREETING=hi".into()], ..sandbox_spec(&self.lower, script) }
    }

    /// `runc exec <id> sh -c <script>`: (success, stdout + stderr).
    async fn exec(&self, id: &str, script: &str) -> (bool, String) {
        sandbox_exec(&self.cfg, id, script).await
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    async fn wait_status(&self, id: &str, timeout: Duration, pred: impl Fn(&SandboxStatus) -> bool) -> SandboxStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.rt().status(id).await.unwrap();
            if pred(&s) || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn loop_devices_for(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-a").output().unwrap();
    let n = dir.to_string_lossy();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&*n)).map(String::from).collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        tear_down(&mut self.rt, &self.cfg);
    }
}

fn read_trim(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_sandbox_runs_with_its_limits_and_survives_a_runtime_restart() {
    let Some(mut env) = setup(1).await else { return };
    let spec = env.spec(IDLE);
    let t0 = Instant::now();
    env.rt().create(&spec).await.unwrap();
    eprintln!("create took {:?}", t0.elapsed());
    let id = spec.id.clone();
    assert!(matches!(env.rt().status(&id).await.unwrap(), SandboxStatus::Running { pid } if pid > 0));
    let ip = env.rt().ip(&id).unwrap();
    assert_eq!(ip.octets()[3], 2, "first sandbox gets .2");

    // Limits, read from the cgroup runc created (cgroup v1 on this machine, v2 elsewhere).
    let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists();
    if v1 {
        assert_eq!(read_trim(env.rt().cgroup_dir(&id, "cpu").join("cpu.cfs_quota_us")), "100000");
        assert_eq!(read_trim(env.rt().cgroup_dir(&id, "cpu").join("cpu.cfs_period_us")), "100000");
        let mem = env.rt().cgroup_dir(&id, "memory");
        assert_eq!(read_trim(mem.join("memory.limit_in_bytes")), (128u64 << 20).to_string());
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(read_trim(mem.join("memory.memsw.limit_in_bytes")), (128u64 << 20).to_string());
        }
        assert_eq!(read_trim(env.rt().cgroup_dir(&id, "pids").join("pids.max")), "64");
    } else {
        assert_eq!(read_trim(env.rt().cgroup_dir(&id, "cpu").join("cpu.max")), "100000 100000");
    }

    // Inside: environment, hostname, address, working directory, user.
    let (ok, out) =
        env.exec(&id, "cat /proc/1/environ | tr '\\0' '\\n'; hostname; ip -4 addr show eth0; pwd; id -u").await;
    assert!(ok, "{out}");
    for want in ["GREETING=hi", "HOME=/root", "COVE_TOOLBOX_SOCKET=/run/cove/toolbox.sock", "COVE_WORKDIR=/root"] {
        assert!(out.contains(want), "missing {want} in {out}");
    }
    assert!(out.contains(&format!("{ip}/24")), "{out}");
    assert!(out.contains(&id.replace('-', "")[..12]), "hostname in {out}");
    // The toolbox directory is shared with the host at the socket's directory.
    let (ok, out) = env.exec(&id, "echo probe > /run/cove/probe && ls /.cove/cove-agent").await;
    assert!(ok, "{out}");
    assert_eq!(read_trim(env.rt().socket_path(&id).with_file_name("probe")), "probe");

    // The sandbox outlives the runtime; a new one finds it and its address.
    drop(env.rt.take());
    env.rt = Some(Runtime::new(env.cfg.clone()).await.unwrap());
    assert!(matches!(env.rt().status(&id).await.unwrap(), SandboxStatus::Running { .. }));
    assert_eq!(env.rt().ip(&id), Some(ip));
    assert_eq!(env.rt().list().await.unwrap(), vec![id.clone()]);
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_inside_survives_stop_and_start() {
    let Some(env) = setup(2).await else { return };
    let spec = env.spec(IDLE);
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let ip = env.rt().ip(&id).unwrap();
    let (ok, out) = env.exec(&id, "echo persisted > /root/note.txt").await;
    assert!(ok, "{out}");

    let t0 = Instant::now();
    env.rt().stop(&id, Duration::from_secs(5)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "TERM should stop it without waiting for the grace period");
    assert_eq!(env.rt().status(&id).await.unwrap(), SandboxStatus::Stopped { exit_code: None, oom_killed: false });
    assert!(mounts_containing(&env.bundle(&id)).is_empty(), "stop unmounts overlay and disk");
    assert!(!Path::new("/var/run/netns").join(env.rt().netns(&id)).exists(), "stop deletes the netns");
    assert!(env.bundle(&id).join("disk.img").exists(), "stop keeps the disk");

    env.rt().start(&id).await.unwrap();
    assert!(matches!(env.rt().status(&id).await.unwrap(), SandboxStatus::Running { .. }));
    assert_eq!(env.rt().ip(&id), Some(ip), "a restart keeps the address");
    let (ok, out) = env.exec(&id, "cat /root/note.txt").await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "persisted");
    // Starting a running sandbox is a no-op.
    env.rt().start(&id).await.unwrap();
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_no_mount_netns_veth_loop_device_or_cgroup_behind() {
    let Some(env) = setup(3).await else { return };
    let spec = env.spec(IDLE);
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let bundle = env.bundle(&id);
    let netns = env.rt().netns(&id);
    let cgroups: Vec<PathBuf> = ["memory", "cpu", "pids"].iter().map(|c| env.rt().cgroup_dir(&id, c)).collect();
    assert_eq!(loop_devices_for(&bundle).len(), 1, "one loop device while running");
    assert!(cgroups.iter().all(|c| c.exists()));
    assert!(Path::new("/sys/class/net").join(&netns).exists(), "host veth exists");

    env.rt().destroy(&id).await.unwrap();
    assert!(!bundle.exists());
    assert!(mounts_containing(&bundle).is_empty());
    assert!(loop_devices_for(&bundle).is_empty(), "loop device detached");
    assert!(!Path::new("/var/run/netns").join(&netns).exists());
    assert!(!Path::new("/sys/class/net").join(&netns).exists(), "veth gone");
    for c in &cgroups {
        assert!(!c.exists(), "{} left behind", c.display());
    }
    assert_eq!(env.rt().status(&id).await.unwrap(), SandboxStatus::Missing);
    assert_eq!(env.rt().ip(&id), None);
    assert!(env.rt().list().await.unwrap().is_empty());
    // Idempotent: destroying again (or something that never existed) is fine.
    env.rt().destroy(&id).await.unwrap();
    env.rt().destroy(&uuid::Uuid::new_v4().to_string()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_allocating_past_the_memory_limit_is_oom_killed_and_reported() {
    let Some(env) = setup(4).await else { return };
    let mut spec = env.spec("head -c 200m /dev/zero | tail; sleep 1000");
    spec.memory_mib = 64;
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    // tail is OOM-killed; the sandbox keeps running but the kill is visible in the cgroup.
    let deadline = Instant::now() + Duration::from_secs(15);
    let oom_file = env.rt().cgroup_dir(&id, "memory").join(if Path::new("/sys/fs/cgroup/memory").exists() {
        "memory.oom_control"
    } else {
        "memory.events"
    });
    loop {
        let text = std::fs::read_to_string(&oom_file).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0") {
            break;
        }
        assert!(Instant::now() < deadline, "no OOM kill recorded: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.rt().stop(&id, Duration::from_millis(200)).await.unwrap();
    assert_eq!(env.rt().status(&id).await.unwrap(), SandboxStatus::Stopped { exit_code: None, oom_killed: true });

    // When the init itself dies of it, status says so while the container is still there.
    let mut spec = env.spec("head -c 200m /dev/zero | tail");
    spec.memory_mib = 64;
    let id2 = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let s = env.wait_status(&id2, Duration::from_secs(15), |s| matches!(s, SandboxStatus::Stopped { .. })).await;
    assert_eq!(s, SandboxStatus::Stopped { exit_code: None, oom_killed: true });
    env.rt().destroy(&id).await.unwrap();
    env.rt().destroy(&id2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pids_limit_stops_a_fork_loop() {
    let Some(env) = setup(5).await else { return };
    let mut spec = env.spec(IDLE);
    spec.pids = 20;
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (_, out) =
        env.exec(&id, "i=0; while [ $i -lt 40 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo looped").await;
    assert!(out.contains("can't fork") || out.contains("Resource temporarily unavailable"), "{out}");
    let current: u32 = read_trim(env.rt().cgroup_dir(&id, "pids").join("pids.current")).parse().unwrap();
    assert!(current <= 20, "pids.current = {current}");
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_the_disk_size_fails_with_enospc_and_leaves_the_host_alone() {
    let Some(env) = setup(6).await else { return };
    let mut spec = env.spec(IDLE);
    spec.disk_mib = 16;
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (ok, out) = env.exec(&id, "dd if=/dev/zero of=/big bs=1M count=32").await;
    assert!(!ok, "dd should fail: {out}");
    assert!(out.contains("No space left on device"), "{out}");
    let (ok, out) = env.exec(&id, "df -m / | tail -1").await;
    assert!(ok, "{out}");
    let img = std::fs::metadata(env.bundle(&id).join("disk.img")).unwrap();
    assert!(img.blocks() * 512 <= 17 << 20, "disk.img uses {} bytes on the host", img.blocks() * 512);
    assert!(!env.lower.join("big").exists(), "the image is untouched");
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_sandbox_cannot_mount_and_sees_only_its_own_processes() {
    let Some(env) = setup(7).await else { return };
    let spec = env.spec(IDLE);
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (ok, out) = env.exec(&id, "mount -t tmpfs x /mnt").await;
    assert!(!ok, "mount must fail: {out}");
    let (ok, out) = env.exec(&id, "ps -o pid,comm").await;
    assert!(ok, "{out}");
    let pids: Vec<u32> = out.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    // init sh, its sleep, the exec'd sh and ps: nothing of the host's.
    assert!(pids.contains(&1) && pids.len() <= 5 && pids.iter().all(|p| *p < 100), "sandbox sees {out}");
    let (ok, out) = env.exec(&id, "grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status").await;
    assert!(ok, "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "Docker's default capability set: {out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "seccomp filter active: {out}");
    // Masked paths are covered (/proc/timer_list by /dev/null), /proc/sys is read-only.
    let (_, out) = env.exec(&id, "wc -c < /proc/timer_list; grep -c ' /proc/sys ro' /proc/self/mountinfo").await;
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "1"], "masked and read-only paths: {out}");
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_sandbox_can_mount() {
    let Some(env) = setup(8).await else { return };
    let mut spec = env.spec(IDLE);
    spec.privileged = true;
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (ok, out) = env.exec(&id, "mount -t tmpfs x /mnt && grep Seccomp: /proc/self/status").await;
    assert!(ok, "{out}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_cannot_reach_each_other_but_the_host_reaches_them() {
    let Some(env) = setup(9).await else { return };
    let a = env.spec("httpd -f -p 8080 -h /www");
    let b = env.spec("httpd -f -p 8080 -h /www");
    env.rt().create(&a).await.unwrap();
    env.rt().create(&b).await.unwrap();
    let ip_a = env.rt().ip(&a.id).unwrap();
    let ip_b = env.rt().ip(&b.id).unwrap();
    assert_ne!(ip_a, ip_b);
    assert_eq!(u32::from(ip_b), u32::from(ip_a) + 1, "lowest free addresses");

    let connect = |ip: Ipv4Addr| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_millis(500)) {
                Ok(_) => return true,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return false,
            }
        }
    };
    assert!(tokio::task::spawn_blocking(move || connect(ip_b)).await.unwrap(), "host reaches sandbox B");

    // busybox-static's wget crashes here (static glibc); nc speaks HTTP well enough.
    let get = |ip: Ipv4Addr| format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 8080");
    let (_, out) = env.exec(&a.id, &get(ip_a)).await;
    assert!(out.contains("200 OK") && out.contains("hello"), "A reaches itself: {out}");
    let (_, out) = env.exec(&a.id, &get(ip_b)).await;
    assert!(!out.contains("200 OK"), "A must not reach B: {out}");
    let gateway = Ipv4Addr::from(u32::from(ip_a) & 0xffff_ff00 | 1);
    let (ok, out) = env.exec(&a.id, &format!("ping -c 1 -W 1 {ip_a}")).await;
    assert!(ok, "A pings itself (control): {out}");
    let (ok, out) = env.exec(&a.id, &format!("ping -c 1 -W 1 {gateway}")).await;
    assert!(!ok, "A must not reach the host through the bridge (firewall): {out}");
    let (ok, out) = env.exec(&a.id, &format!("ping -c 1 -W 1 {ip_b}")).await;
    assert!(!ok, "A must not ping B: {out}");

    // A third sandbox reuses the lowest free address after one is destroyed.
    env.rt().destroy(&a.id).await.unwrap();
    let c = env.spec(IDLE);
    env.rt().create(&c).await.unwrap();
    assert_eq!(env.rt().ip(&c.id), Some(ip_a));
    env.rt().destroy(&b.id).await.unwrap();
    env.rt().destroy(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_disks_have_the_exact_size_and_a_failed_create_leaves_nothing_behind() {
    let Some(env) = setup(10).await else { return };
    env.rt().warm_disk_pool(24);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.rt().disk_pool_ready(24) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.rt().disk_pool_ready(24), 2, "the pool is warmed in the background");

    // A create of the warmed size takes a pooled image; another size formats its own.
    for size in [24, 20] {
        let mut spec = env.spec(IDLE);
        spec.disk_mib = size;
        env.rt().create(&spec).await.unwrap();
        let img = std::fs::metadata(env.bundle(&spec.id).join("disk.img")).unwrap();
        assert_eq!(img.len(), size << 20, "disk.img is exactly {size} MiB");
        let (ok, out) = env.exec(&spec.id, "df -m / | tail -1").await;
        assert!(ok, "{out}");
        env.rt().destroy(&spec.id).await.unwrap();
    }

    // The disk branch fails (unknown user) while the network branch succeeds: both are undone.
    let mut spec = env.spec(IDLE);
    spec.user = Some("nobody-here".into());
    spec.disk_mib = 24;
    let err = env.rt().create(&spec).await.unwrap_err();
    assert_eq!(err.kind(), cove_types::ErrorKind::InvalidArgument, "{err}");
    let bundle = env.bundle(&spec.id);
    assert!(!bundle.exists());
    assert!(mounts_containing(&bundle).is_empty());
    assert!(loop_devices_for(&bundle).is_empty());
    assert!(!Path::new("/var/run/netns").join(env.rt().netns(&spec.id)).exists());
    assert!(!Path::new("/sys/class/net").join(env.rt().netns(&spec.id)).exists());
    assert_eq!(env.rt().ip(&spec.id), None);
    assert!(env.rt().list().await.unwrap().is_empty(), "the pool is not a sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_sandbox_runs_nothing_until_started_and_then_gets_the_extra_env() {
    let Some(env) = setup(11).await else { return };
    let spec = env.spec("echo started > /root/marker; exec sleep 1000");
    let id = spec.id.clone();
    env.rt().prepare(&spec).await.unwrap();
    let marker = env.bundle(&id).join("disk/upper/root/marker");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "the entrypoint ran before start_prepared");
    assert!(matches!(env.rt().status(&id).await.unwrap(), SandboxStatus::Running { .. }));

    env.rt().start_prepared(&id, &["EXTRA=1".into(), "GREETING=hello".into()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marker.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(marker.exists(), "the entrypoint did not run after start_prepared");
    assert_eq!(std::fs::read(env.bundle(&id).join("toolbox/env")).unwrap(), b"EXTRA=1\0GREETING=hello");
    let record = std::fs::read_to_string(env.bundle(&id).join("spec.json")).unwrap();
    assert!(record.contains("\"EXTRA=1\"") && record.contains("\"GREETING=hello\"") && !record.contains("GREETING=hi"));

    let again = env.rt().start_prepared(&id, &[]).await.unwrap_err();
    assert!(matches!(again, cove_runtime::RuntimeError::NotPrepared { .. }), "{again}");
    env.rt().destroy(&id).await.unwrap();
    assert!(!env.bundle(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_root_is_an_unprivileged_host_uid_and_the_image_stays_unshifted_on_disk() {
    let Some(env) = setup(12).await else { return };
    let spec = env.spec(IDLE);
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (ok, out) = env.exec(&id, "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/busybox").await;
    assert!(ok, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "100000", "65536", "0", "100000", "65536", "0", "0:0"], "{out}");
    // Files the sandbox creates are owned on the host by the mapped id, never by host root.
    let (ok, out) = env.exec(&id, "echo x > /root/made-inside && chmod 4755 /root/made-inside").await;
    assert!(ok, "{out}");
    let made = env.bundle(&id).join("disk/upper/root/made-inside");
    let m = std::fs::metadata(&made).unwrap();
    assert_eq!((m.uid(), m.gid()), (100_000, 100_000), "{}", made.display());
    // The shared image tree keeps the image's own ids (idmapped, not chowned).
    let lower = std::fs::metadata(env.lower.join("bin")).unwrap();
    assert_eq!((lower.uid(), lower.gid()), (0, 0));
    // The disk is mounted nosuid,nodev on the host.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let disk = env.bundle(&id).join("disk");
    let line = info.lines().find(|l| l.split(' ').nth(4) == disk.to_str()).unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    // The generated /etc files cannot be written (they are host files, outside the disk).
    let (ok, _) = env.exec(&id, "echo 1.2.3.4 evil >> /etc/hosts").await;
    assert!(!ok, "/etc/hosts must be read-only");
    // The toolbox dir is a small tmpfs: filling it does not reach the host disk.
    let (_, out) =
        env.exec(&id, "dd if=/dev/zero of=/run/cove/fill bs=1M count=8 2>&1; df -k /run/cove | tail -1").await;
    assert!(out.contains("No space left"), "{out}");
    env.rt().destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_written_before_user_namespaces_is_shifted_once_and_its_files_stay_the_sandboxs() {
    let Some(env) = setup(13).await else { return };
    let spec = env.spec(IDLE);
    let id = spec.id.clone();
    env.rt().create(&spec).await.unwrap();
    let (ok, out) = env.exec(&id, "echo kept > /root/old && chmod 4755 /root/old").await;
    assert!(ok, "{out}");
    env.rt().stop(&id, Duration::ZERO).await.unwrap();
    // Make it look like an older server's sandbox: image ids on the disk, no range recorded.
    let bundle = env.bundle(&id);
    let record_path = bundle.join("spec.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("disk_ids");
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let disk = bundle.join("disk");
    let mounted = Command::new("mount").args(["-o", "loop"]).arg(bundle.join("disk.img")).arg(&disk).status().unwrap();
    assert!(mounted.success());
    for p in [disk.join("upper"), disk.join("upper/root"), disk.join("upper/root/old")] {
        std::os::unix::fs::lchown(&p, Some(0), Some(0)).unwrap();
    }
    std::fs::set_permissions(disk.join("upper/root/old"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert!(Command::new("umount").arg(&disk).status().unwrap().success());

    env.rt().start(&id).await.unwrap();
    let (ok, out) = env.exec(&id, "stat -c %u:%a /root/old && echo more >> /root/old && cat /root/old").await;
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0:4755", "kept", "more"]);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["disk_ids"], serde_json::json!({"start": 100_000, "count": 65536}));
    env.rt().destroy(&id).await.unwrap();
}

/// What a sandbox's entrypoint sees of its own isolation: ids, capabilities, seccomp, id
/// maps, cgroups, mounts (point, options, type, source), /dev, limits, hostname length.
const PROBE: &str = r#"{
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters|SigBlk|SigIgn)' /proc/self/status
cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups /proc/self/cgroup
awk '{print $5, $6, $9, $10, $11}' /proc/self/mountinfo | sort
for f in /dev/* /dev/pts/* /dev/mqueue /dev/shm /sys/fs/cgroup/*; do stat -c '%n %F %a %u %g %t:%T' "$f"; [ -L "$f" ] && readlink "$f"; done
cat /sys/fs/cgroup/devices/devices.list /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us
ulimit -n; ulimit -u; hostname | wc -c; id; pwd; umask; ls -la /proc/self/fd | wc -l
touch /proc/sys/kernel/x 2>&1 | sed 's/.*: //'; cat /proc/kcore 2>&1 | wc -c; ls /proc/acpi /sys/firmware 2>&1 | wc -l
} > /tmp/probe 2>&1; touch /tmp/probe.done; sleep 1000"#;

async fn probe(env: &Env) -> String {
    let spec = env.spec(PROBE);
    env.rt().create(&spec).await.unwrap();
    let done = env.bundle(&spec.id).join("rootfs/tmp/probe.done");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::fs::read_to_string(env.bundle(&spec.id).join("rootfs/tmp/probe")).unwrap();
    env.rt().destroy(&spec.id).await.unwrap();
    out.replace(&env.bundle(&spec.id).display().to_string(), "<bundle>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_the_launcher_starts_sees_exactly_what_one_runc_starts_sees() {
    let Some(native) = setup_with(30, true).await else { return };
    let Some(runc) = setup_with(31, false).await else { return };
    let (a, b) = (probe(&native).await, probe(&runc).await);
    assert!(a.contains("Seccomp:\t2"), "filtered: {a}");
    // Two differences, on purpose: the config asks for /sys/fs/cgroup read-only, and runc 1.1
    // leaves its tmpfs writable (the cgroup mounts in it are read-only in both); and runc makes
    // the IPC namespace before it switches to the sandbox's root group, so /dev/mqueue's group
    // is the unmapped host root (65534) there and the sandbox's root group here.
    let mut b = b;
    for (runc, ours) in [
        (
            "/sys/fs/cgroup rw,nosuid,nodev,noexec,relatime tmpfs",
            "/sys/fs/cgroup ro,nosuid,nodev,noexec,relatime tmpfs",
        ),
        ("/dev/mqueue directory 1777 0 65534", "/dev/mqueue directory 1777 0 0"),
    ] {
        assert!(b.contains(runc), "runc's own {runc:?} in {b}");
        b = b.replace(runc, ours);
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let only_native: Vec<&&str> = la.iter().filter(|l| !lb.contains(l)).collect();
    let only_runc: Vec<&&str> = lb.iter().filter(|l| !la.contains(l)).collect();
    assert!(
        only_native.is_empty() && only_runc.is_empty(),
        "only with the launcher: {only_native:#?}\nonly with runc: {only_runc:#?}\nlauncher:\n{a}"
    );
    assert_eq!(la.len(), lb.len(), "launcher:\n{a}\nrunc:\n{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_symlinks_cannot_point_the_launchers_mounts_or_files_outside_its_root() {
    let Some(env) = setup(32).await else { return };
    // Host paths an image names through absolute and climbing links at mount targets.
    let host = tempfile::tempdir().unwrap();
    let escape = host.path().join("escape");
    std::fs::create_dir(&escape).unwrap();
    let lower = env.lower.parent().unwrap().join("evil");
    busybox_rootfs(&lower, &[]);
    let target = |name: &str| format!("../../../../../../..{}", escape.join(name).display());
    std::os::unix::fs::symlink(target("hosts"), lower.join("etc/hosts")).unwrap();
    std::os::unix::fs::symlink(escape.join("resolv"), lower.join("etc/resolv.conf")).unwrap();
    std::os::unix::fs::symlink(escape.join("agent-dir"), lower.join(".cove")).unwrap();
    std::os::unix::fs::symlink(target("run"), lower.join("run")).unwrap();
    let spec = SandboxSpec { lower: lower.clone(), ..env.spec("echo ok > /tmp/ran; sleep 1000") };
    env.rt().create(&spec).await.unwrap();
    let ran = env.bundle(&spec.id).join("rootfs/tmp/ran");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ran.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ran.exists(), "the sandbox runs");
    let left: Vec<_> = std::fs::read_dir(&escape).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the launcher made host paths through the image's links: {left:?}");
    // Inside, the links resolved within the root: the generated files are where they lead.
    let (ok, out) = env.exec(&spec.id, "cat /etc/hosts | head -1; ls /.cove/").await;
    assert!(ok && out.contains("cove-agent"), "{out}");
    env.rt().destroy(&spec.id).await.unwrap();
}
