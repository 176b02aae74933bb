//! Generation of the OCI runtime `config.json` for a sandbox. Pure: everything it needs is in
//! [`BundleParams`], so the security-relevant output (capabilities, namespaces, limits,
//! masked paths, seccomp) is unit-tested without root.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::user::ResolvedUser;
use crate::userns::IdRange;

/// Where the agent binary appears inside every sandbox.
pub const AGENT_PATH: &str = "/.cove/cove-agent";
/// Where the host's `<bundle>/toolbox` directory appears inside every sandbox.
pub const TOOLBOX_DIR: &str = "/run/cove";
/// The agent's unix socket inside the sandbox.
pub const TOOLBOX_SOCKET: &str = "/run/cove/toolbox.sock";
/// Extra environment the agent applies at start (written by `Runtime::start_prepared`).
pub const ENV_FILE: &str = "/run/cove/env";
/// `PATH` when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period; the quota is `cpu * CPU_PERIOD`.
pub const CPU_PERIOD: u64 = 100_000;

/// Docker's default capability set, given to unprivileged sandboxes.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// Every capability Linux defines (up to 6.x), given to privileged sandboxes.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `maskedPaths` exactly as `runc spec` generates them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// `readonlyPaths` exactly as `runc spec` generates them.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Everything that goes into one sandbox's `config.json`.
#[derive(Debug, Clone)]
pub struct BundleParams {
    /// Sandbox id (for `COVE_SANDBOX_ID`).
    pub id: String,
    /// Host path of the mounted overlay.
    pub rootfs: PathBuf,
    /// UTS hostname.
    pub hostname: String,
    /// Image entrypoint, passed to the agent as arguments.
    pub entrypoint: Vec<String>,
    /// `K=V` pairs from the image and the user.
    pub env: Vec<String>,
    /// Image `WORKDIR`.
    pub workdir: Option<String>,
    /// The resolved image `USER`.
    pub user: ResolvedUser,
    /// vCPUs.
    pub cpu: u32,
    /// Memory limit in MiB (swap limited to the same value: no swap beyond it).
    pub memory_mib: u64,
    /// Process limit.
    pub pids: u32,
    /// All capabilities, no seccomp, no masked paths.
    pub privileged: bool,
    /// `<cgroup_parent>/<id>`.
    pub cgroups_path: String,
    /// The OCI `createRuntime` hook that wires the network namespace runc made (see
    /// `net::attach_hook`); `None`: loopback only.
    pub network_hook: Option<Value>,
    /// Sandbox ids 0.. map to these host ids (a user namespace); `None` only for privileged
    /// sandboxes, which run as host root.
    pub idmap: Option<IdRange>,
    /// Host path of the agent binary.
    pub agent_binary: PathBuf,
    /// Host path of `<bundle>/toolbox`.
    pub toolbox_dir: PathBuf,
    /// Host paths of the generated `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub etc_hosts: PathBuf,
    /// See `etc_hosts`.
    pub etc_hostname: PathBuf,
    /// See `etc_hosts`.
    pub etc_resolv: PathBuf,
    /// Host path of the merged CA bundle (`cabundle`), bind-mounted read-only at
    /// `cabundle::SANDBOX_PATH` with `cabundle::ENV_VARS` pointing at it; `None`: the image's own.
    pub ca_bundle: Option<PathBuf>,
    /// Capabilities the host can grant (bit n = capability n, as in `CapBnd`); sandboxes get
    /// their set intersected with it, so a host without e.g. CAP_SYS_RESOURCE still works.
    pub host_caps: u64,
    /// `RLIMIT_NOFILE` (soft = hard); raising it past the runtime's own hard limit fails in
    /// the container (no CAP_SYS_RESOURCE), so callers pass [`host_nofile_limit`].
    pub nofile: u64,
    /// The converted OCI seccomp object (ignored when privileged).
    pub seccomp: Option<Value>,
    /// Container-engine mode (see `SandboxSpec::engine`): the directory on the sandbox's disk
    /// mounted at [`ENGINE_DATA_DIR`]. Ignored when privileged.
    pub engine: Option<PathBuf>,
}

/// The capability set for a sandbox: Docker's default or all, limited to `host_caps`.
pub fn capabilities(privileged: bool, host_caps: u64) -> Vec<&'static str> {
    let wanted: &[&str] = if privileged { ALL_CAPS } else { DEFAULT_CAPS };
    // ALL_CAPS is in capability-number order.
    wanted
        .iter()
        .filter(|c| ALL_CAPS.iter().position(|a| a == *c).is_some_and(|n| host_caps & (1 << n) != 0))
        .copied()
        .collect()
}

/// Capabilities that act only in the host's user namespace (modules, raw I/O, the clock,
/// process accounting, the kernel log, LSMs, audit, BPF, perf, suspend): an engine sandbox
/// never gets them, nor the system calls Docker's seccomp profile grants with them.
pub const HOST_ONLY_CAPS: &[&str] = &[
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_TIME",
    "CAP_SYS_PACCT",
    "CAP_SYSLOG",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
];

/// The capability set of a container-engine sandbox: every capability that acts inside its
/// own user namespace (all but [`HOST_ONLY_CAPS`]), limited to `host_caps`, except
/// `CAP_SYS_PTRACE`, which an engine does not need and which would let the sandbox trace and
/// read its agent (non-dumpable, so that a plain sandbox cannot).
pub fn engine_capabilities(host_caps: u64) -> Vec<&'static str> {
    capabilities(true, host_caps)
        .into_iter()
        .filter(|c| !HOST_ONLY_CAPS.contains(c) && *c != "CAP_SYS_PTRACE")
        .collect()
}

/// This process's bounding set (`CapBnd` of `/proc/self/status`); all bits when unreadable.
pub fn host_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapBnd:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
        })
        .unwrap_or(u64::MAX)
}

/// This process's hard `RLIMIT_NOFILE`, capped at 1048576: what sandboxes get.
pub fn host_nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(1 << 20).min(1 << 20)
}

/// Adds `key=value` unless `env` already sets `key`.
fn env_default(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    if !env.iter().any(|e| e.starts_with(&prefix)) {
        env.push(format!("{prefix}{value}"));
    }
}

/// Adds `K=V` entries to `env`, replacing entries with the same key (later ones win).
pub fn merge_env(env: &mut Vec<String>, extra: &[String]) {
    for e in extra {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        let prefix = format!("{key}=");
        env.retain(|x| !x.starts_with(&prefix));
        env.push(e.clone());
    }
}

/// Replaces (or adds) `key=value`.
fn env_set(env: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix));
    env.push(format!("{prefix}{value}"));
}

fn bind(source: &std::path::Path, destination: &str, ro: bool) -> Value {
    // noexec too: the toolbox tmpfs is noexec, and in a user namespace a bind may not drop
    // a flag its source has (nothing bound this way is a program anyway).
    let mut options = vec!["rbind", "nosuid", "nodev", "noexec"];
    options.push(if ro { "ro" } else { "rw" });
    json!({ "destination": destination, "type": "bind", "source": source, "options": options })
}

/// Where a container-engine sandbox's engine keeps its images and containers: on the
/// sandbox's ext4 disk, since overlay2 cannot stack on the sandbox's own overlay root.
pub const ENGINE_DATA_DIR: &str = "/var/lib/docker";

/// Builds the OCI runtime spec.
pub fn config(p: &BundleParams) -> Value {
    let engine = p.engine.as_ref().filter(|_| !p.privileged);
    // An engine gets the capabilities that act in the sandbox's own user namespace.
    let caps =
        if engine.is_some() { engine_capabilities(p.host_caps) } else { capabilities(p.privileged, p.host_caps) };
    let cwd = p.workdir.clone().filter(|w| w.starts_with('/')).unwrap_or_else(|| p.user.home.clone());

    let mut env = p.env.clone();
    env_default(&mut env, "PATH", DEFAULT_PATH);
    env_set(&mut env, "HOME", &p.user.home);
    if let Some(name) = &p.user.name {
        env_default(&mut env, "USER", name);
    }
    env_default(&mut env, "HOSTNAME", &p.hostname);
    env_set(&mut env, "COVE_SANDBOX_ID", &p.id);
    env_set(&mut env, "COVE_TOOLBOX_SOCKET", TOOLBOX_SOCKET);
    env_set(&mut env, "COVE_ENV_FILE", ENV_FILE);
    env_set(&mut env, "COVE_WORKDIR", &cwd);
    if p.ca_bundle.is_some() {
        for var in crate::cabundle::ENV_VARS {
            env_default(&mut env, var, crate::cabundle::SANDBOX_PATH);
        }
    }

    let mut args = vec![AGENT_PATH.to_string()];
    args.extend(p.entrypoint.iter().cloned());

    let (sys_opts, cgroup_opts) = if p.privileged || engine.is_some() {
        (vec!["nosuid", "noexec", "nodev", "rw"], vec!["nosuid", "noexec", "nodev", "relatime", "rw"])
    } else {
        (vec!["nosuid", "noexec", "nodev", "ro"], vec!["nosuid", "noexec", "nodev", "relatime", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": cgroup_opts}),
        // The agent must stay executable: only this bind is without noexec and nosuid is fine.
        json!({"destination": AGENT_PATH, "type": "bind", "source": p.agent_binary,
               "options": ["rbind", "nodev", "ro"]}),
        bind(&p.toolbox_dir, TOOLBOX_DIR, false),
        // Read-only: a sandbox must not be able to grow host files (they are not on its disk).
        bind(&p.etc_hosts, "/etc/hosts", true),
        bind(&p.etc_hostname, "/etc/hostname", true),
        bind(&p.etc_resolv, "/etc/resolv.conf", true),
    ];
    if let Some(ca) = &p.ca_bundle {
        mounts.push(bind(ca, crate::cabundle::SANDBOX_PATH, true));
    }
    if let Some(dir) = engine {
        // Not noexec: the engine's layers hold programs. nosuid and nodev as on the disk's
        // own mount (a user namespace cannot lift them); the overlays the engine mounts on its
        // layers are mounts of their own.
        mounts.push(json!({"destination": ENGINE_DATA_DIR, "type": "bind", "source": dir,
                           "options": ["rbind", "nosuid", "nodev", "rw"]}));
    }

    let memory = p.memory_mib.saturating_mul(1 << 20);
    let resources = json!({
        // Unprivileged: deny all, runc then allows its default devices (null, zero, tty…).
        "devices": [{"allow": p.privileged, "access": "rwm"}],
        "cpu": {"quota": u64::from(p.cpu) * CPU_PERIOD, "period": CPU_PERIOD},
        "memory": {"limit": memory, "swap": memory},
        "pids": {"limit": p.pids},
    });

    // runc makes every namespace, the network one included, so that they belong to the
    // sandbox's user namespace (sysfs, mqueue and raw sockets need that); the network hook then
    // plugs a veth into it from the host before anything in the sandbox runs.
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "network"}),
        json!({"type": "cgroup"}),
    ];
    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": p.cgroups_path,
        "rootfsPropagation": "private",
    });
    if let Some(r) = p.idmap {
        namespaces.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": r.start, "size": r.count}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    linux["namespaces"] = json!(namespaces);
    if !p.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        // An engine sets its network namespaces' sysctls (`net.ipv4.ip_forward`): `/proc/sys`
        // is writable, and the kernel still refuses every sysctl the sandbox's namespaces do
        // not own.
        let readonly: Vec<&str> =
            READONLY_PATHS.iter().copied().filter(|p| engine.is_none() || *p != "/proc/sys").collect();
        linux["readonlyPaths"] = json!(readonly);
        if let Some(seccomp) = &p.seccomp {
            linux["seccomp"] = seccomp.clone();
        }
    }

    let mut user = json!({"uid": p.user.uid, "gid": p.user.gid});
    if !p.user.additional_gids.is_empty() {
        user["additionalGids"] = json!(p.user.additional_gids);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": user,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": p.nofile, "soft": p.nofile}],
            "noNewPrivileges": false,
        },
        "root": {"path": p.rootfs, "readonly": false},
        "hostname": p.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(hook) = &p.network_hook {
        spec["hooks"] = json!({"createRuntime": [hook]});
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_env_entries_replace_those_with_the_same_key() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        merge_env(&mut env, &["A=3".into(), "C=4".into(), "AB=5".into()]);
        assert_eq!(env, ["B=2", "A=3", "C=4", "AB=5"]);
    }

    fn params(privileged: bool) -> BundleParams {
        BundleParams {
            id: "0b1c2d3e-aaaa-bbbb-cccc-000000000001".into(),
            rootfs: "/data/sandboxes/x/rootfs".into(),
            hostname: "0b1c2d3eaaaa".into(),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            env: vec!["FOO=bar".into(), "PATH=/custom/bin".into(), "HOME=/wrong".into()],
            workdir: None,
            user: ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10],
                home: "/home/app".into(),
                name: Some("app".into()),
            },
            cpu: 2,
            memory_mib: 512,
            pids: 4096,
            privileged,
            cgroups_path: "/cove/x".into(),
            network_hook: Some(json!({"path": "/bin/sh", "args": ["sh", "-c", "true"]})),
            idmap: (!privileged).then_some(IdRange { start: 100_000, count: 65536 }),
            agent_binary: "/opt/cove/cove-agent".into(),
            toolbox_dir: "/data/sandboxes/x/toolbox".into(),
            etc_hosts: "/data/sandboxes/x/etc/hosts".into(),
            etc_hostname: "/data/sandboxes/x/etc/hostname".into(),
            etc_resolv: "/data/sandboxes/x/etc/resolv.conf".into(),
            ca_bundle: None,
            host_caps: u64::MAX,
            nofile: 4096,
            seccomp: Some(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []})),
            engine: None,
        }
    }

    #[test]
    fn an_extra_ca_bundle_is_mounted_read_only_and_named_by_the_tls_variables_unless_set() {
        let mut p = params(false);
        p.env.push("PIP_CERT=/mine.pem".into());
        assert!(!config(&p)["process"]["env"].to_string().contains("SSL_CERT_FILE"), "no bundle, no variables");
        p.ca_bundle = Some("/data/sandboxes/x/etc/ca-certificates.crt".into());
        let c = config(&p);
        let m = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == crate::cabundle::SANDBOX_PATH);
        let m = m.expect("the bundle is mounted");
        assert_eq!(m["source"], "/data/sandboxes/x/etc/ca-certificates.crt");
        assert!(strings(&m["options"]).contains(&"ro"), "{m}");
        let env = strings(&c["process"]["env"]);
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
            assert!(env.contains(&format!("{var}={}", crate::cabundle::SANDBOX_PATH).as_str()), "{var}: {env:?}");
        }
        assert!(env.contains(&"PIP_CERT=/mine.pem"), "the image's or user's own value wins: {env:?}");
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
    }

    #[test]
    fn unprivileged_sandboxes_get_dockers_default_capabilities_only() {
        let c = config(&params(false));
        let caps = &c["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(strings(&caps[set]), DEFAULT_CAPS, "{set}");
        }
        assert!(caps["inheritable"].as_array().unwrap().is_empty());
        assert!(caps["ambient"].as_array().unwrap().is_empty());
        assert!(!strings(&caps["bounding"]).contains(&"CAP_SYS_ADMIN"));
    }

    #[test]
    fn unprivileged_sandboxes_get_seccomp_masked_and_readonly_paths() {
        let c = config(&params(false));
        assert_eq!(strings(&c["linux"]["maskedPaths"]), MASKED_PATHS);
        assert_eq!(strings(&c["linux"]["readonlyPaths"]), READONLY_PATHS);
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(c["linux"]["resources"]["devices"], json!([{"allow": false, "access": "rwm"}]));
        let sys = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(strings(&sys["options"]).contains(&"ro"));
    }

    #[test]
    fn an_engine_sandbox_gets_every_capability_writable_cgroups_and_its_engine_dir_but_keeps_its_masks() {
        let c = config(&BundleParams { engine: Some("/d/disk/engine".into()), ..params(false) });
        let caps = strings(&c["process"]["capabilities"]["bounding"]);
        assert!(caps.contains(&"CAP_SYS_ADMIN") && caps.contains(&"CAP_NET_ADMIN"), "{caps:?}");
        assert!(!caps.contains(&"CAP_SYS_MODULE") && !caps.contains(&"CAP_SYS_RAWIO"), "{caps:?}");
        assert!(!caps.contains(&"CAP_SYS_PTRACE"), "the agent stays untraceable: {caps:?}");
        assert!(c["linux"]["uidMappings"].is_array(), "still in its user namespace");
        assert!(c["linux"]["seccomp"].is_object(), "still filtered");
        assert_eq!(strings(&c["linux"]["maskedPaths"]), MASKED_PATHS);
        let ro = strings(&c["linux"]["readonlyPaths"]);
        assert!(!ro.contains(&"/proc/sys") && ro.contains(&"/proc/sysrq-trigger"), "{ro:?}");
        let mount = |d: &str| c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == d).unwrap().clone();
        assert_eq!(strings(&mount("/sys/fs/cgroup")["options"]).last(), Some(&"rw"));
        let engine = mount(ENGINE_DATA_DIR);
        assert_eq!(engine["source"], "/d/disk/engine");
        assert_eq!(strings(&engine["options"]), ["rbind", "nosuid", "nodev", "rw"]);
        // Privileged sandboxes have all of it and no engine dir of their own.
        let p = config(&BundleParams { engine: Some("/d/disk/engine".into()), ..params(true) });
        assert!(p["mounts"].as_array().unwrap().iter().all(|m| m["destination"] != ENGINE_DATA_DIR));
    }

    #[test]
    fn privileged_sandboxes_get_all_capabilities_and_no_seccomp_or_masks() {
        let c = config(&params(true));
        assert_eq!(strings(&c["process"]["capabilities"]["bounding"]), ALL_CAPS);
        assert!(c["linux"].get("seccomp").is_none());
        assert!(c["linux"].get("maskedPaths").is_none());
        assert!(c["linux"].get("readonlyPaths").is_none());
    }

    #[test]
    fn capabilities_the_host_lacks_are_left_out() {
        // This machine's bounding set: everything but CAP_SYS_RESOURCE (24).
        let host = 0x0000_01ff_feff_ffff;
        let mut p = params(true);
        p.host_caps = host;
        let c = config(&p);
        let bounding = strings(&c["process"]["capabilities"]["bounding"]);
        assert!(!bounding.contains(&"CAP_SYS_RESOURCE"));
        assert_eq!(bounding.len(), ALL_CAPS.len() - 1);
        assert_eq!(capabilities(false, host), DEFAULT_CAPS);
    }

    #[test]
    fn every_namespace_is_new_and_unprivileged_sandboxes_get_a_user_namespace() {
        let c = config(&params(false));
        let ns = c["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network", "cgroup", "user"]);
        assert!(ns.iter().all(|n| n.get("path").is_none()));
        assert_eq!(c["linux"]["rootfsPropagation"], "private");
        let map = json!([{"containerID": 0, "hostID": 100_000, "size": 65536}]);
        assert_eq!(c["linux"]["uidMappings"], map);
        assert_eq!(c["linux"]["gidMappings"], map);
        assert_eq!(c["hooks"]["createRuntime"][0]["path"], "/bin/sh");
    }

    #[test]
    fn privileged_sandboxes_have_no_user_namespace() {
        let c = config(&params(true));
        let types: Vec<&str> =
            c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(!types.contains(&"user"));
        assert!(c["linux"].get("uidMappings").is_none());
    }

    #[test]
    fn generated_etc_files_are_mounted_read_only() {
        let c = config(&params(false));
        for d in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
            let m = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == d).unwrap();
            assert!(strings(&m["options"]).contains(&"ro"), "{d}");
        }
    }

    #[test]
    fn limits_map_to_cpu_quota_memory_with_equal_swap_and_pids() {
        let c = config(&params(false));
        let r = &c["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 200_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 512u64 << 20);
        assert_eq!(r["memory"]["swap"], 512u64 << 20);
        assert_eq!(r["pids"]["limit"], 4096);
        assert_eq!(c["linux"]["cgroupsPath"], "/cove/x");
    }

    #[test]
    fn the_agent_runs_first_with_the_entrypoint_as_its_arguments() {
        let c = config(&params(false));
        assert_eq!(strings(&c["process"]["args"]), [AGENT_PATH, "sleep", "infinity"]);
        let agent = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == AGENT_PATH).unwrap();
        assert_eq!(agent["source"], "/opt/cove/cove-agent");
        assert!(strings(&agent["options"]).contains(&"ro"));
        assert!(!strings(&agent["options"]).contains(&"noexec"));
        let toolbox = c["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == TOOLBOX_DIR).unwrap();
        assert!(strings(&toolbox["options"]).contains(&"rw"));
    }

    #[test]
    fn environment_keeps_image_path_forces_home_and_adds_cove_variables() {
        let c = config(&params(false));
        let env = strings(&c["process"]["env"]);
        assert!(env.contains(&"FOO=bar"));
        assert!(env.contains(&"PATH=/custom/bin"));
        assert!(env.contains(&"HOME=/home/app"));
        assert!(!env.contains(&"HOME=/wrong"));
        assert!(env.contains(&"COVE_TOOLBOX_SOCKET=/run/cove/toolbox.sock"));
        assert!(env.contains(&"COVE_ENV_FILE=/run/cove/env"));
        assert!(env.contains(&"COVE_WORKDIR=/home/app"));
        assert_eq!(c["process"]["cwd"], "/home/app");
        assert_eq!(c["process"]["user"], json!({"uid": 1000, "gid": 1000, "additionalGids": [10]}));
    }

    #[test]
    fn a_missing_path_gets_the_default_and_workdir_wins_over_home() {
        let mut p = params(false);
        p.env = vec![];
        p.workdir = Some("/app".into());
        let c = config(&p);
        assert!(strings(&c["process"]["env"]).contains(&format!("PATH={DEFAULT_PATH}").as_str()));
        assert_eq!(c["process"]["cwd"], "/app");
        assert_eq!(c["hostname"], "0b1c2d3eaaaa");
    }

    #[test]
    fn the_default_mounts_match_runc_spec() {
        let c = config(&params(false));
        let dests: Vec<&str> =
            c["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
        for d in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"] {
            assert!(dests.contains(&d), "{d}");
        }
        for d in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
            assert!(dests.contains(&d), "{d}");
        }
    }
}
