//! Create latency benchmark (ignored by default; needs root, runc, ip, mkfs.ext4 and a static
//! busybox at /bin/busybox). Run it on a release build with the phase logs visible:
//!
//! ```text
//! COVE_LOG=cove_runtime=debug cargo test --release -p cove-runtime --test create_timing -- --ignored --nocapture
//! ```
//!
//! `COVE_TIMING_N` (default 12) creates (and stop + start) of `COVE_TIMING_DISK_MIB` (default
//! 3072) each, one at a time with a short pause between (as a server sees them), each destroyed
//! before the next.
//! `COVE_TIMING_SAVE_CONFIG=<path>` copies a generated `config.json` there (for runc experiments).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cove_runtime::{Runtime, RuntimeConfig, SandboxSpec};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn build_rootfs(lower: &Path) {
    for d in ["bin", "etc", "root", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
    }
    std::fs::write(lower.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(lower.join("etc/group"), "root:x:0:\n").unwrap();
}

struct Cleanup(RuntimeConfig);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let cfg = &self.0;
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&cfg.name_prefix) {
                    let _ = Command::new("ip").args(["netns", "delete", &name]).output();
                }
            }
        }
        let _ = Command::new("ip").args(["link", "delete", &cfg.bridge]).output();
        for c in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(c.path().join(cfg.cgroup_parent.trim_start_matches('/')));
        }
    }
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    eprintln!("{name}: n={} median={med:.1} ms min={:.1} max={:.1}", v.len(), v[0], v[v.len() - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand as root with --ignored --nocapture"]
async fn create_latency() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COVE_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let n = env_num("COVE_TIMING_N", 12);
    let disk_mib = env_num("COVE_TIMING_DISK_MIB", 3072);
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    build_rootfs(&lower);
    let agent = dir.path().join("agent");
    std::fs::write(&agent, "#!/bin/sh\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = RuntimeConfig {
        root: dir.path().join("sandboxes"),
        runc_root: dir.path().join("runc"),
        agent_binary: agent,
        bridge: format!("cvb99{:05}", pid % 100_000),
        cidr: format!("10.199.{}.0/24", pid % 250),
        cgroup_parent: format!("/cove-timing-{pid}"),
        name_prefix: format!("tm{:04}", pid % 10_000),
        seccomp_profile: None,
    };
    let _cleanup = Cleanup(cfg.clone());
    let rt = Runtime::new(cfg.clone()).await.unwrap();
    // COVE_TIMING_POOL=0 measures creates without a warmed disk pool (the first one formats).
    if env_num("COVE_TIMING_POOL", 1) != 0 {
        rt.warm_disk_pool(disk_mib);
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.disk_pool_ready(disk_mib) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut create, mut start) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let spec = SandboxSpec {
            id: uuid::Uuid::new_v4().to_string(),
            lower: lower.clone(),
            entrypoint: vec!["sh".into(), "-c".into(), "sleep 1000".into()],
            env: vec![],
            workdir: None,
            user: None,
            cpu: 1,
            memory_mib: 128,
            disk_mib,
            pids: 64,
            privileged: false,
        };
        let t = Instant::now();
        rt.create(&spec).await.unwrap();
        create.push(t.elapsed().as_secs_f64() * 1e3);
        if let Ok(to) = std::env::var("COVE_TIMING_SAVE_CONFIG") {
            std::fs::copy(cfg.root.join(&spec.id).join("config.json"), to).unwrap();
        }
        rt.stop(&spec.id, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        rt.start(&spec.id).await.unwrap();
        start.push(t.elapsed().as_secs_f64() * 1e3);
        rt.destroy(&spec.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    summary("create", create);
    summary("start", start);
    drop(rt);
    let left = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!left.contains(&*dir.path().to_string_lossy()), "mounts left behind");
}
