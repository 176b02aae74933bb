#!/usr/bin/env python3
"""`make bench-density` (issue 15): N idle sandboxes (default 1,000) on one server, and the
host memory each costs: MemAvailable before and after, divided by N, beside the sandboxes'
own cgroup charge (memory.usage_in_bytes). Sparse disks (1,000 allocated disks do not fit a
test machine's data filesystem), no warm pool, busybox with a 1 GiB disk. Creates run 8 at a
time; everything is deleted at the end."""

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchenv import Scratch  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, BUSYBOX, Cove  # noqa: E402

N = int(os.environ.get("BENCH_DENSITY", "1000"))


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read() or b"null")


def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def main():
    with Scratch(prefix="cvd") as run:
        mkimage.push_image(run.registry.url, "busybox", ["1"], seed="bench")  # BUSYBOX
        server = Cove(run.tmp / "d", run.registry.url, extra=[
            "--default-snapshot", "bench", "--warm-pool-size", "0", "--sandbox-disks", "sparse",
            "--org-quota-sandboxes", str(N + 10)])
        server.net["cidr"] = "10.242.0.0/20"  # 4,094 addresses (the harness's /24 has 253)
        run.server = server.start()
        snap = call("POST", server.api_url + "/snapshots", {"name": "bench", "imageName": BUSYBOX, "disk": 1})
        server.wait_state(snap["id"])
        warm = call("POST", server.api_url + "/sandbox", {})  # page cache, first loop device
        call("DELETE", f"{server.api_url}/sandbox/{warm['id']}")
        time.sleep(2)
        before = mem_available()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(lambda _: call("POST", server.api_url + "/sandbox", {}), range(N)))
        created_s = time.monotonic() - t0
        ids = [sb["id"] for sb in made]
        failed = [sb for sb in made if sb["state"] != "started"]
        if failed:
            print(f"{len(failed)} of {N} creates did not start; first at #{made.index(failed[0])}: "
                  f"{failed[0]['state']} {failed[0].get('errorReason')!r}")
        time.sleep(5)  # settle
        after = mem_available()
        usage = []
        for i in ids:
            cg = next(Path("/sys/fs/cgroup/memory").glob(f"**/{i}"), None)
            if cg:
                usage.append(int((cg / "memory.usage_in_bytes").read_text()) / (1 << 20))
        try:
            probe = call("POST", f"{server.url}/toolbox/{ids[-1]}/process/execute", {"command": "echo alive"})
        except urllib.error.HTTPError as e:
            probe = {"result": f"HTTP {e.code}: {e.read().decode()[:300]}"}
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: call("DELETE", f"{server.api_url}/sandbox/{i}"), ids))
        deleted_s = time.monotonic() - t0
        per = (before - after) / N / (1 << 20)
        print(f"\nDensity: {N} idle busybox sandboxes (sparse 1 GiB disks, no warm pool)")
        print(f"created in {created_s:.1f} s ({N / created_s:.1f}/s, 8 at a time); deleted in {deleted_s:.1f} s")
        print(f"host memory per sandbox (MemAvailable drop / N): {per:.2f} MiB (goal <= 4 MiB)")
        if usage:
            print(f"sandbox cgroup memory.usage_in_bytes: p50 {statistics.median(usage):.2f} MiB, "
                  f"sum {sum(usage):.0f} MiB")
        print(f"last sandbox answered exec: {probe.get('result', '').strip()!r}")


if __name__ == "__main__":
    main()
