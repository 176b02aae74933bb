//! The only module allowed `unsafe`: thin wrappers over the few libc calls the agent needs that
//! neither `std` nor tokio expose (fork, signal masks, `waitpid(-1)`, process-group kill, mkfifo,
//! pseudo-terminals).

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
    /// Writing the exec fifo Cove's launcher gave us failed.
    #[error("wait for the sandbox's release on its exec fifo")]
    Release(#[source] io::Error),
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

/// Removes `key` from the environment; as [`set_env_single_threaded`], from `main` only.
pub fn remove_env_single_threaded(key: &str) {
    // SAFETY: as in `set_env_single_threaded`: no other thread exists yet.
    unsafe { std::env::remove_var(key) }
}

/// Waits to be released when Cove's launcher started us (`COVE_EXEC_FIFO` names the
/// descriptor of the sandbox's exec fifo): opening it for writing blocks until the runtime
/// reads it, as runc's init would block before `execve`. Without the variable (runc started
/// us, already released) it returns at once. The descriptor is closed and the variable removed
/// either way, so nothing the sandbox runs sees them.
pub fn wait_for_release() -> Result<(), SysError> {
    let Some(fd) = std::env::var("COVE_EXEC_FIFO").ok() else { return Ok(()) };
    remove_env_single_threaded("COVE_EXEC_FIFO");
    let Ok(n) = fd.parse::<i32>() else { return Ok(()) };
    let released = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{n}"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"0"));
    // SAFETY: closing the inherited descriptor named by the launcher; nothing else uses it.
    unsafe { libc::close(n) };
    released.map_err(SysError::Release)
}

/// A new pseudo-terminal: `(master, slave)`, both close-on-exec and neither our controlling
/// terminal. The slave is opened from the master (`TIOCGPTPEER`), not by a path under
/// `/dev/pts` that a process in the sandbox could have replaced; kernels before 4.13 fall back
/// to the path of the master's number.
pub fn open_pty() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at a live local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument and touches no memory.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        return Ok((master, unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which points at a live local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(format!("/dev/pts/{n}"))?;
    Ok((master, slave.into()))
}

/// Sets the window size of the terminal `fd` (the kernel signals SIGWINCH to its foreground
/// process group).
pub fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points at a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts `fd` into non-blocking mode.
pub fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL take and return integers only.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 { flags } else { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child `cmd` starts lead a new session whose controlling terminal is its stdin
/// (which the caller sets to a pty slave), as a login on a terminal does.
pub fn controlling_terminal_on_stdin(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only setsid and ioctl,
    // both async-signal-safe; it allocates nothing and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the process `pid` (ignoring "no such process"); never to 0, 1 or a group.
pub fn kill_pid(pid: i32, sig: libc::c_int) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; pid > 1 names a single process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Registers `file` (non-blocking) with tokio's reactor.
pub fn async_fd(file: std::fs::File) -> io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: the `File` owns its descriptor and moves into the `AsyncFd`, which keeps it open
    // and unreplaced until the `AsyncFd` is dropped and deregisters it.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(|e| e.into_parts().1)
}
