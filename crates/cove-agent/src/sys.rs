//! The only module allowed `unsafe`: thin wrappers over the few libc calls the agent needs that
//! neither `std` nor tokio expose (fork, signal masks, `waitpid(-1)`, process-group kill, mkfifo).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Signals PID 1 forwards to the server process.
pub const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A failed system call.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// `sigprocmask` failed.
    #[error("block signals before fork")]
    BlockSignals(#[source] io::Error),
    /// `fork` failed.
    #[error("fork the server process")]
    Fork(#[source] io::Error),
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("make the agent non-dumpable")]
    NotDumpable(#[source] io::Error),
    /// `mkfifo` failed.
    #[error("create fifo {path}")]
    Mkfifo {
        /// The fifo.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Which side of `fork` we are on.
#[derive(Debug)]
pub enum Forked {
    /// The new process; it must call [`restore_signals`].
    Child,
    /// The original process (PID 1); holds the child's pid.
    Parent(libc::pid_t),
}

/// A signal mask saved before blocking, restored in the child.
#[derive(Clone, Copy)]
pub struct SavedMask(libc::sigset_t);

impl std::fmt::Debug for SavedMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SavedMask")
    }
}

/// Marks this process non-dumpable (`PR_SET_DUMPABLE 0`): code in the sandbox, even as the
/// same user, can then neither ptrace the agent nor open its `/proc/<pid>/mem`, `fd/` or
/// `environ` without CAP_SYS_PTRACE, which sandboxes do not have. Children get it back at
/// `execve`, so the processes the agent starts are ordinary.
pub fn set_not_dumpable() -> Result<(), SysError> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(SysError::NotDumpable(io::Error::last_os_error()));
    }
    Ok(())
}

/// The pid of this process.
pub fn getpid() -> i32 {
    std::process::id() as i32
}

fn supervised_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully before any read.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks SIGCHLD and the forwarded signals so that PID 1 can take them with `sigwaitinfo`.
/// Must be called while the process has a single thread.
pub fn block_signals() -> Result<SavedMask, SysError> {
    let set = supervised_set();
    // SAFETY: as in supervised_set; `old` is fully written by sigprocmask on success.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid sigset_t values owned by this frame.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) };
    if rc != 0 {
        return Err(SysError::BlockSignals(io::Error::last_os_error()));
    }
    Ok(SavedMask(old))
}

/// Restores the mask saved by [`block_signals`] (in the forked child).
pub fn restore_signals(saved: SavedMask) {
    // SAFETY: `saved.0` is a mask previously returned by sigprocmask; the old-mask pointer is null.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &saved.0, std::ptr::null_mut());
    }
}

/// Forks. Must be called before any thread exists (no tokio runtime yet), so the child
/// inherits a consistent process image.
pub fn fork() -> Result<Forked, SysError> {
    // SAFETY: the process is single-threaded at this point (called from main before the runtime
    // is built), so the child may run arbitrary code afterwards.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(SysError::Fork(io::Error::last_os_error())),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// The PID 1 loop: reaps every child and forwards SIGTERM/SIGINT/SIGHUP to `server`. Returns the
/// exit code to use once `server` has exited (its code, or 128 + signal).
pub fn supervise(server: libc::pid_t) -> i32 {
    let set = supervised_set();
    loop {
        if let Some(code) = reap_all(server) {
            return code;
        }
        // SAFETY: `set` is a valid sigset_t; the siginfo pointer may be null.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: kill has no memory-safety preconditions; `server` is our child's pid.
            unsafe {
                libc::kill(server, sig);
            }
        }
    }
}

/// Reaps every exited child without blocking; returns the server's exit code if it was reaped.
fn reap_all(server: libc::pid_t) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable int; WNOHANG makes the call non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == server {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                continue;
            };
            result = Some(code);
        }
    }
}

/// Sends `sig` to the process group `pgid` (ignoring "no such process").
pub fn kill_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a process group, and
    // pgid > 1 so this never targets every process (-1) or our own group (0).
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Creates a fifo at `path` with `mode`.
pub fn mkfifo(path: &Path, mode: u32) -> Result<(), SysError> {
    let err = |source| SysError::Mkfifo { path: path.display().to_string(), source };
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// 16 random bytes from the `getrandom` system call (no `/dev/urandom` needed, which a bare
/// root filesystem may lack); falls back to time, pid and a counter if the call fails.
pub fn random_16() -> [u8; 16] {
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is a valid, writable buffer of exactly `buf.len()` bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).is_ok_and(|n| n == buf.len()) {
        return buf;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    buf[..8].copy_from_slice(&(nanos as u64 ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes());
    buf[8..].copy_from_slice(&count.to_le_bytes());
    buf
}

/// A random (version 4) UUID.
pub fn new_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(random_16()).into_uuid()
}

/// Sets an environment variable of this process.
///
/// Only for `main` before anything else runs: the caller must guarantee that no other thread
/// exists yet (`setenv` races with concurrent `getenv`).
pub fn set_env_single_threaded(key: &std::ffi::OsStr, value: &std::ffi::OsStr) {
    // SAFETY: called from `main` before the tokio runtime or any other thread is started, so
    // nothing can read the environment concurrently.
    unsafe { std::env::set_var(key, value) }
}
