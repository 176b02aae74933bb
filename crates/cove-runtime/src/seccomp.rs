//! Converts a Docker-format seccomp profile (`/usr/share/containers/seccomp.json`, moby's
//! `default.json`) into the OCI `linux.seccomp` object that runc enforces through libseccomp.
//!
//! Docker's format adds `archMap` and per-rule `includes`/`excludes` conditions (capabilities,
//! architectures, minimum kernel). They are evaluated here, once, against the capability set
//! the sandbox gets and the host architecture, exactly as Docker does when it builds a spec.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

/// Where Debian's `golang-github-containers-common` installs the default profile.
pub const DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// A failed seccomp profile load or conversion.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file does not exist or cannot be read.
    #[error(
        "read seccomp profile {path} (install the Docker-format default profile, e.g. Debian package \
         golang-github-containers-common, or configure another path)"
    )]
    Read {
        /// The profile path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a Docker-format seccomp profile.
    #[error("parse seccomp profile {path}")]
    Parse {
        /// The profile path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The profile has no entry for the host architecture in its `archMap`.
    #[error("seccomp profile has no architecture entry for {arch}")]
    UnsupportedArch {
        /// The architecture (Go naming, e.g. `amd64`).
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
    #[serde(default)]
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
    /// Go architecture name of the host (`amd64`).
    pub arch: &'a str,
    /// Capabilities the sandbox process gets (`CAP_CHOWN`, …).
    pub caps: &'a [&'a str],
    /// Host kernel (major, minor).
    pub kernel: (u32, u32),
}

/// Reads and parses a Docker-format profile.
pub fn load(path: &Path) -> Result<DockerProfile, SeccompError> {
    let bytes = std::fs::read(path).map_err(|source| SeccompError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| SeccompError::Parse { path: path.to_path_buf(), source })
}

/// The Go name of the architecture this binary runs on, as profiles spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
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

/// libseccomp's name for a Go architecture name.
fn scmp_arch(go_arch: &str) -> Option<&'static str> {
    Some(match go_arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "386" => "SCMP_ARCH_X86",
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

    #[test]
    fn the_installed_default_profile_denies_module_loading_bpf_and_handle_opens_without_their_caps() {
        let path = Path::new(DEFAULT_PROFILE);
        if !path.exists() {
            eprintln!("skipping: {DEFAULT_PROFILE} is not installed");
            return;
        }
        let caps = crate::oci::DEFAULT_CAPS;
        let out = convert(&load(path).unwrap(), &Target { arch: "amd64", caps, kernel: (6, 1) }).unwrap();
        let allowed: Vec<String> = out["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
            .collect();
        for must in ["read", "write", "clone", "execve", "chroot"] {
            assert!(allowed.iter().any(|n| n == must), "{must} should be allowed");
        }
        // containers-common allows mount/unshare/ptrace unconditionally and relies on the
        // missing capabilities; rules gated on capabilities we do not grant must be gone.
        for never in ["init_module", "finit_module", "bpf", "open_by_handle_at", "settimeofday", "acct"] {
            assert!(!allowed.iter().any(|n| n == never), "{never} must not be allowed");
        }
    }

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_kernel("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(parse_kernel("5.4"), Some((5, 4)));
        assert_eq!(parse_kernel("garbage"), None);
    }
}
