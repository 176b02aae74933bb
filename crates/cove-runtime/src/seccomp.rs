//! Converts a Docker-format seccomp profile (moby's `profiles/seccomp/default.json` format) into
//! the OCI `linux.seccomp` object that runc enforces through libseccomp.
//!
//! The default is Docker's own profile, embedded in the binary ([`EMBEDDED_PROFILE`]), so a
//! sandbox's kernel surface never depends on what a host package installed; `--seccomp-profile`
//! replaces it with a file.
//!
//! Docker's format adds `archMap` and per-rule `includes`/`excludes` conditions (capabilities,
//! architectures, minimum kernel). They are evaluated here, once, against the capability set
//! the sandbox gets and the host architecture, exactly as Docker does when it builds a spec
//! (moby's `setupSeccomp`): every `includes` condition must hold and no `excludes` one may.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// Docker's default seccomp profile, byte for byte: `profiles/seccomp/default.json` of moby
/// v26.1.5 (Apache-2.0, Docker, Inc.), as shipped by Debian trixie's
/// `golang-github-docker-docker-dev` 26.1.5+dfsg1-9+deb13u1 under
/// `/usr/share/gocode/src/github.com/docker/docker/`; sha256
/// 9c1025c88ccaa517b648da571961838744ea2137f176bfe6a48b21294cae9c76. It is what `docker run`
/// applies without `--security-opt seccomp=…`: an allow list with `defaultErrnoRet` EPERM,
/// namespace-creating `clone` flags, `unshare`, `mount`, `keyctl`, `bpf` and the like reserved
/// to capabilities unprivileged sandboxes lack, and `clone3` answered with ENOSYS so libcs fall
/// back to the filtered `clone`.
pub const EMBEDDED_PROFILE: &str = include_str!("seccomp_default.json");

/// A failed seccomp profile load or conversion.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file does not exist or cannot be read.
    #[error("read seccomp profile {path}")]
    Read {
        /// The profile path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a Docker-format seccomp profile.
    #[error("parse seccomp profile {origin}")]
    Parse {
        /// The profile path, or `embedded` for [`EMBEDDED_PROFILE`].
        origin: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The profile has no entry for the host architecture in its `archMap`.
    #[error("seccomp profile has no architecture entry for {arch}")]
    UnsupportedArch {
        /// The architecture (moby's naming, e.g. `amd64`).
        arch: String,
    },
}

/// The parts of a Docker-format profile that matter for conversion.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: String,
    /// moby writes `null` for an architecture without sub-architectures (riscv64).
    #[serde(default, deserialize_with = "null_as_empty")]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    /// Old single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What a profile is evaluated against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Architecture of the host, as [`host_arch`] names it (`amd64`).
    pub arch: &'a str,
    /// Capabilities the sandbox process gets (`CAP_CHOWN`, …).
    pub caps: &'a [&'a str],
    /// Host kernel (major, minor).
    pub kernel: (u32, u32),
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Reads and parses a Docker-format profile.
pub fn load(path: &Path) -> Result<DockerProfile, SeccompError> {
    let bytes = std::fs::read(path).map_err(|source| SeccompError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| SeccompError::Parse { origin: path.display().to_string(), source })
}

/// Parses [`EMBEDDED_PROFILE`], Docker's default.
pub fn embedded() -> Result<DockerProfile, SeccompError> {
    serde_json::from_str(EMBEDDED_PROFILE).map_err(|source| SeccompError::Parse { origin: "embedded".into(), source })
}

/// The profile at `path` (the `--seccomp-profile` override), else Docker's embedded default.
/// Nothing on the host is read without a path.
pub fn load_or_embedded(path: Option<&Path>) -> Result<DockerProfile, SeccompError> {
    path.map_or_else(embedded, load)
}

/// The name of the architecture this binary runs on, as profiles' `arches` conditions spell it
/// (moby's `goToNative`: `amd64`, `x86`, `arm64`, …).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`; (0, 0) if unreadable,
/// which makes every `minKernel` rule inapplicable (the safe direction: fewer allowed syscalls).
pub fn host_kernel() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().and_then(|s| parse_kernel(&s)).unwrap_or((0, 0))
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.trim().split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// libseccomp's name for a [`host_arch`] name.
fn scmp_arch(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "x86" => "SCMP_ARCH_X86",
        "arm64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => return None,
    })
}

/// Produces the OCI `linux.seccomp` object for `target`.
pub fn convert(profile: &DockerProfile, target: &Target<'_>) -> Result<Value, SeccompError> {
    let architectures: Vec<String> = if profile.arch_map.is_empty() {
        profile.architectures.clone()
    } else {
        let native =
            scmp_arch(target.arch).ok_or_else(|| SeccompError::UnsupportedArch { arch: target.arch.into() })?;
        let entry = profile
            .arch_map
            .iter()
            .find(|e| e.architecture == native)
            .ok_or_else(|| SeccompError::UnsupportedArch { arch: target.arch.into() })?;
        std::iter::once(entry.architecture.clone())
            .chain(entry.sub_architectures.iter().cloned())
            // x32 is left out on purpose: x32 system calls then meet the filter's
            // bad-architecture action (kill) instead of the x32 allow list, which is stricter,
            // and each architecture in the filter costs runc ~10 ms per start. Debian kernels
            // do not even enable the x32 ABI.
            .filter(|a| a != "SCMP_ARCH_X32")
            .collect()
    };

    let mut syscalls = Vec::new();
    for call in &profile.syscalls {
        if !applies(call, target) {
            continue;
        }
        let mut names = call.names.clone();
        if let Some(n) = &call.name
            && !names.contains(n)
        {
            names.push(n.clone());
        }
        if names.is_empty() {
            continue;
        }
        let mut rule = json!({ "names": names, "action": call.action });
        if let Some(args) = call.args.as_ref().filter(|a| !a.is_empty()) {
            rule["args"] = Value::Array(args.clone());
        }
        if let Some(errno) = call.errno_ret {
            rule["errnoRet"] = json!(errno);
        }
        syscalls.push(rule);
    }

    let mut out = json!({
        "defaultAction": profile.default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(errno) = profile.default_errno_ret {
        out["defaultErrnoRet"] = json!(errno);
    }
    if !profile.flags.is_empty() {
        out["flags"] = json!(profile.flags);
    }
    Ok(out)
}

/// Docker's rule: every `includes` condition must hold and no `excludes` condition may.
fn applies(call: &DockerSyscall, t: &Target<'_>) -> bool {
    let inc = &call.includes;
    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == t.arch) {
        return false;
    }
    if !inc.caps.iter().all(|c| t.caps.contains(&c.as_str())) {
        return false;
    }
    if let Some(min) = &inc.min_kernel
        && parse_kernel(min).is_none_or(|min| t.kernel < min)
    {
        return false;
    }
    let exc = &call.excludes;
    if exc.arches.iter().any(|a| a == t.arch) {
        return false;
    }
    if exc.caps.iter().any(|c| t.caps.contains(&c.as_str())) {
        return false;
    }
    if let Some(min) = &exc.min_kernel
        && parse_kernel(min).is_some_and(|min| t.kernel >= min)
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: &[&str] = &["CAP_CHOWN", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE"];

    fn target() -> Target<'static> {
        Target { arch: "amd64", caps: CAPS, kernel: (6, 1) }
    }

    fn profile(syscalls: Value) -> DockerProfile {
        serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": syscalls,
        }))
        .unwrap()
    }

    fn names(v: &Value) -> Vec<String> {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn the_default_action_errno_and_x86_64_architectures_are_carried_over() {
        let out = convert(&profile(json!([])), &target()).unwrap();
        assert_eq!(out["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(out["defaultErrnoRet"], 38);
        assert_eq!(out["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]), "x32 is not allowed in");
    }

    #[test]
    fn rules_for_other_architectures_are_dropped_and_ours_kept() {
        let p = profile(json!([
            {"names": ["arm_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
            {"names": ["amd_only"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["not_on_amd"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}}
        ]));
        assert_eq!(names(&convert(&p, &target()).unwrap()), ["amd_only"]);
    }

    #[test]
    fn capability_conditions_follow_the_sandbox_capability_set() {
        let p = profile(json!([
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["mount_denied"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot_denied"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "excludes": {"caps": ["CAP_SYS_CHROOT"]}}
        ]));
        let out = convert(&p, &target()).unwrap();
        assert_eq!(names(&out), ["chroot", "mount_denied"]);
        assert_eq!(out["syscalls"][1]["errnoRet"], 1);
        assert_eq!(out["syscalls"][1]["action"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn min_kernel_rules_apply_only_on_new_enough_kernels() {
        let p = profile(json!([
            {"names": ["old"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["future"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.2"}}
        ]));
        assert_eq!(names(&convert(&p, &target()).unwrap()), ["old"]);
    }

    #[test]
    fn argument_filters_are_kept_and_null_args_are_omitted() {
        let p = profile(json!([
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": null}
        ]));
        let out = convert(&p, &target()).unwrap();
        assert_eq!(out["syscalls"][0]["args"][0]["value"], 8);
        assert_eq!(out["syscalls"][0]["args"][0]["op"], "SCMP_CMP_EQ");
        assert!(out["syscalls"][1].get("args").is_none());
    }

    #[test]
    fn an_architecture_missing_from_the_arch_map_is_an_error() {
        let t = Target { arch: "mips64", caps: CAPS, kernel: (6, 1) };
        assert!(matches!(convert(&profile(json!([])), &t), Err(SeccompError::UnsupportedArch { .. })));
    }

    /// Docker's default profile converted for Docker's default capabilities plus `extra` on x86_64.
    fn docker_default(extra: &[&'static str], kernel: (u32, u32)) -> Value {
        let caps: Vec<&str> = crate::oci::DEFAULT_CAPS.iter().chain(extra).copied().collect();
        convert(&embedded().unwrap(), &Target { arch: "amd64", caps: &caps, kernel }).unwrap()
    }

    /// The rules that name `syscall`.
    fn rules_for<'a>(out: &'a Value, syscall: &str) -> Vec<&'a Value> {
        out["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().contains(&json!(syscall)))
            .collect()
    }

    /// Allowed whatever its arguments.
    fn allowed_outright(out: &Value, syscall: &str) -> bool {
        rules_for(out, syscall).iter().any(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
    }

    /// Allowed for some arguments at least.
    fn ever_allowed(out: &Value, syscall: &str) -> bool {
        rules_for(out, syscall).iter().any(|r| r["action"] == "SCMP_ACT_ALLOW")
    }

    #[test]
    fn the_embedded_profile_is_docker_default_with_eperm_for_everything_unlisted() {
        let out = docker_default(&[], (6, 1));
        assert_eq!(out["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(out["defaultErrnoRet"], 1);
        assert_eq!(out["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]));
    }

    #[test]
    fn docker_default_capabilities_get_no_keyring_namespace_mount_bpf_or_kernel_loading_syscalls() {
        let out = docker_default(&[], (6, 1));
        for never in [
            "keyctl",
            "add_key",
            "request_key",
            "unshare",
            "setns",
            "mount",
            "umount",
            "umount2",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "pivot_root",
            "clone3",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "syslog",
            "acct",
            "settimeofday",
            "iopl",
            "ioperm",
            "userfaultfd",
            "lookup_dcookie",
            "quotactl",
            "sethostname",
            // Docker 25 dropped io_uring from its default profile.
            "io_uring_setup",
            "io_uring_enter",
        ] {
            assert!(!ever_allowed(&out, never), "{never} must not be allowed");
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        const NEW_NS: u64 = 0x0002_0000;
        const NEW_CGROUP: u64 = 0x0200_0000;
        const NEW_UTS: u64 = 0x0400_0000;
        const NEW_IPC: u64 = 0x0800_0000;
        const NEW_USER: u64 = 0x1000_0000;
        const NEW_PID: u64 = 0x2000_0000;
        const NEW_NET: u64 = 0x4000_0000;
        let out = docker_default(&[], (6, 1));
        let rules = rules_for(&out, "clone");
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW");
        let args = rules[0]["args"].as_array().unwrap();
        assert_eq!(args.len(), 1);
        assert_eq!(args[0]["index"], 0, "flags are clone's first argument on x86_64");
        assert_eq!(args[0]["op"], "SCMP_CMP_MASKED_EQ");
        // (flags & value) == valueTwo, and an absent valueTwo is 0.
        assert_eq!(args[0]["value"], NEW_NS | NEW_CGROUP | NEW_UTS | NEW_IPC | NEW_USER | NEW_PID | NEW_NET);
        assert_eq!(args[0].get("valueTwo").map_or(0, |v| v.as_u64().unwrap()), 0);
    }

    #[test]
    fn clone3_fails_with_enosys_so_libc_falls_back_to_the_filtered_clone() {
        let out = docker_default(&[], (6, 1));
        let rules = rules_for(&out, "clone3");
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rules[0]["errnoRet"], 38);
    }

    #[test]
    fn common_syscalls_stay_allowed_and_socket_only_outside_vsock() {
        let out = docker_default(&[], (6, 1));
        for must in [
            "read",
            "write",
            "openat",
            "execve",
            "exit_group",
            "mmap",
            "futex",
            "wait4",
            "socketpair",
            "connect",
            "ptrace",
            "chroot",
            "arch_prctl",
            "name_to_handle_at",
        ] {
            assert!(allowed_outright(&out, must), "{must} should be allowed");
        }
        let socket = rules_for(&out, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(socket[0]["args"], json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]), "AF_VSOCK is 40");
    }

    #[test]
    fn ptrace_is_allowed_only_on_kernels_from_4_8() {
        assert!(allowed_outright(&docker_default(&[], (4, 8)), "ptrace"));
        assert!(!ever_allowed(&docker_default(&[], (4, 4)), "ptrace"));
        assert!(allowed_outright(&docker_default(&["CAP_SYS_PTRACE"], (4, 4)), "ptrace"));
    }

    #[test]
    fn cap_sys_admin_adds_mount_unshare_and_unfiltered_clone() {
        let out = docker_default(&["CAP_SYS_ADMIN"], (6, 1));
        for admin in ["mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf", "perf_event_open"] {
            assert!(allowed_outright(&out, admin), "{admin} should be allowed with CAP_SYS_ADMIN");
        }
        assert!(rules_for(&out, "clone3").iter().all(|r| r["action"] == "SCMP_ACT_ALLOW"), "no ENOSYS rule");
        assert!(rules_for(&out, "clone").iter().all(|r| r.get("args").is_none()), "no flag mask");
        // The keyring is not a CAP_SYS_ADMIN matter in Docker's profile: still denied.
        assert!(!ever_allowed(&out, "keyctl"));
    }

    #[test]
    fn arm64_gets_its_own_architectures_and_arch_specific_rules() {
        let caps = crate::oci::DEFAULT_CAPS;
        let out = convert(&embedded().unwrap(), &Target { arch: "arm64", caps, kernel: (6, 1) }).unwrap();
        assert_eq!(out["architectures"], json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]));
        assert!(allowed_outright(&out, "set_tls"));
        assert!(!ever_allowed(&out, "arch_prctl"));
    }

    #[test]
    fn no_profile_path_means_the_embedded_docker_profile_and_no_host_file() {
        let t = Target { arch: "amd64", caps: crate::oci::DEFAULT_CAPS, kernel: (6, 1) };
        let default = convert(&load_or_embedded(None).unwrap(), &t).unwrap();
        assert_eq!(default, convert(&embedded().unwrap(), &t).unwrap());
        // The distribution's containers profile allowed keyctl and unshare; nothing reads it now.
        let distro_profile = concat!("/usr/share/", "containers/seccomp.json");
        for (file, src) in [("runtime.rs", include_str!("runtime.rs")), ("seccomp.rs", include_str!("seccomp.rs"))] {
            assert!(!src.contains(distro_profile), "{file} names {distro_profile}");
        }
    }

    #[test]
    fn a_profile_path_overrides_the_embedded_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_KILL", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let out = convert(&load_or_embedded(Some(&path)).unwrap(), &target()).unwrap();
        assert_eq!(out["defaultAction"], "SCMP_ACT_KILL");
        assert_eq!(names(&out), ["read"]);
        let missing = load_or_embedded(Some(&dir.path().join("missing.json")));
        assert!(matches!(missing, Err(SeccompError::Read { .. })));
    }

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_kernel("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(parse_kernel("5.4"), Some((5, 4)));
        assert_eq!(parse_kernel("garbage"), None);
    }
}
