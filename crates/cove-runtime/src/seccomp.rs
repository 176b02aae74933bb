//! Converts a Docker-format seccomp profile (moby's `profiles/seccomp/default.json` format) into
//! the OCI `linux.seccomp` object that runc enforces through libseccomp ([`convert`]), compiles
//! that object into the BPF program runc would install ([`compile`], once per profile), and
//! installs a compiled program on the calling thread with one system call ([`load`], between
//! fork and `execve` in the launcher).
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
    /// An OCI `linux.seccomp` object names a filter flag runc does not know.
    #[error("seccomp flag {flag} is not known")]
    UnknownFlag {
        /// The flag, as written (`SECCOMP_FILTER_FLAG_…`).
        flag: String,
    },
    /// An OCI `linux.seccomp` object names an action runc does not know.
    #[error("seccomp action {action} is not known")]
    UnknownAction {
        /// The action, as written (`SCMP_ACT_…`).
        action: String,
    },
    /// An OCI `linux.seccomp` object names an argument comparison runc does not know.
    #[error("seccomp comparison operator {op} is not known")]
    UnknownOperator {
        /// The operator, as written (`SCMP_CMP_…`).
        op: String,
    },
    /// An OCI `linux.seccomp` object names an architecture runc does not know.
    #[error("seccomp architecture {arch} is not known")]
    UnknownArchitecture {
        /// The architecture, as written (`SCMP_ARCH_…`).
        arch: String,
    },
    /// An OCI `linux.seccomp` object asks for something runc knows but [`compile`] does not do:
    /// a user-space notification agent (`SCMP_ACT_NOTIFY` and its flag).
    #[error("seccomp {what} is not supported")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// An OCI `linux.seccomp` object runc would refuse: an empty syscall name, an argument index
    /// past 5, an errno beyond 16 bits, or a program longer than the kernel takes.
    #[error("invalid seccomp filter: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// A libseccomp call failed while building the filter.
    #[error("libseccomp: {op}")]
    Libseccomp {
        /// The operation, e.g. `add rule for syscall keyctl`.
        op: String,
        /// Cause.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// Reading back the BPF program libseccomp exported failed.
    #[error("export seccomp BPF: {op}")]
    Export {
        /// The operation, e.g. `create memfd`.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
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
pub fn load_profile(path: &Path) -> Result<DockerProfile, SeccompError> {
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
    path.map_or_else(embedded, load_profile)
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

/// The profile of container-engine sandboxes: `profile` evaluated for their capabilities
/// ([`crate::oci::engine_capabilities`]: what Docker applies to a container given them: `mount`, `unshare`,
/// `setns`, namespace-creating `clone` and the like become allowed, still checked by the
/// kernel against the sandbox's own user namespace), and the key-management calls answered
/// with ENOSYS instead of EPERM, so that an inner runc skips the session keyring it would
/// otherwise fail to join (keys are counted against the host uid all sandboxes share), and
/// `pivot_root` allowed.
pub fn engine(profile: &DockerProfile, host_caps: u64) -> Result<Value, SeccompError> {
    let caps = crate::oci::engine_capabilities(host_caps);
    let target = Target { arch: host_arch(), caps: &caps, kernel: host_kernel() };
    let mut out = convert(profile, &target)?;
    if let Some(rules) = out["syscalls"].as_array_mut() {
        // Docker's profile never needed it (a privileged container runs without seccomp); an
        // inner runc jails every inner container with it.
        rules.push(json!({"names": ["pivot_root"], "action": "SCMP_ACT_ALLOW"}));
        rules.push(json!({
            "names": ["add_key", "keyctl", "request_key"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }));
    }
    Ok(out)
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

// --- Compiling the OCI object, once per profile; loading it, once per sandbox ----------------

/// A seccomp filter compiled by [`compile`] from an OCI `linux.seccomp` object: the classic-BPF
/// program runc would install for it, -ENOSYS stub included, with the `seccomp(2)` flags its
/// `flags` ask for. Compiled once per profile and shared between sandboxes; [`load`] installs it.
#[derive(Clone)]
pub struct Bpf {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Bpf {
    /// The program, instruction by instruction, as the kernel receives it.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits [`load`] passes to `seccomp(2)`.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf")
            .field("instructions", &self.program.len())
            .field("flags", &format_args!("{:#x}", self.flags))
            .finish()
    }
}

/// The OCI runtime-spec `linux.seccomp` object, as [`convert`] writes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciSeccomp {
    #[serde(default)]
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_empty")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Option<Vec<OciSyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciSyscall {
    #[serde(default, deserialize_with = "null_as_empty")]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<OciArg>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// An architecture runc knows (its `seccomp.archs` table): the OCI name, libseccomp's token,
/// the kernel's `AUDIT_ARCH_*` value that `seccomp_data.arch` carries, and for the two x86_64
/// ABIs, which one (x32 system calls set bit 30 of the number).
struct Arch {
    name: &'static str,
    scmp: libseccomp::ScmpArch,
    audit: u32,
    abi: Abi,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Abi {
    /// The only ABI of its `AUDIT_ARCH_*`.
    Only,
    /// x86_64 proper: bit 30 of the number clear.
    X8664,
    /// x32: bit 30 of the number set.
    X32,
}

/// `AUDIT_ARCH_*` (linux/audit.h): the ELF machine, `__AUDIT_ARCH_64BIT`, `__AUDIT_ARCH_LE`.
const AUDIT_64: u32 = 0x8000_0000;
const AUDIT_LE: u32 = 0x4000_0000;
/// `__AUDIT_ARCH_CONVENTION_MIPS64_N32`.
const AUDIT_N32: u32 = 0x2000_0000;
/// `__X32_SYSCALL_BIT`.
const X32_BIT: u32 = 0x4000_0000;

const ARCHES: &[Arch] = {
    use libseccomp::ScmpArch as S;
    &[
        Arch { name: "SCMP_ARCH_X86", scmp: S::X86, audit: 3 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_X86_64", scmp: S::X8664, audit: 62 | AUDIT_64 | AUDIT_LE, abi: Abi::X8664 },
        Arch { name: "SCMP_ARCH_X32", scmp: S::X32, audit: 62 | AUDIT_64 | AUDIT_LE, abi: Abi::X32 },
        Arch { name: "SCMP_ARCH_ARM", scmp: S::Arm, audit: 40 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_AARCH64", scmp: S::Aarch64, audit: 183 | AUDIT_64 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_MIPS", scmp: S::Mips, audit: 8, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_MIPS64", scmp: S::Mips64, audit: 8 | AUDIT_64, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_MIPS64N32", scmp: S::Mips64N32, audit: 8 | AUDIT_64 | AUDIT_N32, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_MIPSEL", scmp: S::Mipsel, audit: 8 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_MIPSEL64", scmp: S::Mipsel64, audit: 8 | AUDIT_64 | AUDIT_LE, abi: Abi::Only },
        Arch {
            name: "SCMP_ARCH_MIPSEL64N32",
            scmp: S::Mipsel64N32,
            audit: 8 | AUDIT_64 | AUDIT_LE | AUDIT_N32,
            abi: Abi::Only,
        },
        Arch { name: "SCMP_ARCH_PPC", scmp: S::Ppc, audit: 20, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_PPC64", scmp: S::Ppc64, audit: 21 | AUDIT_64, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_PPC64LE", scmp: S::Ppc64Le, audit: 21 | AUDIT_64 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_S390", scmp: S::S390, audit: 22, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_S390X", scmp: S::S390X, audit: 22 | AUDIT_64, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_RISCV64", scmp: S::Riscv64, audit: 243 | AUDIT_64 | AUDIT_LE, abi: Abi::Only },
        Arch { name: "SCMP_ARCH_LOONGARCH64", scmp: S::Loongarch64, audit: 258 | AUDIT_64 | AUDIT_LE, abi: Abi::Only },
    ]
};

/// `SECCOMP_RET_ERRNO | ENOSYS`: what the stub answers for system calls newer than the profile.
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// The kernel's limit on a classic-BPF program (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

/// Compiles an OCI `linux.seccomp` object (what [`convert`] produces) into the BPF program runc
/// would install for it, so the launcher installs it with one system call ([`load`]).
///
/// Follows runc's `InitSeccomp` and `patchbpf` (libcontainer/seccomp): libseccomp builds the
/// filter with `defaultAction` (`defaultErrnoRet`, EPERM without), every `architectures` entry
/// added, `SCMP_FLTATR_CTL_NNP` off (the launcher sets no_new_privs itself) and, past 32
/// rules, libseccomp's binary-tree layout; then one rule per `syscalls[].names` entry with its
/// `action` (`errnoRet`, EPERM without, for `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE`) and `args`
/// conditions, AND-ed, except that conditions sharing an argument index become one rule each
/// (OR), as runc does. Names libseccomp does not know are skipped; rules whose action is the
/// default one are skipped. Unless the default action lets calls through, a stub before the
/// program answers ENOSYS for system call numbers beyond the largest the profile names on each
/// architecture (x86_64 and x32 apart), so libcs probing newer calls fall back instead of
/// reading EPERM. An object with neither `defaultAction` nor `syscalls` is runc's "no seccomp":
/// the program then allows everything.
///
/// `flags` become `seccomp(2)` flags: `SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`
/// and `SECCOMP_FILTER_FLAG_TSYNC`; an unknown one is refused, as is anything that needs a
/// notification agent (`SCMP_ACT_NOTIFY`, `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`).
///
/// It costs milliseconds (libseccomp and a memfd): callers compile once per profile and share
/// the result.
pub fn compile(oci: &Value) -> Result<Bpf, SeccompError> {
    let spec = OciSeccomp::deserialize(oci)
        .map_err(|source| SeccompError::Parse { origin: "OCI linux.seccomp".into(), source })?;
    let syscalls = spec.syscalls.as_deref().unwrap_or_default();
    if spec.default_action.is_empty() && syscalls.is_empty() {
        return Ok(Bpf { program: vec![ret(libc::SECCOMP_RET_ALLOW)], flags: 0 });
    }
    let flags = filter_flags(&spec.flags)?;
    let default = action(&spec.default_action, spec.default_errno_ret)?;
    let arches = spec
        .architectures
        .iter()
        .map(|name| {
            ARCHES
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| SeccompError::UnknownArchitecture { arch: name.clone() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // runc converts every rule (action, operators) before adding any.
    let rules = syscalls
        .iter()
        .map(|call| Ok((call, action(&call.action, call.errno_ret)?, conditions(call)?)))
        .collect::<Result<Vec<_>, SeccompError>>()?;

    let lib = |op: &str| {
        let op = op.to_string();
        move |source| SeccompError::Libseccomp { op, source }
    };
    let mut ctx = libseccomp::ScmpFilterContext::new(default).map_err(lib("create filter"))?;
    for arch in &arches {
        ctx.add_arch(arch.scmp).map_err(lib(&format!("add architecture {}", arch.name)))?;
    }
    if rules.iter().map(|(call, ..)| call.names.len()).sum::<usize>() > 32
        && let Err(e) = ctx.set_ctl_optimize(2)
    {
        tracing::debug!(error = %e, "seccomp binary-tree optimization unavailable");
    }
    ctx.set_ctl_nnp(false).map_err(lib("clear SCMP_FLTATR_CTL_NNP"))?;
    for (call, act, conds) in &rules {
        for name in &call.names {
            add_rule(&mut ctx, name, *act, default, conds)?;
        }
    }

    let mut program = export(&ctx)?;
    if let Some(stub) = enosys_stub(default, syscalls, &arches)? {
        program.splice(0..0, stub);
    }
    if program.len() > MAX_INSNS {
        return Err(SeccompError::Invalid {
            reason: format!("{} BPF instructions, more than the kernel's {MAX_INSNS}", program.len()),
        });
    }
    Ok(Bpf { program, flags })
}

/// runc's `setFlag` and `filterFlags`: the flags it knows, as `seccomp(2)` bits.
fn filter_flags(flags: &[String]) -> Result<libc::c_ulong, SeccompError> {
    flags.iter().try_fold(0, |bits, flag| {
        Ok(bits
            | match flag.as_str() {
                "SECCOMP_FILTER_FLAG_TSYNC" => libc::SECCOMP_FILTER_FLAG_TSYNC,
                "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                // The kernel takes it only with a notification listener.
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => {
                    return Err(SeccompError::Unsupported { what: format!("flag {flag} (no notification agent)") });
                }
                _ => return Err(SeccompError::UnknownFlag { flag: flag.clone() }),
            })
    })
}

/// runc's `getAction`: ERRNO and TRACE default to EPERM; KILL is KILL_THREAD.
fn action(name: &str, errno_ret: Option<u32>) -> Result<libseccomp::ScmpAction, SeccompError> {
    use libseccomp::ScmpAction as A;
    let errno = || -> Result<u16, SeccompError> {
        let errno = errno_ret.unwrap_or(libc::EPERM as u32);
        u16::try_from(errno).map_err(|_| SeccompError::Invalid { reason: format!("errnoRet {errno} of {name}") })
    };
    Ok(match name {
        "SCMP_ACT_ALLOW" => A::Allow,
        "SCMP_ACT_ERRNO" => A::Errno(i32::from(errno()?)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => A::KillThread,
        "SCMP_ACT_KILL_PROCESS" => A::KillProcess,
        "SCMP_ACT_TRAP" => A::Trap,
        "SCMP_ACT_LOG" => A::Log,
        "SCMP_ACT_TRACE" => A::Trace(errno()?),
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::Unsupported { what: format!("action {name} (no notification agent)") });
        }
        _ => return Err(SeccompError::UnknownAction { action: name.to_string() }),
    })
}

/// A rule's condition, with the index of the argument it compares.
type Condition = (usize, libseccomp::ScmpArgCompare);

/// runc's `getCondition` for each of a rule's `args`.
fn conditions(call: &OciSyscall) -> Result<Vec<Condition>, SeccompError> {
    use libseccomp::ScmpCompareOp as Op;
    let args = call.args.as_deref().unwrap_or_default();
    args.iter()
        .map(|arg| {
            let (op, datum) = match arg.op.as_str() {
                "SCMP_CMP_NE" => (Op::NotEqual, arg.value),
                "SCMP_CMP_LT" => (Op::Less, arg.value),
                "SCMP_CMP_LE" => (Op::LessOrEqual, arg.value),
                "SCMP_CMP_EQ" => (Op::Equal, arg.value),
                "SCMP_CMP_GE" => (Op::GreaterEqual, arg.value),
                "SCMP_CMP_GT" => (Op::Greater, arg.value),
                // (argument & value) == valueTwo
                "SCMP_CMP_MASKED_EQ" => (Op::MaskedEqual(arg.value), arg.value_two),
                _ => return Err(SeccompError::UnknownOperator { op: arg.op.clone() }),
            };
            if arg.index > 5 {
                return Err(SeccompError::Invalid {
                    reason: format!("argument index {} of {:?}: system calls have 6 arguments", arg.index, call.names),
                });
            }
            Ok((arg.index as usize, libseccomp::ScmpArgCompare::new(arg.index, op, datum)))
        })
        .collect()
}

/// runc's `matchCall` for one name.
fn add_rule(
    ctx: &mut libseccomp::ScmpFilterContext,
    name: &str,
    act: libseccomp::ScmpAction,
    default: libseccomp::ScmpAction,
    conds: &[Condition],
) -> Result<(), SeccompError> {
    if name.is_empty() {
        return Err(SeccompError::Invalid { reason: "empty system call name".into() });
    }
    if act == default {
        return Ok(());
    }
    let Ok(nr) = libseccomp::ScmpSyscall::from_name(name) else {
        tracing::debug!(syscall = name, "system call unknown to libseccomp ignored");
        return Ok(());
    };
    let failed = |source| SeccompError::Libseccomp { op: format!("add rule for system call {name}"), source };
    // Several conditions on one argument: one rule each (runc's "old behavior"), else one rule.
    let mut seen = [0u8; 6];
    for (index, _) in conds {
        seen[*index] += 1;
    }
    if seen.iter().any(|&n| n > 1) {
        for (_, c) in conds {
            ctx.add_rule_conditional(act, nr, std::slice::from_ref(c)).map_err(failed)?;
        }
    } else {
        let all: Vec<_> = conds.iter().map(|(_, c)| *c).collect();
        ctx.add_rule_conditional(act, nr, &all).map_err(failed)?;
    }
    Ok(())
}

/// libseccomp's program, through `seccomp_export_bpf` into a memfd (libseccomp 2.5 has no
/// in-memory export), read back as host-endian 8-byte `sock_filter`s.
fn export(ctx: &libseccomp::ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    use std::io::{Read, Seek};
    let fd = rustix::fs::memfd_create("cove-seccomp-bpf", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| SeccompError::Export { op: "create memfd", source: e.into() })?;
    ctx.export_bpf(&fd).map_err(|source| SeccompError::Libseccomp { op: "export BPF".into(), source })?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.rewind().map_err(|source| SeccompError::Export { op: "rewind memfd", source })?;
    file.read_to_end(&mut bytes).map_err(|source| SeccompError::Export { op: "read memfd", source })?;
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(SeccompError::Export {
            op: "split into instructions",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} bytes", bytes.len())),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// runc's `patchbpf` stub: `None` where the default action lets calls through (ALLOW, LOG,
/// TRACE: a tracer handles new calls) or already answers ENOSYS.
///
/// The largest system call number the profile names (any rule, any action, as runc counts) is
/// found for each architecture in the filter plus the native one; a call with a larger number
/// on that architecture gets ENOSYS, every other call runs libseccomp's program. x86_64 and x32
/// share `AUDIT_ARCH_X86_64` and are told apart by bit 30 of the number: with x86_64 alone,
/// x32 numbers go to libseccomp's program (which kills them as a bad architecture); on s390(x)
/// number 0 multiplexes numbers the kernel does not know and gets ENOSYS too.
fn enosys_stub(
    default: libseccomp::ScmpAction,
    syscalls: &[OciSyscall],
    arches: &[&Arch],
) -> Result<Option<Vec<libc::sock_filter>>, SeccompError> {
    use libseccomp::ScmpAction as A;
    if matches!(default, A::Allow | A::Log | A::Trace(_)) || default == A::Errno(libc::ENOSYS) {
        return Ok(None);
    }
    let native = libseccomp::ScmpArch::native();
    let mut present: Vec<&Arch> = arches.to_vec();
    if !present.iter().any(|a| a.scmp == native) {
        match ARCHES.iter().find(|a| a.scmp == native) {
            Some(a) => present.push(a),
            None => return Err(SeccompError::UnknownArchitecture { arch: format!("{native:?} (native)") }),
        }
    }
    // audit arch → (x86_64-or-only max, x32 max)
    let mut sections: Vec<(u32, Option<u32>, Option<u32>)> = Vec::new();
    for arch in present {
        let largest = syscalls
            .iter()
            .flat_map(|call| &call.names)
            .filter_map(|name| libseccomp::ScmpSyscall::from_name_by_arch(name, arch.scmp).ok())
            .map(libseccomp::ScmpSyscall::as_raw_syscall)
            .filter_map(|nr| u32::try_from(nr).ok())
            .max()
            .filter(|&nr| nr > 0);
        let Some(largest) = largest else {
            tracing::warn!(arch = arch.name, "seccomp profile names no system call for this architecture");
            continue;
        };
        let i = match sections.iter().position(|s| s.0 == arch.audit) {
            Some(i) => i,
            None => {
                sections.push((arch.audit, None, None));
                sections.len() - 1
            }
        };
        match arch.abi {
            Abi::Only | Abi::X8664 => sections[i].1 = Some(largest),
            Abi::X32 => sections[i].2 = Some(largest),
        }
    }
    let s390 = [22, 22 | AUDIT_64];
    let sections: Vec<Section> = sections
        .into_iter()
        .map(|(audit, main, x32)| Section {
            audit,
            multiplexed: s390.contains(&audit),
            check: match (main, x32) {
                (Some(main), None) if audit == ARCH_X86_64 => Check::X8664(main),
                (Some(main), None) => Check::Only(main),
                (None, Some(x32)) => Check::X32(x32),
                (Some(main), Some(x32)) => Check::Both { main, x32 },
                (None, None) => unreachable!("a section has at least one number"),
            },
        })
        .collect();
    if sections.is_empty() {
        return Ok(None);
    }
    assemble(&sections).map(Some)
}

/// `AUDIT_ARCH_X86_64`, shared by the x86_64 and x32 ABIs.
const ARCH_X86_64: u32 = 62 | AUDIT_64 | AUDIT_LE;

/// The stub's checks for one `AUDIT_ARCH_*`.
struct Section {
    audit: u32,
    /// s390(x): number 0 (`setup`) stands for numbers the kernel does not know.
    multiplexed: bool,
    check: Check,
}

/// Numbers above these get ENOSYS.
enum Check {
    /// The architecture's only ABI.
    Only(u32),
    /// x86_64 without x32: numbers with bit 30 set go to the program.
    X8664(u32),
    /// x32 without x86_64: numbers with bit 30 clear go to the program.
    X32(u32),
    /// Both x86_64 ABIs, told apart by bit 30.
    Both { main: u32, x32: u32 },
}

/// A jump target in the stub.
#[derive(Clone, Copy)]
enum To {
    /// `n` instructions past the next one.
    Skip(usize),
    /// The `ret ENOSYS` at the end of the stub.
    Enosys,
    /// The first instruction of libseccomp's program, right after the stub.
    Filter,
    /// The checks for the `n`th section.
    Section(usize),
}

enum Ins {
    /// `A = seccomp_data.nr`
    LdNr,
    /// `A = seccomp_data.arch`
    LdArch,
    Jeq(u32, To, To),
    Jgt(u32, To, To),
    Jset(u32, To, To),
    Ja(To),
    Ret(u32),
}

/// Lays out the stub: the architecture dispatch, each section's checks, `ret ENOSYS`; anything
/// unmatched jumps past the end, into libseccomp's program (which keeps its own bad-architecture
/// action for architectures outside the filter).
fn assemble(sections: &[Section]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut code = vec![Ins::LdArch];
    code.extend(sections.iter().enumerate().map(|(i, s)| Ins::Jeq(s.audit, To::Section(i), To::Skip(0))));
    code.push(Ins::Ja(To::Filter));
    let mut starts = Vec::with_capacity(sections.len());
    for s in sections {
        starts.push(code.len());
        code.push(Ins::LdNr);
        if s.multiplexed {
            code.push(Ins::Jeq(0, To::Enosys, To::Skip(0)));
        }
        match s.check {
            Check::Only(max) => code.push(Ins::Jgt(max, To::Enosys, To::Filter)),
            Check::X8664(max) => {
                code.push(Ins::Jset(X32_BIT, To::Filter, To::Skip(0)));
                code.push(Ins::Jgt(max, To::Enosys, To::Filter));
            }
            Check::X32(max) => {
                code.push(Ins::Jset(X32_BIT, To::Skip(0), To::Filter));
                code.push(Ins::Jgt(max, To::Enosys, To::Filter));
            }
            Check::Both { main, x32 } => {
                code.push(Ins::Jset(X32_BIT, To::Skip(1), To::Skip(0)));
                code.push(Ins::Jgt(main, To::Enosys, To::Filter));
                code.push(Ins::Jgt(x32, To::Enosys, To::Filter));
            }
        }
    }
    let enosys = code.len();
    code.push(Ins::Ret(RET_ENOSYS));
    let filter = code.len();

    let offset = |pc: usize, to: To| -> usize {
        let target = match to {
            To::Skip(n) => pc + 1 + n,
            To::Enosys => enosys,
            To::Filter => filter,
            To::Section(i) => starts[i],
        };
        target - (pc + 1)
    };
    let short = |pc: usize, to: To| {
        u8::try_from(offset(pc, to))
            .map_err(|_| SeccompError::Invalid { reason: "ENOSYS stub jump beyond 255 instructions".into() })
    };
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    code.iter()
        .enumerate()
        .map(|(pc, ins)| {
            let jump = |op: u16, k: u32, jt: To, jf: To| {
                Ok(libc::sock_filter { code: op, jt: short(pc, jt)?, jf: short(pc, jf)?, k })
            };
            match *ins {
                // struct seccomp_data { int nr; __u32 arch; … }
                Ins::LdNr => Ok(libc::sock_filter { code: LD_ABS, jt: 0, jf: 0, k: 0 }),
                Ins::LdArch => Ok(libc::sock_filter { code: LD_ABS, jt: 0, jf: 0, k: 4 }),
                Ins::Jeq(k, jt, jf) => jump(JEQ, k, jt, jf),
                Ins::Jgt(k, jt, jf) => jump(JGT, k, jt, jf),
                Ins::Jset(k, jt, jf) => jump(JSET, k, jt, jf),
                Ins::Ja(to) => Ok(libc::sock_filter { code: JA, jt: 0, jf: 0, k: offset(pc, to) as u32 }),
                Ins::Ret(k) => Ok(ret(k)),
            }
        })
        .collect()
}

/// `ret k`
fn ret(k: u32) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k }
}

/// Installs `bpf` with `seccomp(SECCOMP_SET_MODE_FILTER, bpf.flags(), &prog)`: on the calling
/// thread, or on all of the process's threads with `SECCOMP_FILTER_FLAG_TSYNC`. The filter
/// stacks on any already installed and is inherited across fork and kept across `execve`.
///
/// The caller needs no_new_privs set or `CAP_SYS_ADMIN` in its user namespace (runc loads it
/// before dropping capabilities for that reason), else `EACCES`; a flag the kernel does not
/// know gives `EINVAL`.
///
/// Async-signal-safe: one system call on memory prepared by [`compile`], no allocation, no lock
/// (an error is the raw OS error), so it may run between fork and `execve` of a multi-threaded
/// process.
#[allow(unsafe_code)]
pub fn load(bpf: &Bpf) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        // `compile` keeps programs within BPF_MAXINSNS (4096).
        len: bpf.program.len() as libc::c_ushort,
        // The kernel copies the program in and never writes to it.
        filter: bpf.program.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(2) reads `prog` and the `len` instructions it points to, both alive for
    // the call (borrowed from `bpf`), and writes to no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, bpf.flags, &raw const prog) };
    match rc {
        0 => Ok(()),
        ..0 => Err(std::io::Error::last_os_error()),
        // With TSYNC: the id of a thread that could not be synchronized.
        _ => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
    }
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
    fn an_engine_sandbox_may_mount_and_nest_namespaces_but_never_load_modules_or_keys() {
        let out = engine(&embedded().unwrap(), u64::MAX).unwrap();
        for allowed in ["mount", "umount2", "unshare", "setns", "pivot_root", "sethostname"] {
            assert!(ever_allowed(&out, allowed), "{allowed} is what an inner runc needs");
        }
        for never in ["init_module", "finit_module", "kexec_load", "swapon", "iopl", "settimeofday", "add_key"] {
            assert!(!ever_allowed(&out, never), "{never} must not be allowed");
        }
        let keyctl = rules_for(&out, "keyctl");
        assert!(keyctl.iter().any(|r| r["action"] == "SCMP_ACT_ERRNO" && r["errnoRet"] == libc::ENOSYS), "{keyctl:?}");
        compile(&out).expect("the engine profile compiles");
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

    // --- compile and load ----------------------------------------------------------------------

    /// The object `Runtime::new` compiles: the embedded profile, converted for the capabilities
    /// unprivileged sandboxes get on this host, this host's architecture and kernel.
    fn runtime_object() -> Value {
        let caps = crate::oci::capabilities(false, crate::oci::host_capabilities());
        let target = Target { arch: host_arch(), caps: &caps, kernel: host_kernel() };
        convert(&load_or_embedded(None).unwrap(), &target).unwrap()
    }

    /// [`runtime_object`], compiled once for the whole test binary.
    fn runtime_bpf() -> &'static Bpf {
        static BPF: std::sync::OnceLock<Bpf> = std::sync::OnceLock::new();
        BPF.get_or_init(|| compile(&runtime_object()).unwrap())
    }

    /// A system call the child makes under the filter, and what it must get.
    struct Probe {
        what: &'static str,
        nr: libc::c_long,
        args: [libc::c_long; 3],
        expect: Expect,
    }

    #[derive(Debug, Clone, Copy)]
    enum Expect {
        Success,
        Errno(i32),
    }

    /// Forks a child that loads `bpf` and makes the `probes` calls; `Err` names the first one
    /// that did not get what it expects. Only root (with CAP_SYS_ADMIN) may load a filter
    /// without no_new_privs; anyone else sets it first, as runc does.
    #[allow(unsafe_code)]
    fn run_under(bpf: &Bpf, probes: &[Probe]) -> Result<(), String> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let report = writer.as_raw_fd();
        let set_nnp = !rustix::process::geteuid().is_root();
        // SAFETY: fork of the multi-threaded test process: the child only makes system calls
        // on memory prepared before the fork (`bpf`, `probes`, `report`) and leaves with
        // `_exit`, never returning into the test harness or taking a lock.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Written to `report` for the parent: the probe index (-1: the load), rc, errno.
            let fail = |index: i64, rc: i64, errno: i64| -> ! {
                let words = [index, rc, errno];
                // SAFETY: write(2) of a stack array to our pipe, then _exit(2): no allocation,
                // no destructor, no atexit handler of the forked test process.
                unsafe {
                    libc::write(report, words.as_ptr().cast(), std::mem::size_of_val(&words));
                    libc::_exit(1)
                }
            };
            // SAFETY: prctl(2) with integer arguments.
            if set_nnp && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                fail(-2, -1, 0);
            }
            if let Err(e) = load(bpf) {
                fail(-1, -1, i64::from(e.raw_os_error().unwrap_or(0)));
            }
            for (i, p) in probes.iter().enumerate() {
                // SAFETY: the probes pass integers or null pointers, which the kernel checks.
                let rc = unsafe { libc::syscall(p.nr, p.args[0], p.args[1], p.args[2]) };
                // SAFETY: reading this thread's errno.
                let errno = if rc < 0 { unsafe { *libc::__errno_location() } } else { 0 };
                let ok = match p.expect {
                    Expect::Success => rc >= 0,
                    Expect::Errno(e) => rc == -1 && errno == e,
                };
                if !ok {
                    fail(i as i64, rc, i64::from(errno));
                }
            }
            // SAFETY: as above: leave without running anything of the test process.
            unsafe { libc::_exit(0) }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        drop(writer);
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).unwrap();
        if let Some(signal) = status.terminating_signal() {
            return Err(format!("child killed by signal {signal}"));
        }
        match (status.exit_status(), bytes.len()) {
            (Some(0), 0) => Ok(()),
            (_, 24) => {
                let word = |i: usize| i64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
                let (index, rc, errno) = (word(0), word(1), word(2));
                let what = match index {
                    -2 => "prctl(PR_SET_NO_NEW_PRIVS)".to_string(),
                    -1 => "load".to_string(),
                    i => format!("{} (expected {:?})", probes[i as usize].what, probes[i as usize].expect),
                };
                Err(format!("{what}: rc {rc}, {}", std::io::Error::from_raw_os_error(errno as i32)))
            }
            (code, _) => Err(format!("child exited with {code:?} and {} bytes of report", bytes.len())),
        }
    }

    #[test]
    fn getpid_and_the_personality_query_work_under_the_compiled_default_profile() {
        let probes = [
            Probe { what: "getpid()", nr: libc::SYS_getpid, args: [0; 3], expect: Expect::Success },
            // Allowed by an args rule (persona 0xffffffff only queries).
            Probe {
                what: "personality(0xffffffff)",
                nr: libc::SYS_personality,
                args: [0xffff_ffff, 0, 0],
                expect: Expect::Success,
            },
            Probe { what: "personality(0)", nr: libc::SYS_personality, args: [0, 0, 0], expect: Expect::Success },
        ];
        run_under(runtime_bpf(), &probes).unwrap();
    }

    #[test]
    fn keyctl_unshare_and_other_personalities_fail_with_eperm_under_the_compiled_default_profile() {
        const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
        const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
        const ADDR_NO_RANDOMIZE: libc::c_long = 0x0004_0000;
        let probes = [
            Probe {
                what: "keyctl(KEYCTL_GET_KEYRING_ID)",
                nr: libc::SYS_keyctl,
                args: [KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0],
                expect: Expect::Errno(libc::EPERM),
            },
            // Reserved to CAP_SYS_ADMIN, which Docker's default capabilities lack.
            Probe {
                what: "unshare(CLONE_NEWUSER)",
                nr: libc::SYS_unshare,
                args: [libc::CLONE_NEWUSER as libc::c_long, 0, 0],
                expect: Expect::Errno(libc::EPERM),
            },
            Probe {
                what: "personality(ADDR_NO_RANDOMIZE)",
                nr: libc::SYS_personality,
                args: [ADDR_NO_RANDOMIZE, 0, 0],
                expect: Expect::Errno(libc::EPERM),
            },
        ];
        run_under(runtime_bpf(), &probes).unwrap();
    }

    #[test]
    fn clone3_and_system_calls_newer_than_the_profile_fail_with_enosys_under_the_compiled_default_profile() {
        let probes = [
            // The profile's own errnoRet 38; unfiltered, clone3(NULL, 0) is EINVAL.
            Probe { what: "clone3(NULL, 0)", nr: libc::SYS_clone3, args: [0; 3], expect: Expect::Errno(libc::ENOSYS) },
            // The stub's answer: libseccomp's program alone says EPERM (the default action).
            Probe { what: "syscall 1000", nr: 1000, args: [0; 3], expect: Expect::Errno(libc::ENOSYS) },
        ];
        run_under(runtime_bpf(), &probes).unwrap();
    }

    #[test]
    fn a_filter_with_log_spec_allow_and_tsync_flags_loads() {
        let flags = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"];
        let bpf = compile(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": flags,
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
        }))
        .unwrap();
        assert_eq!(
            bpf.flags(),
            libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW | libc::SECCOMP_FILTER_FLAG_TSYNC
        );
        let probes = [
            Probe { what: "keyctl", nr: libc::SYS_keyctl, args: [0, -3, 0], expect: Expect::Errno(libc::EACCES) },
            Probe {
                what: "syscall 1000 (default allow: no stub)",
                nr: 1000,
                args: [0; 3],
                expect: Expect::Errno(libc::ENOSYS),
            },
        ];
        run_under(&bpf, &probes).unwrap();
    }

    #[test]
    fn unknown_flags_actions_operators_and_architectures_are_refused_by_name() {
        let base = || json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]});
        let refused = |v: Value| compile(&v).unwrap_err();

        let mut v = base();
        v["flags"] = json!(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_BOGUS"]);
        let e = refused(v);
        assert!(matches!(&e, SeccompError::UnknownFlag { flag } if flag == "SECCOMP_FILTER_FLAG_BOGUS"), "{e:?}");
        assert!(e.to_string().contains("SECCOMP_FILTER_FLAG_BOGUS"), "{e}");

        let mut v = base();
        v["syscalls"][0]["action"] = json!("SCMP_ACT_BOGUS");
        let e = refused(v);
        assert!(matches!(&e, SeccompError::UnknownAction { .. }), "{e:?}");
        assert!(e.to_string().contains("SCMP_ACT_BOGUS"), "{e}");

        let mut v = base();
        v["defaultAction"] = json!("SCMP_ACT_DENY");
        assert!(refused(v).to_string().contains("SCMP_ACT_DENY"));

        let mut v = base();
        v["syscalls"][0]["args"] = json!([{"index": 0, "value": 1, "op": "SCMP_CMP_BOGUS"}]);
        let e = refused(v);
        assert!(matches!(&e, SeccompError::UnknownOperator { .. }) && e.to_string().contains("SCMP_CMP_BOGUS"), "{e}");

        let mut v = base();
        v["architectures"] = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]);
        let e = refused(v);
        assert!(
            matches!(&e, SeccompError::UnknownArchitecture { .. }) && e.to_string().contains("SCMP_ARCH_VAX"),
            "{e}"
        );

        // Known to runc, but they need a notification agent the launcher does not run.
        let mut v = base();
        v["syscalls"][0]["action"] = json!("SCMP_ACT_NOTIFY");
        assert!(matches!(refused(v), SeccompError::Unsupported { what } if what.contains("SCMP_ACT_NOTIFY")));
        let mut v = base();
        v["flags"] = json!(["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]);
        assert!(matches!(refused(v), SeccompError::Unsupported { .. }));

        let mut v = base();
        v["syscalls"][0]["args"] = json!([{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]);
        assert!(matches!(refused(v), SeccompError::Invalid { .. }));
        let mut v = base();
        v["syscalls"][0]["names"] = json!([""]);
        assert!(matches!(refused(v), SeccompError::Invalid { .. }));
    }

    // --- The compiled program, run by a classic-BPF interpreter ---------------------------------

    /// `seccomp_data.arch` values.
    const I386: u32 = 3 | AUDIT_LE;
    const AARCH64: u32 = 183 | AUDIT_64 | AUDIT_LE;

    /// Runs `program` on `struct seccomp_data { nr, arch, instruction_pointer, args[6] }`, as the
    /// kernel's classic-BPF interpreter does, and returns what it returns.
    fn run(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let word = |k: u32| u32::from_ne_bytes(data[k as usize..k as usize + 4].try_into().unwrap());
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            let code = u32::from(i.code);
            let src = if code & libc::BPF_X != 0 { x } else { i.k };
            match code & 0x07 {
                c if c == libc::BPF_LD => match code & 0xe0 {
                    m if m == libc::BPF_ABS => a = word(i.k),
                    m if m == libc::BPF_IMM => a = i.k,
                    m if m == libc::BPF_MEM => a = mem[i.k as usize],
                    m => panic!("ld mode {m:#x}"),
                },
                c if c == libc::BPF_LDX => match code & 0xe0 {
                    m if m == libc::BPF_IMM => x = i.k,
                    m if m == libc::BPF_MEM => x = mem[i.k as usize],
                    m => panic!("ldx mode {m:#x}"),
                },
                c if c == libc::BPF_ST => mem[i.k as usize] = a,
                c if c == libc::BPF_STX => mem[i.k as usize] = x,
                c if c == libc::BPF_ALU => match code & 0xf0 {
                    o if o == libc::BPF_AND => a &= src,
                    o if o == libc::BPF_OR => a |= src,
                    o if o == libc::BPF_ADD => a = a.wrapping_add(src),
                    o if o == libc::BPF_SUB => a = a.wrapping_sub(src),
                    o if o == libc::BPF_XOR => a ^= src,
                    o if o == libc::BPF_LSH => a <<= src,
                    o if o == libc::BPF_RSH => a >>= src,
                    o => panic!("alu op {o:#x}"),
                },
                c if c == libc::BPF_JMP => {
                    let taken = match code & 0xf0 {
                        o if o == libc::BPF_JA => {
                            pc += i.k as usize;
                            continue;
                        }
                        o if o == libc::BPF_JEQ => a == src,
                        o if o == libc::BPF_JGT => a > src,
                        o if o == libc::BPF_JGE => a >= src,
                        o if o == libc::BPF_JSET => a & src != 0,
                        o => panic!("jmp op {o:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET => return if code & 0x18 == libc::BPF_A { a } else { i.k },
                c if c == libc::BPF_MISC => {
                    if code & 0xf8 == libc::BPF_TXA {
                        a = x
                    } else {
                        x = a
                    }
                }
                c => panic!("class {c:#x}"),
            }
        }
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL_THREAD: u32 = libc::SECCOMP_RET_KILL_THREAD;
    const fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    fn nr(name: &str, arch: libseccomp::ScmpArch) -> u32 {
        libseccomp::ScmpSyscall::from_name_by_arch(name, arch).unwrap().as_raw_syscall() as u32
    }

    /// The largest number the object's names have on `arch`: an oracle independent of the stub.
    fn largest(oci: &Value, arch: libseccomp::ScmpArch) -> u32 {
        names(oci)
            .iter()
            .filter_map(|n| libseccomp::ScmpSyscall::from_name_by_arch(n, arch).ok())
            .map(|s| s.as_raw_syscall())
            .max()
            .unwrap() as u32
    }

    #[test]
    fn the_enosys_stub_answers_only_numbers_beyond_the_profile_on_x86_64_and_i386() {
        use libseccomp::ScmpArch as S;
        let oci = docker_default(&[], (6, 18));
        let program = compile(&oci).unwrap().program;
        // Names the profile itself answers with ENOSYS (clone3).
        let enosys_by_rule: Vec<String> = oci["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["errnoRet"] == libc::ENOSYS)
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(enosys_by_rule, ["clone3"]);
        for (audit, arch) in [(ARCH_X86_64, S::X8664), (I386, S::X86)] {
            let top = largest(&oci, arch);
            assert!(top > 300, "{arch:?}: {top}");
            assert_eq!(run(&program, audit, top + 1, [0; 6]), errno(libc::ENOSYS), "{arch:?} {}", top + 1);
            assert_eq!(run(&program, audit, 1000, [0; 6]), errno(libc::ENOSYS), "{arch:?}");
            assert_eq!(run(&program, audit, nr("getpid", arch), [0; 6]), ALLOW, "{arch:?}");
            assert_eq!(run(&program, audit, nr("keyctl", arch), [0; 6]), errno(libc::EPERM), "{arch:?}");
            assert_eq!(run(&program, audit, nr("clone3", arch), [0; 6]), errno(libc::ENOSYS), "{arch:?}");
            // No call the profile names meets the stub's ENOSYS: all reach the rules.
            for name in names(&oci) {
                let Ok(n) = libseccomp::ScmpSyscall::from_name_by_arch(&name, arch) else { continue };
                let Ok(n) = u32::try_from(n.as_raw_syscall()) else { continue };
                if !enosys_by_rule.contains(&name) {
                    assert_ne!(run(&program, audit, n, [0; 6]), errno(libc::ENOSYS), "{arch:?} {name} ({n})");
                }
            }
        }
        // x32 is not in the filter: its numbers (bit 30) skip the stub and meet libseccomp's
        // bad-architecture kill, whatever their number.
        for n in [0, 39, 1000] {
            assert_eq!(run(&program, ARCH_X86_64, X32_BIT | n, [0; 6]), KILL_THREAD, "x32 {n}");
        }
        // Nor is aarch64.
        assert_eq!(run(&program, AARCH64, 1000, [0; 6]), KILL_THREAD);
    }

    #[test]
    fn with_x32_in_the_filter_each_x86_64_abi_gets_its_own_limit() {
        use libseccomp::ScmpArch as S;
        let oci = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "getpid", "openat"], "action": "SCMP_ACT_ALLOW"}],
        });
        let program = compile(&oci).unwrap().program;
        let top64 = largest(&oci, S::X8664);
        let top32 = largest(&oci, S::X32);
        assert_eq!(top64, nr("openat", S::X8664));
        assert_eq!(top32 & X32_BIT, X32_BIT, "libseccomp's x32 numbers carry bit 30");
        assert_eq!(run(&program, ARCH_X86_64, nr("getpid", S::X8664), [0; 6]), ALLOW);
        assert_eq!(run(&program, ARCH_X86_64, nr("getpid", S::X32), [0; 6]), ALLOW);
        assert_eq!(run(&program, ARCH_X86_64, top64 + 1, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(run(&program, ARCH_X86_64, top32 + 1, [0; 6]), errno(libc::ENOSYS));
        // Below the limits, unlisted: the default action.
        assert_eq!(run(&program, ARCH_X86_64, nr("keyctl", S::X8664).min(top64 - 1), [0; 6]), errno(libc::EPERM));
        // i386 is not in the filter: killed, not ENOSYS.
        assert_eq!(run(&program, I386, 1000, [0; 6]), KILL_THREAD);
    }

    #[test]
    fn actions_and_errno_defaults_are_those_runc_gives() {
        let native = libseccomp::ScmpArch::native();
        let audit = ARCHES.iter().find(|a| a.scmp == native).unwrap().audit;
        let oci = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["close"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["getpid"], "action": "SCMP_ACT_KILL"},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["getuid"], "action": "SCMP_ACT_TRAP"},
                {"names": ["getgid"], "action": "SCMP_ACT_LOG"},
                {"names": ["geteuid"], "action": "SCMP_ACT_TRACE"},
                {"names": ["getegid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
                {"names": ["not_a_system_call", "dup"], "action": "SCMP_ACT_ALLOW"}
            ],
        });
        let program = compile(&oci).unwrap().program;
        let at = |name: &str| run(&program, audit, nr(name, native), [0; 6]);
        assert_eq!(at("read"), ALLOW);
        assert_eq!(at("write"), errno(libc::EPERM), "errnoRet defaults to EPERM");
        assert_eq!(at("close"), errno(libc::EACCES));
        assert_eq!(at("getpid"), KILL_THREAD);
        assert_eq!(at("getppid"), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(at("getuid"), libc::SECCOMP_RET_TRAP);
        assert_eq!(at("getgid"), libc::SECCOMP_RET_LOG);
        assert_eq!(at("geteuid"), libc::SECCOMP_RET_TRACE | libc::EPERM as u32);
        assert_eq!(at("getegid"), libc::SECCOMP_RET_TRACE | 7);
        assert_eq!(at("dup"), ALLOW, "an unknown name in a rule is skipped, not an error");
        assert_eq!(at("keyctl"), errno(libc::ENOSYS), "defaultErrnoRet");
    }

    #[test]
    fn conditions_on_distinct_arguments_are_and_and_on_one_argument_or_as_in_runc() {
        let native = libseccomp::ScmpArch::native();
        let audit = ARCHES.iter().find(|a| a.scmp == native).unwrap().audit;
        let oci = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 3, "op": "SCMP_CMP_GT"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0x7000_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_NE"}, {"index": 0, "value": 100, "op": "SCMP_CMP_LE"}]}
            ],
        });
        let program = compile(&oci).unwrap().program;
        let at = |name: &str, args: [u64; 6]| run(&program, audit, nr(name, native), args);
        let eperm = errno(libc::EPERM);
        assert_eq!(at("personality", [8, 4, 0, 0, 0, 0]), ALLOW);
        assert_eq!(at("personality", [8, 3, 0, 0, 0, 0]), eperm, "AND: arg1 must be > 3");
        assert_eq!(at("personality", [9, 4, 0, 0, 0, 0]), eperm, "AND: arg0 must be 8");
        assert_eq!(at("socket", [1, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(at("socket", [2, 0, 0, 0, 0, 0]), ALLOW, "one argument twice: OR");
        assert_eq!(at("socket", [3, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(at("clone", [0x11, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(at("clone", [0x1000_0011, 0, 0, 0, 0, 0]), eperm, "(flags & mask) == valueTwo");
        assert_eq!(at("clone", [0x1_0000_0011, 0, 0, 0, 0, 0]), ALLOW, "64-bit compare: high word outside the mask");
        assert_eq!(at("kill", [100, 15, 0, 0, 0, 0]), ALLOW);
        assert_eq!(at("kill", [100, 9, 0, 0, 0, 0]), eperm);
        assert_eq!(at("kill", [101, 15, 0, 0, 0, 0]), eperm);
    }

    #[test]
    fn a_permissive_default_gets_no_stub_and_an_empty_object_allows_everything() {
        let native = libseccomp::ScmpArch::native();
        let audit = ARCHES.iter().find(|a| a.scmp == native).unwrap().audit;
        for default in ["SCMP_ACT_ALLOW", "SCMP_ACT_LOG"] {
            let oci =
                json!({"defaultAction": default, "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]});
            let program = compile(&oci).unwrap().program;
            assert_ne!(run(&program, audit, 1000, [0; 6]), errno(libc::ENOSYS), "{default}");
            assert_eq!(run(&program, audit, nr("keyctl", native), [0; 6]), errno(libc::EPERM), "{default}");
        }
        let program = compile(&json!({})).unwrap().program;
        assert_eq!(run(&program, audit, nr("keyctl", native), [0; 6]), ALLOW);
        assert_eq!(run(&program, AARCH64, 1000, [0; 6]), ALLOW);
    }
}
