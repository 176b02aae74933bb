/* Escape probe run inside a sandbox by tests/security/test_sandbox_attacks.py.
 * Each line: "<attack> <blocked|OPEN> <detail>". OPEN means the attack worked.
 * Static, no libc wrappers that might hide a syscall: raw syscall(2) where it matters. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void verdict(const char *name, int worked, const char *what) {
    printf("%s %s %s\n", name, worked ? "OPEN" : "blocked", what);
}

static void try_rc(const char *name, long rc) {
    char buf[128];
    snprintf(buf, sizeof buf, "rc=%ld errno=%s", rc, rc < 0 ? strerror(errno) : "-");
    verdict(name, rc >= 0, buf);
}

/* Runs the statements in a forked child (its output flushed before it exits). */
#define IN_CHILD(...)                                   \
    do {                                                \
        fflush(stdout);                                 \
        pid_t child_ = fork();                          \
        if (child_ == 0) {                              \
            __VA_ARGS__;                                \
            fflush(stdout);                             \
            _exit(0);                                   \
        }                                               \
        if (child_ > 0) waitpid(child_, NULL, 0);       \
    } while (0)

int main(void) {
    /* Kernel keyring (shared with the host without a user namespace and seccomp). */
    try_rc("add_key", syscall(SYS_add_key, "user", "cove-probe", "x", 1, -3 /* session */));
    try_rc("keyctl_read_host_keyring", syscall(SYS_keyctl, 6 /* KEYCTL_DESCRIBE */, -4 /* user keyring */, NULL, 0));
    try_rc("request_key", syscall(SYS_request_key, "user", "cove-host-secret", NULL, 0));
    /* New namespaces and mounts, each in a child of its own: where they work (a
     * container-engine sandbox), the probe itself must stay in the sandbox's namespaces for
     * the attacks below. The mounts go to a private copy of the mount table when the child
     * can make one, or to the sandbox's own when it cannot. */
    IN_CHILD(try_rc("unshare_user_mount", syscall(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS)));
    IN_CHILD(try_rc("unshare_mount", syscall(SYS_unshare, CLONE_NEWNS)));
    IN_CHILD(syscall(SYS_unshare, CLONE_NEWNS); try_rc("mount_tmpfs", mount("x", "/tmp", "tmpfs", 0, NULL)));
    IN_CHILD(syscall(SYS_unshare, CLONE_NEWNS);
             try_rc("mount_cgroup", mount("cgroup", "/tmp", "cgroup", 0, "memory")));
    /* open_by_handle_at: the classic host-/ escape (needs CAP_DAC_READ_SEARCH). */
    {
        struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
        int root = open("/", O_RDONLY);
        try_rc("open_by_handle_at", syscall(SYS_open_by_handle_at, root, &fh, O_RDONLY));
    }
    /* ptrace of the agent (PID 1). */
    try_rc("ptrace_agent", ptrace(PTRACE_ATTACH, 1, NULL, NULL));
    /* Writing to the host through the agent's stdout. */
    try_rc("write_proc_1_fd_1", open("/proc/1/fd/1", O_WRONLY));
    try_rc("read_proc_1_environ", open("/proc/1/environ", O_RDONLY));
    /* Host files bind-mounted in must be read-only. */
    try_rc("write_etc_hosts", open("/etc/hosts", O_WRONLY | O_APPEND));
    try_rc("write_etc_resolv", open("/etc/resolv.conf", O_WRONLY | O_APPEND));
    /* Device nodes. */
    unlink("/tmp/probe-mem");
    try_rc("mknod_mem", mknod("/tmp/probe-mem", S_IFCHR | 0666, makedev(1, 1)));
    /* Kernel modules and raw I/O. */
    try_rc("init_module", syscall(SYS_init_module, NULL, 0, ""));
    try_rc("iopl", syscall(SYS_iopl, 3));
    try_rc("bpf", syscall(SYS_bpf, 0, NULL, 0));
    try_rc("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    /* Who is root here, on the host? */
    {
        char line[128] = {0};
        FILE *f = fopen("/proc/self/uid_map", "r");
        unsigned inside = 0, outside = 0, count = 0;
        if (f && fgets(line, sizeof line, f)) sscanf(line, "%u %u %u", &inside, &outside, &count);
        char buf[160];
        snprintf(buf, sizeof buf, "uid_map=%u:%u:%u", inside, outside, count);
        verdict("root_is_host_root", outside == 0, buf);
    }
    fflush(stdout);
    return 0;
}
