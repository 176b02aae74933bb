#!/usr/bin/env python3
"""`make bench`: time from `POST /api/snapshots` to `active` for a few-MB image in a local
registry, beside `skopeo copy` + `umoci unpack` of the same image measured in the same run; then
the same for a real Debian image (`cove image bootstrap --profile minimal`, ~50 MB compressed,
cached by the bootstrap after its first build) copied into the local registry
(`BENCH_REAL_IMAGE=0` skips it), on the root filesystem and on a journaled ext4 made for the
run (see `real_image`).

Every Cove run is cold: the previous snapshot is deleted and its blobs and rootfs garbage
collected before the next one, so nothing is served from cache.
"""

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import time

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, COVE_BIN, FIXTURES, Cove, wait_until  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "15"))
IMAGE_MB = int(os.environ.get("BENCH_IMAGE_MB", "4"))
REAL = os.environ.get("BENCH_REAL_IMAGE", "1") != "0"
REAL_RUNS = int(os.environ.get("BENCH_REAL_RUNS", "5"))


def cove_cold_pull(server, i, image="bench:1.0"):
    # Every timed run starts with nothing dirty: Cove fsyncs what it stores, and on ext4 that
    # would otherwise also write out the previous run's (the baseline's) unsynced data.
    os.sync()
    t0 = time.perf_counter()
    st, snap = server.api("POST", "/snapshots", {"name": f"bench-{i}", "imageName": f"{FIXTURES}/{image}"})
    assert st == 200, snap
    while True:
        st, snap = server.api("GET", f"/snapshots/{snap['id']}")
        if snap["state"] in ("active", "error"):
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    assert snap["state"] == "active", snap
    assert server.api("DELETE", f"/snapshots/{snap['id']}")[0] == 200
    blobs = server.data_dir / "blobs" / "sha256"
    wait_until(lambda: not any(blobs.iterdir()) and not any((server.data_dir / "images").iterdir()), 30, 0.01, "gc")
    return elapsed


def skopeo_umoci(registry, work, image="bench:1.0"):
    host = registry.url.removeprefix("http://")
    layout, bundle = work / "layout", work / "bundle"
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{host}/{image}", f"oci:{layout}:bench"],
        check=True,
    )
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(work)
    work.mkdir()
    return elapsed


def main():
    with Scratch(prefix="cove-bench-", dir=None) as run:
        tmp, registry = run.tmp, run.registry
        mkimage.push_image(registry.url, "bench", ["1.0"], random_mb=IMAGE_MB, seed="bench")
        server = run.server = Cove(tmp / "cove", registry.url).start()
        work = tmp / "baseline"
        work.mkdir()
        # One warm-up each (page cache, connection setup), not counted.
        cove_cold_pull(server, "warmup")
        skopeo_umoci(registry, work)
        ours, base = [], []
        for i in range(RUNS):  # interleaved so both see the same machine conditions
            ours.append(cove_cold_pull(server, i))
            base.append(skopeo_umoci(registry, work))
        size = sum(p.stat().st_size for p in (tmp / "registry" / "data").rglob("*") if p.is_file())
        report(f"a local-registry image (~{size / 1e6:.1f} MB stored), {RUNS} cold runs each", ours, base, 1.0)
        if REAL:
            real_image(run, registry, work)


def real_image(run, registry, work):
    """A bootstrapped Debian image: built into the server's own registry by `cove image
    bootstrap`, copied to the local registry, then pulled cold by both, Cove on a fresh
    server (the first one keeps the bootstrapped image in its registry)."""
    server = run.server
    env = dict(os.environ, COVE_API_URL=server.api_url, COVE_API_KEY=API_KEY)
    out = subprocess.run([str(COVE_BIN), "--format", "json", "image", "bootstrap", "--profile", "minimal"],
                         env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        print(f"\nreal image: skipped, cove image bootstrap failed: {out.stderr[-500:]}")
        return
    src = json.loads(out.stdout)["image"]
    host = registry.url.removeprefix("http://")
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--src-creds", f"any:{API_KEY}", f"docker://{src}", f"docker://{host}/real:1.0"], check=True)
    server.cleanup()
    run.server = None
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/real:1.0"],
                                         check=True, capture_output=True, text=True).stdout)
    packed = sum(layer["size"] for layer in manifest["layers"])
    what = f"a real image ({src.rsplit('/', 1)[-1]}, {packed / 1e6:.0f} MB compressed), {REAL_RUNS} cold runs each"
    # Twice: on this machine's root filesystem, and on a journaled ext4 made for the run. The
    # root filesystem here is ext4 without a journal, where inode allocation skips every inode
    # deleted in the last 60 s (300 s more while its table block is dirty: the kernel's
    # `recently_deleted`), reading the inode table for each. Each cold run deletes the one
    # before (both tools), so the creates of both scan ~10,000 fresh deletions per layer, a
    # cost that grows over the runs and dominates both (perf: `find_get_block_common`,
    # `recently_deleted`). A journaled ext4, the usual host filesystem, has no such scan.
    report(what + ", on the root filesystem (ext4 without a journal)",
           *real_runs(registry, run.tmp / "cove-real", work), 0.5)
    with journaled_ext4(run.tmp / "journaled") as fs:
        fs_work = fs / "baseline"
        fs_work.mkdir()
        report(what + ", on a journaled ext4 (loop device, made for the run)",
               *real_runs(registry, fs / "cove-real", fs_work), 0.5)


def real_runs(registry, data_dir, work):
    """REAL_RUNS interleaved cold pulls of `real:1.0` by a fresh server in `data_dir` and by
    skopeo+umoci in `work`, after one warm-up each."""
    server = Cove(data_dir, registry.url).start()
    try:
        cove_cold_pull(server, "real-warmup", "real:1.0")
        skopeo_umoci(registry, work, "real:1.0")
        ours, base = [], []
        for i in range(REAL_RUNS):
            ours.append(cove_cold_pull(server, f"real-{i}", "real:1.0"))
            base.append(skopeo_umoci(registry, work, "real:1.0"))
        return ours, base
    finally:
        server.cleanup()


@contextlib.contextmanager
def journaled_ext4(mountpoint, size="8G"):
    """A sparse ext4 image with a journal (mkfs.ext4's defaults), loop-mounted at
    `mountpoint` (0711, as the scratch dir) for the block; unmounted and removed after."""
    image = mountpoint.with_suffix(".img")
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        mountpoint.chmod(0o711)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        image.unlink(missing_ok=True)


def report(what, ours, base, target):
    print(f"\nSnapshot from {what}")
    print(f"{'':<44} {'p50 ms':>9} {'p90 ms':>9} {'vs base':>8}")
    print(row("skopeo copy + umoci unpack (baseline)", base, width=44, digits=1))
    print(row("cove: POST /api/snapshots -> active", ours, base, width=44, digits=1))
    ratio = statistics.median(ours) / statistics.median(base)
    print(f"\nratio cove/baseline = {ratio:.2f} (target <= {target})")


if __name__ == "__main__":
    main()
