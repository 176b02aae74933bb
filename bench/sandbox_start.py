#!/usr/bin/env python3
"""`make bench`, sandboxes: API create → first `process/execute` answered, exec latency and
idle memory, each beside a baseline measured in the same run on the same rootfs:
`runc run -d` (no overlay, disk, agent or API) and `runc exec`. Docker is measured as a
peer when a Docker engine answers."""

import json
import os
import re
import shutil
import statistics
import subprocess
import time
import http.client
import urllib.parse
from pathlib import Path

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, BUSYBOX, Cove  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
EXEC_RUNS = int(os.environ.get("BENCH_EXEC_RUNS", "100"))
IDLE = int(os.environ.get("BENCH_IDLE_SANDBOXES", "10"))


_CONNECTIONS = {}


def post(url, body):
    """POST over one kept-alive connection per server, as the SDKs' HTTP pools do: a new
    connection and urllib's per-request opener cost the client ~7 ms per call on this machine,
    which is not the server's time."""
    u = urllib.parse.urlsplit(url)
    conn = _CONNECTIONS.get(u.netloc)
    if conn is None:
        conn = _CONNECTIONS[u.netloc] = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    try:
        conn.request("POST", u.path, body=payload, headers=headers)
        r = conn.getresponse()
    except (http.client.HTTPException, OSError):
        conn.close()
        conn.request("POST", u.path, body=payload, headers=headers)
        r = conn.getresponse()
    data = r.read()
    if r.status >= 400:
        raise RuntimeError(f"POST {url}: {r.status} {data[:500]!r}")
    return json.loads(data or b"null")


def ms(xs):
    return statistics.median(xs) * 1000


def runc_baseline(rootfs, work, seccomp=None):
    """`runc run -d` of the image rootfs, read-only, with limits and a fresh netns (and, for
    the second baseline, the same seccomp filter cove applies)."""
    bundle = work / "bundle"
    bundle.mkdir(parents=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sleep", "infinity"]
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    if seccomp:
        cfg["linux"]["seccomp"] = seccomp
    cfg["linux"]["resources"] = {
        "cpu": {"quota": 100000, "period": 100000},
        "memory": {"limit": 1 << 30, "swap": 1 << 30},
        "pids": {"limit": 4096},
    }
    (bundle / "config.json").write_text(json.dumps(cfg))
    state = work / "runc"
    starts, execs = [], []
    for i in range(RUNS):
        cid = f"covebench{os.getpid()}x{i}"
        cfg["linux"]["cgroupsPath"] = f"/cove-bench/{cid}"
        (bundle / "config.json").write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(bundle), cid],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        starts.append(time.perf_counter() - t0)
        if i == 0:
            for _ in range(min(EXEC_RUNS, 30)):
                t0 = time.perf_counter()
                subprocess.run(["runc", "--root", str(state), "exec", cid, "true"], check=True)
                execs.append(time.perf_counter() - t0)
        subprocess.run(["runc", "--root", str(state), "kill", cid, "KILL"], capture_output=True)
        for _ in range(100):
            st = subprocess.run(["runc", "--root", str(state), "state", cid], capture_output=True, text=True).stdout
            if '"stopped"' in st:
                break
            time.sleep(0.005)
        subprocess.run(["runc", "--root", str(state), "delete", cid], capture_output=True)
    return starts, execs


# (create answered, first exec answered) of the last `create_to_first_exec`, in seconds.
LAST_SPLITS = []


def create_to_first_exec(server):
    """RUNS times: POST /api/sandbox, then the first process/execute answered; then delete.
    Between runs the warm pool (when enabled) prepares the next sandbox, as it would between
    a user's creates."""
    times = []
    LAST_SPLITS.clear()
    for _ in range(RUNS):
        time.sleep(0.3)
        t0 = time.perf_counter()
        sb = post(server.api_url + "/sandbox", {})
        t1 = time.perf_counter()
        r = post(f"{server.url}/toolbox/{sb['id']}/process/execute", {"command": "true"})
        times.append(time.perf_counter() - t0)
        LAST_SPLITS.append((t1 - t0, time.perf_counter() - t1))
        assert sb["state"] == "started" and r["exitCode"] == 0, (sb, r)
        server.api("DELETE", f"/sandbox/{sb['id']}")
    return times


PHASE_RE = re.compile(r"\b([a-z_]+_ms)=([0-9.]+)")


def phases(log_path, message):
    """The `*_ms` fields of each debug line containing `message` in a server log."""
    out = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        if message in line:
            out.append({k: float(v) for k, v in PHASE_RE.findall(line)})
    return out


def cold_server(tmp, registry):
    """The same measurement on a server without a warm pool: every create launches a container. Also
    returns the per-phase breakdown of those creates from the server's debug log (the
    runtime's "start phases" and the service's "create phases" lines)."""
    server = Cove(tmp / "cold", registry.url, extra=["--default-snapshot", "bench", "--warm-pool-size", "0"]).start(
        env={"COVE_LOG": "info,cove_runtime::runtime=debug,cove_runtime::launch=debug,cove_server::service::sandboxes=debug"})
    try:
        snap = post(server.api_url + "/snapshots", {"name": "bench", "imageName": BUSYBOX})
        server.wait_state(snap["id"])
        sb = post(server.api_url + "/sandbox", {})  # warm-up
        server.api("DELETE", f"/sandbox/{sb['id']}")
        skip_start, skip_create = len(phases(server.log_path, "start phases")), len(phases(server.log_path, "create phases"))
        skip_launch = len(phases(server.log_path, "launch phases"))
        skip_cgroups = len(phases(server.log_path, "launch cgroups made"))
        times = create_to_first_exec(server)
        starts = phases(server.log_path, "start phases")[skip_start:]
        # The launcher's own split of "container created", one line each per create.
        for s, l, c in zip(starts, phases(server.log_path, "launch phases")[skip_launch:],
                           phases(server.log_path, "launch cgroups made")[skip_cgroups:]):
            s.update(l)
            s.update(c)
        creates = [c for c in phases(server.log_path, "create phases")[skip_create:] if "lookup_ms" in c]
        for c, (create_s, exec_s) in zip(creates, LAST_SPLITS):
            c["client_create_ms"], c["client_exec_ms"] = create_s * 1000, exec_s * 1000
        return times, starts, creates
    finally:
        server.cleanup()


def print_phases(starts, creates):
    """Median of each phase of a cold create. The runtime's disk, network and files branches
    run concurrently (their figures are times since the start began); the rest is in order."""
    def med(rows, k):
        xs = [r[k] for r in rows if k in r]
        return statistics.median(xs) if xs else float("nan")

    print(f"\nCold create, per phase (p50 over {len(creates)} creates, warm pool disabled)")
    labels = [
        (creates, "lookup_ms", "snapshot lookup + admission (server)"),
        (creates, "record_ms", "insert the sandbox row"),
        (creates, "launch_ms", "runtime launch (all of the below)"),
        (starts, "image_ms", "  disk image ready (pool take or fallocate+mkfs)"),
        (starts, "mount_ms", "  disk loop-mounted"),
        (starts, "overlay_ms", "  overlay mounted"),
        (starts, "disk_ms", "  image user resolved (disk branch done)"),
        (starts, "cleanup_ms", "  stale netns cleanup"),
        (starts, "net_ms", "  anti-spoofing entry (nfnetlink; net branch done)"),
        (starts, "files_ms", "  bundle files written"),
        (starts, "prepare_ms", "  all of the above + tmpfs mounts"),
        (starts, "config_ms", "  config.json built and written"),
        (starts, "container_ms", "  container created (Cove's launcher; runc create with --launcher runc)"),
        (starts, "cgroups_ms", "    launcher: state dir, state.json, cgroups made"),
        (starts, "fork_ms", "    launcher: fork, clone of the init, its pid back"),
        (starts, "setup_ms", "    launcher: id maps, rlimit, cgroup joins"),
        (starts, "init_ms", "    launcher: the init's mounts, pivot_root, seccomp, execve"),
        (starts, "wire_ms", "  network wired (rtnetlink) + process released"),
        (creates, "agent_ms", "agent answers its socket"),
        (creates, "finish_ms", "state recorded (started)"),
        (creates, "total_ms", "total in the server"),
        (creates, "client_create_ms", "client: POST /api/sandbox answered"),
        (creates, "client_exec_ms", "client: then the first process/execute answered"),
    ]
    for rows, k, label in labels:
        print(f"{label:<52} {med(rows, k):9.2f} ms")


def docker_peer():
    if not shutil.which("docker"):
        return None
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return None
    return True


def main():
    with Scratch() as run:
        tmp, registry = run.tmp, run.registry
        mkimage.push_image(registry.url, "busybox", ["1"], seed="bench")  # BUSYBOX
        server = run.server = Cove(tmp / "d", registry.url, extra=["--default-snapshot", "bench"]).start()
        snap = post(server.api_url + "/snapshots", {"name": "bench", "imageName": BUSYBOX})
        snap = server.wait_state(snap["id"])
        rootfs = server.data_dir / "images" / snap["ref"].split(":")[1] / "rootfs"

        # Warm-up (page cache, first loop device), not counted.
        sb = post(server.api_url + "/sandbox", {})
        server.api("DELETE", f"/sandbox/{sb['id']}")

        first_exec = create_to_first_exec(server)
        sb = post(server.api_url + "/sandbox", {})
        execs = []
        for _ in range(EXEC_RUNS):
            t0 = time.perf_counter()
            post(f"{server.url}/toolbox/{sb['id']}/process/execute", {"command": "true"})
            execs.append(time.perf_counter() - t0)
        server.api("DELETE", f"/sandbox/{sb['id']}")

        ids = [post(server.api_url + "/sandbox", {})["id"] for _ in range(IDLE)]
        time.sleep(1.0)
        usage, rss = [], []
        for i in ids:
            cg = next(Path("/sys/fs/cgroup/memory").glob(f"**/{i}"))
            usage.append(int((cg / "memory.usage_in_bytes").read_text()) / (1 << 20))
            stat = dict(l.split() for l in (cg / "memory.stat").read_text().splitlines())
            rss.append((int(stat["total_rss"]) + int(stat.get("total_mapped_file", 0))) / (1 << 20))
        keep = ids.pop()  # its config.json feeds the second baseline
        for i in ids:
            server.api("DELETE", f"/sandbox/{i}")

        base_starts, base_execs = runc_baseline(rootfs, tmp / "base")
        cove_cfg = next((server.data_dir / "sandboxes").glob("*/config.json"), None)
        sec_starts = None
        if cove_cfg:
            seccomp = json.loads(cove_cfg.read_text())["linux"].get("seccomp")
            sec_starts, _ = runc_baseline(rootfs, tmp / "base-seccomp", seccomp)

        server.api("DELETE", f"/sandbox/{keep}")
        server.cleanup()
        run.server = None
        cold_starts, start_phases, create_phases = cold_server(tmp, registry)

        print(f"\nSandboxes from a busybox snapshot, {RUNS} starts, {EXEC_RUNS} execs, {IDLE} idle sandboxes")
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
        print(row("runc run -d, same rootfs (baseline), ms", base_starts))
        print(row("cove: POST /api/sandbox -> first execute answered, ms", first_exec, base_starts))
        print(row("  same, warm pool disabled (every create launches a container), ms", cold_starts, base_starts))
        if sec_starts:
            print(row("runc run -d with cove's seccomp filter, ms", sec_starts, base_starts))
            print(row("cove vs that runc (same filter), ms", first_exec, sec_starts))
            print(row("  warm pool disabled vs that runc, ms", cold_starts, sec_starts))
        print(row("runc exec true (baseline), ms", base_execs))
        print(row("cove: process/execute `true` via the server, ms", execs, base_execs))
        print(row("cove: idle sandbox memory.usage_in_bytes, MiB", usage, unit="MiB"))
        print(row("cove: idle sandbox rss + mapped files, MiB", rss, unit="MiB"))
        print(f"\ntargets: start p50 <= 40 ms ({ms(first_exec):.1f}) and <= 1.5x runc "
              f"({ms(first_exec) / ms(base_starts):.2f}x); "
              f"exec p50 <= 3 ms ({ms(execs):.2f}); idle <= 8 MiB ({statistics.median(usage):.2f})")
        print_phases(start_phases, create_phases)
        if docker_peer():
            print("docker: engine present (peer figures: run `docker run -d` separately)")
        else:
            print("docker: no Docker engine answers on this machine; peer figures skipped")


if __name__ == "__main__":
    main()
