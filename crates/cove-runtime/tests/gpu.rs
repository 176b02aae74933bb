//! Integration test: a sandbox gets "GPUs" through a CDI spec the test writes. No NVIDIA
//! hardware is needed: the spec's GPU node is a test-made character device with /dev/null's
//! numbers, and its control node one with an unused major (open gives ENXIO when the cgroup
//! lets it through, EPERM when not). Needs root, runc, ip, mkfs.ext4 and /bin/busybox.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cove_runtime::{Runtime, RuntimeError, SandboxSpec};

#[allow(dead_code)]
mod common;
use common::{IDLE, TestNet, busybox_rootfs, is_root, sandbox_exec, sandbox_spec, tear_down, test_runtime_config};

/// A major no driver has: the cgroup rule, not a driver, decides what an open sees.
const UNUSED_MAJOR: u32 = 3999;

fn mknod(path: &Path, major: u32, minor: u32) {
    let st = Command::new("mknod")
        .arg("-m")
        .arg("666")
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {}", path.display());
}

/// The spec: one GPU (`0`, also named by a uuid), spec-level env, control node and a
/// read-only library mount.
fn write_spec(dir: &Path) -> std::path::PathBuf {
    let dev = dir.join("dev");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libnvidia-test.so"), "not really a library\n").unwrap();
    mknod(&dev.join("fakegpu0"), 1, 3);
    mknod(&dev.join("fakectl"), UNUSED_MAJOR, 0);
    let cdi = dir.join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    let spec = format!(
        r#"cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {dev}/fakegpu0
- name: GPU-00000000-test
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {dev}/fakegpu0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: {dev}/fakegpu0
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: {dev}/fakectl
  mounts:
  - hostPath: {lib}
    containerPath: /usr/lib/nvidia
    options: [ro, nodev, bind]
"#,
        dev = dev.display(),
        lib = lib.display()
    );
    let path = cdi.join("nvidia.yaml");
    std::fs::write(&path, spec).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    cdi
}

struct Env {
    rt: Option<Runtime>,
    cfg: cove_runtime::RuntimeConfig,
    _dir: tempfile::TempDir,
    _host: tempfile::TempDir,
}

fn rt(env: &Env) -> &Runtime {
    env.rt.as_ref().unwrap()
}

impl Drop for Env {
    fn drop(&mut self) {
        tear_down(&mut self.rt, &self.cfg);
    }
}

fn spec(lower: &Path, gpu: u32) -> SandboxSpec {
    SandboxSpec { env: vec!["NVIDIA_VISIBLE_DEVICES=all".into()], gpu, ..sandbox_spec(lower, IDLE) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_sandbox_gets_its_cdi_device_unprivileged_and_a_second_one_waits_for_it() {
    if !is_root() {
        eprintln!("skipping: sandbox tests need root");
        return;
    }
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    busybox_rootfs(&lower, &["usr/lib"]);
    let mut cfg = test_runtime_config(
        dir.path(),
        TestNet {
            bridge: format!("cvg{:05}", pid % 100_000),
            cidr: format!("10.97.{}.0/24", pid % 250),
            cgroup_parent: format!("/cove-gputest-{pid}"),
            name_prefix: format!("g{:04}", pid % 10_000),
        },
    );
    // The "host" nodes and libraries live outside the data dir (no mount may expose it), where
    // the sandboxes' root can reach them.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    cfg.cdi_spec_dirs = vec![write_spec(host.path())];
    let mut env = Env { rt: Some(Runtime::new(cfg.clone()).await.unwrap()), cfg, _dir: dir, _host: host };
    assert_eq!((rt(&env).gpu_total(), rt(&env).gpus_free()), (1, 1), "one GPU: 'all' and its uuid name are no more");

    // A sandbox without GPUs gets nothing of the spec.
    let plain = spec(&lower, 0);
    rt(&env).create(&plain).await.unwrap();
    let (_, out) = sandbox_exec(&env.cfg, &plain.id, "ls /dev/nvidia0; echo $NVIDIA_VISIBLE_DEVICES").await;
    assert!(out.contains("No such file") && out.contains("all"), "{out}");
    assert_eq!(rt(&env).gpus_free(), 1);

    let first = spec(&lower, 1);
    rt(&env).create(&first).await.unwrap();
    assert_eq!(rt(&env).gpus_free(), 0);
    let script = "test -c /dev/nvidia0 && echo node-ok; echo env=$NVIDIA_VISIBLE_DEVICES; \
                  echo x > /dev/nvidia0 && echo write-ok; cat /dev/nvidiactl; \
                  cat /usr/lib/nvidia/libnvidia-test.so; touch /usr/lib/nvidia/x; \
                  grep CapEff /proc/self/status; cat /proc/self/uid_map";
    let (_, out) = sandbox_exec(&env.cfg, &first.id, script).await;
    assert!(out.contains("node-ok") && out.contains("write-ok"), "the GPU node is there and opens: {out}");
    assert!(out.contains("env=void"), "the spec's env wins over the image's: {out}");
    assert!(out.contains("No such device or address"), "the cgroup lets the control node through: {out}");
    assert!(out.contains("not really a library") && out.contains("Read-only file system"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "Docker's capabilities, nothing more: {out}");
    assert!(
        out.split_whitespace().collect::<Vec<_>>().windows(3).any(|w| w == ["0", "100000", "65536"]),
        "still in its user namespace: {out}"
    );

    // All GPUs are held: the second sandbox is refused, saying how many, and leaves nothing.
    let second = spec(&lower, 1);
    let e = rt(&env).create(&second).await.unwrap_err();
    assert!(matches!(e, RuntimeError::NoFreeGpu { .. }), "{e}");
    let msg = cove_types::error::chain(&e);
    assert!(msg.contains("1 requested, 0 free of 1"), "{msg}");
    assert_eq!(e.kind(), cove_types::ErrorKind::Exhausted);
    assert!(!env.cfg.root.join(&second.id).exists());

    // A restarted runtime knows the running sandbox holds the GPU.
    env.rt = None;
    env.rt = Some(Runtime::new(env.cfg.clone()).await.unwrap());
    assert_eq!(rt(&env).gpus_free(), 0, "adopted from the record");

    // Stop frees it, start takes it again, destroy frees it for good.
    rt(&env).stop(&first.id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(rt(&env).gpus_free(), 1);
    let record = std::fs::read_to_string(env.cfg.root.join(&first.id).join("spec.json")).unwrap();
    assert!(!record.contains("\"gpus\""), "a stopped sandbox's record holds no GPU: {record}");
    rt(&env).start(&first.id).await.unwrap();
    assert_eq!(rt(&env).gpus_free(), 0);
    rt(&env).destroy(&first.id).await.unwrap();
    assert_eq!(rt(&env).gpus_free(), 1);

    rt(&env).create(&second).await.unwrap();
    let (_, out) = sandbox_exec(&env.cfg, &second.id, "test -c /dev/nvidia0 && echo node-ok").await;
    assert!(out.contains("node-ok"), "{out}");
    for id in [&second.id, &plain.id] {
        rt(&env).destroy(id).await.unwrap();
    }
    assert_eq!(rt(&env).gpus_free(), 1);
}
