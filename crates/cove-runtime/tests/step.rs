//! Integration tests of one-shot build steps with real runc, overlays, cgroups and netns.
//! They need root (skipped with a message otherwise), `runc`, `ip` and a static busybox at
//! /bin/busybox. Each test has its own bridge, CIDR, name prefix, cgroup parent and runc root
//! (named apart from tests/sandbox.rs), and cleans up in a Drop guard.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cove_runtime::{Runtime, RuntimeConfig, StepSpec};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
mod common;
use common::{
    BUSYBOX, TestNet, busybox_rootfs, cgroup_hierarchies, is_root, mounts_containing, remove_host_leftovers,
    test_runtime_config,
};

struct Env {
    rt: Option<Runtime>,
    cfg: RuntimeConfig,
    /// Busybox base root filesystem (the bottom lower).
    base: PathBuf,
    dir: tempfile::TempDir,
}

async fn setup(n: u32) -> Option<Env> {
    if !is_root() {
        eprintln!("skipping: step tests need root");
        return None;
    }
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    busybox_rootfs(&base, &[]);
    let cfg = test_runtime_config(
        dir.path(),
        TestNet {
            bridge: format!("cvs{n:02}{:05}", pid % 100_000),
            cidr: format!("10.{}.{}.0/24", 180 + n, pid % 250),
            cgroup_parent: format!("/cove-steptest-{pid}-{n}"),
            name_prefix: format!("s{n:02}{:04}", pid % 10_000),
        },
    );
    let rt = Runtime::new(cfg.clone()).await.unwrap();
    Some(Env { rt: Some(rt), cfg, base, dir })
}

impl Env {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    /// A step over `extra` lowers (topmost first) and the busybox base, with a fresh upper dir.
    fn spec(&self, id: &str, script: &str, extra: &[PathBuf]) -> StepSpec {
        let upper = self.dir.path().join(format!("{id}-upper"));
        std::fs::create_dir_all(&upper).unwrap();
        let mut lowers = extra.to_vec();
        lowers.push(self.base.clone());
        StepSpec {
            id: id.into(),
            lowers,
            upper,
            disk_mib: 64,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["GREETING=hi".into()],
            workdir: "/".into(),
            user: None,
            network: false,
            cpu: 1,
            memory_mib: 128,
            pids: 64,
        }
    }

    /// Runs the step, returning its exit code and all its output.
    async fn run(&self, spec: &StepSpec) -> (i32, String) {
        let (tx, rx) = unbounded_channel();
        let code = self.rt().run_step(spec, tx).await.unwrap();
        (code, collect(rx).await)
    }

    /// Asserts that nothing of step `id` is left on the host.
    fn assert_clean(&self, id: &str) {
        let steps = self.cfg.root.join(".steps");
        assert!(mounts_containing(&steps).is_empty(), "mounts left: {:?}", mounts_containing(&steps));
        assert!(!steps.join(id).exists(), "step directory left");
        let containers: Vec<String> = std::fs::read_dir(&self.cfg.runc_root)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(containers.is_empty(), "runc containers left: {containers:?}");
        let cgroup = format!("{}/step.{id}", self.cfg.cgroup_parent.trim_start_matches('/'));
        for c in cgroup_hierarchies() {
            assert!(!c.join(&cgroup).exists(), "cgroup left: {}", c.join(&cgroup).display());
        }
        let netns: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let prefix = format!("{}-", self.cfg.name_prefix);
        assert!(!netns.iter().any(|n| n.starts_with(&prefix)), "netns left: {netns:?}");
        assert!(self.rt().ip(&format!("step.{id}")).is_none(), "address not released");
    }
}

async fn collect(mut rx: UnboundedReceiver<Vec<u8>>) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend(chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.rt.take());
        if let Ok(entries) = std::fs::read_dir(&self.cfg.runc_root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ =
                    Command::new("runc").arg("--root").arg(&self.cfg.runc_root).args(["delete", "-f", &id]).output();
            }
        }
        remove_host_leftovers(&self.cfg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_records_new_files_and_whiteouts_for_deleted_lower_files_in_upper() {
    let Some(env) = setup(1).await else { return };
    // A layer above the base, in overlay format, with two files.
    let layer = env.dir.path().join("layer1");
    std::fs::create_dir_all(layer.join("data")).unwrap();
    std::fs::write(layer.join("data/victim.txt"), "delete me").unwrap();
    std::fs::write(layer.join("data/keep.txt"), "keep me").unwrap();
    let spec = env.spec(
        "files",
        "echo new > /data/new.txt && rm /data/victim.txt && mkdir -p /made/dir && cat /data/keep.txt",
        std::slice::from_ref(&layer),
    );
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "keep me");
    let upper = &spec.upper;
    assert_eq!(std::fs::read_to_string(upper.join("data/new.txt")).unwrap(), "new\n");
    let wh = std::fs::symlink_metadata(upper.join("data/victim.txt")).unwrap();
    assert!(wh.file_type().is_char_device(), "a deleted lower file is a character-device whiteout");
    assert_eq!(wh.rdev(), 0);
    assert!(upper.join("made/dir").is_dir());
    assert!(!upper.join("data/keep.txt").exists(), "unchanged lower files are not copied up");
    // Mount points runc had to create (the base has /etc but no hosts or resolv.conf) are not
    // part of the step's changes; /etc itself existed, so only files would have appeared.
    for p in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(std::fs::symlink_metadata(upper.join(p)).is_err(), "{p} left in upper");
    }
    assert!(layer.join("data/victim.txt").exists(), "lowers are never written");
    env.assert_clean("files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_step_leaves_no_mount_points_in_upper() {
    let Some(env) = setup(2).await else { return };
    // FROM scratch + a layer that only has busybox: runc creates /proc, /dev, /sys, /etc/….
    let empty = env.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let layer = env.dir.path().join("bb");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, layer.join("bin/busybox")).unwrap();
    let mut spec = env.spec("scratch", "", &[]);
    spec.lowers = vec![layer, empty];
    spec.argv = vec!["/bin/busybox".into(), "touch".into(), "/made".into()];
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 0, "{out}");
    let names: Vec<String> = std::fs::read_dir(&spec.upper)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["made"]);
    env.assert_clean("scratch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_through_the_channel_while_the_step_runs() {
    let Some(env) = setup(3).await else { return };
    let spec = env.spec("output", "echo one; echo two >&2; sleep 2; echo three", &[]);
    let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
    let t0 = Instant::now();
    let reader = async {
        let mut seen = String::new();
        let mut first_at = None;
        while let Some(chunk) = rx.recv().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("two") && first_at.is_none() {
                first_at = Some(t0.elapsed());
            }
        }
        (seen, first_at)
    };
    let (code, (seen, first_at)) = tokio::join!(env.rt().run_step(&spec, tx), reader);
    let done_at = t0.elapsed();
    assert_eq!(code.unwrap(), 0);
    // Every line arrives; their order across stdout and stderr is the shell's business
    // (busybox may hold builtin stdout in a buffer while stderr goes straight out).
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["one", "three", "two"], "{seen:?}");
    let first_at = first_at.unwrap();
    assert!(done_at - first_at >= Duration::from_millis(1500), "first output at {first_at:?}, done at {done_at:?}");
    env.assert_clean("output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_returned_and_a_missing_command_is_127() {
    let Some(env) = setup(4).await else { return };
    let (code, _) = env.run(&env.spec("ok", "true", &[])).await;
    assert_eq!(code, 0);
    let (code, out) = env.run(&env.spec("three", "echo failing; exit 3", &[])).await;
    assert_eq!((code, out.as_str()), (3, "failing\n"));
    let (code, out) = env.run(&env.spec("shell-missing", "no-such-command", &[])).await;
    assert_eq!(code, 127, "{out}");
    let mut spec = env.spec("exec-missing", "", &[]);
    spec.argv = vec!["no-such-binary".into(), "--flag".into()];
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 127);
    assert!(out.contains("no-such-binary"), "{out}");
    let mut spec = env.spec("abs-missing", "", &[]);
    spec.argv = vec!["/usr/bin/absent".into()];
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 127);
    assert!(out.contains("/usr/bin/absent"), "{out}");
    for id in ["ok", "three", "shell-missing", "exec-missing", "abs-missing"] {
        env.assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_as_its_user_in_its_workdir_with_its_environment() {
    let Some(env) = setup(5).await else { return };
    // The failure is reported on stdout too: busybox's stderr and stdout buffering does not
    // keep their relative order.
    let script = "id -u; id -g; pwd; echo $HOME $GREETING; touch mine 2>/dev/null || { echo cannot-write; exit 1; }";
    let mut spec = env.spec("user", script, &[]);
    spec.user = Some("app".into());
    spec.workdir = "/home/app/./src/../project".into();
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 1, "root creates the missing workdir, so the user cannot write in it: {out}");
    assert_eq!(out, "1000\n1000\n/home/app/project\n/home/app hi\ncannot-write\n");
    assert_eq!(std::fs::read_dir(&spec.upper).unwrap().count(), 0, "a failed step's changes are not kept");
    // As root, the created workdir is root's inside the step (writable) and in the layer.
    let mut spec = env.spec("rootdir", "touch mine && stat -c %u:%g .", &[]);
    spec.workdir = "/srv/new".into();
    let (code, out) = env.run(&spec).await;
    assert_eq!((code, out.as_str()), (0, "0:0\n"));
    let made = std::fs::metadata(spec.upper.join("srv/new")).unwrap();
    assert_eq!((made.uid(), made.gid(), made.mode() & 0o777), (0, 0, 0o755));
    assert_eq!(std::fs::metadata(spec.upper.join("srv/new/mine")).unwrap().uid(), 0);

    let mut spec = env.spec("numeric", "id -u; id -g; touch /tmp/x", &[]);
    spec.user = Some("1234:5678".into());
    let (code, out) = env.run(&spec).await;
    assert_eq!((code, out.as_str()), (0, "1234\n5678\n"));
    let x = std::fs::metadata(spec.upper.join("tmp/x")).unwrap();
    assert_eq!((x.uid(), x.gid()), (1234, 5678));

    let mut spec = env.spec("unknown-user", "true", &[]);
    spec.user = Some("nobody-here".into());
    let (tx, _rx) = unbounded_channel();
    let err = env.rt().run_step(&spec, tx).await.unwrap_err();
    assert_eq!(err.kind(), cove_types::ErrorKind::InvalidArgument, "{err}");
    for id in ["user", "rootdir", "numeric", "unknown-user"] {
        env.assert_clean(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_limits_are_applied_in_its_own_cgroup() {
    let Some(env) = setup(6).await else { return };
    let mut spec =
        env.spec("limits", "echo started; sleep 1; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 & done; wait", &[]);
    spec.pids = 8;
    spec.memory_mib = 96;
    let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
    let cgroup = format!("{}/step.limits", env.cfg.cgroup_parent.trim_start_matches('/'));
    let probe = async {
        let first = rx.recv().await.unwrap();
        assert_eq!(first, b"started\n".to_vec());
        let read = |f: &str| {
            cgroup_hierarchies()
                .iter()
                .map(|h| h.join(&cgroup).join(f))
                .find_map(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
        };
        let pids = read("pids.max");
        let memory = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
        let mut rest = String::new();
        while let Some(chunk) = rx.recv().await {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        (pids, memory, rest)
    };
    let (code, (pids, memory, rest)) = tokio::join!(env.rt().run_step(&spec, tx), probe);
    code.unwrap();
    assert_eq!(pids.as_deref(), Some("8"));
    assert_eq!(memory.as_deref(), Some((96u64 << 20).to_string().as_str()));
    assert!(rest.contains("can't fork") || rest.contains("Resource temporarily unavailable"), "{rest}");
    env.assert_clean("limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_network_a_step_has_loopback_only_and_with_it_an_address_on_the_bridge() {
    let Some(env) = setup(7).await else { return };
    let (code, out) = env.run(&env.spec("nonet", "ls /sys/class/net; cat /etc/hosts", &[])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("lo\n127.0.0.1\tlocalhost cove-build\n"), "{out}");
    // The host itself is firewalled off from the bridge (see firewall.rs): the route is the proof.
    let mut spec = env.spec("net", "ls /sys/class/net; ip -4 addr show eth0; ip route", &[]);
    spec.network = true;
    let gw = env.cfg.cidr.replace(".0/24", ".1");
    spec.env.push(format!("GW={gw}"));
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("eth0\nlo\n"), "{out}");
    assert!(out.contains(&env.cfg.cidr.replace(".0/24", ".")), "{out}");
    assert!(out.contains(&format!("default via {gw}")), "{out}");
    env.assert_clean("nonet");
    env.assert_clean("net");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_after_a_cancelled_step_or_a_crash() {
    let Some(mut env) = setup(8).await else { return };
    for network in [false, true] {
        let mut spec = env.spec(&format!("cancel-{network}"), "echo ready; sleep 30", &[]);
        spec.network = network;
        let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(3), env.rt().run_step(&spec, tx)).await;
        assert!(r.is_err(), "the step was still running");
        assert_eq!(rx.recv().await.unwrap(), b"ready\n".to_vec(), "it had started");
        assert!(t0.elapsed() < Duration::from_secs(10), "cancelled promptly: {:?}", t0.elapsed());
        env.assert_clean(&spec.id);
    }

    // A crash mid-step: a step directory with a mounted rootfs and a netns of that step's
    // name. A new Runtime over the same root removes them.
    drop(env.rt.take());
    let rootfs = env.cfg.root.join(".steps/crashed/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    assert!(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&rootfs).status().unwrap().success());
    let stray_netns = format!("{}-0123456", env.cfg.name_prefix);
    assert!(Command::new("ip").args(["netns", "add", &stray_netns]).status().unwrap().success());
    env.rt = Some(Runtime::new(env.cfg.clone()).await.unwrap());
    env.assert_clean("crashed");
    assert!(!Path::new("/var/run/netns").join(&stray_netns).exists());
    assert!(env.rt().list().await.unwrap().is_empty(), "steps are never listed as sandboxes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_writing_past_its_disk_gets_enospc_and_costs_the_host_nothing() {
    let Some(env) = setup(9).await else { return };
    let mut spec = env.spec("fill", "dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo rc=$?", &[]);
    spec.disk_mib = 16;
    let (code, out) = env.run(&spec).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No space left") && !out.contains("rc=0"), "{out}");
    // The step's own disk is gone with the step; its upper (copied out) holds what fit.
    let big = std::fs::metadata(spec.upper.join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(big < 16 << 20, "{big}");
    env.assert_clean("fill");
}
