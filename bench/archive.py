#!/usr/bin/env python3
"""`make bench`, sandbox archive and restore: a stopped sandbox with 1 GiB written on its
disk (half random bytes, half zeros: `head -c 512M /dev/urandom` and `dd if=/dev/zero` of
512 MiB) is archived (`POST /sandbox/{id}/archive`: its sparse disk image zstd-compressed
into the content store, fsynced, the image deleted) and restored (`POST /sandbox/{id}/start`
of the archived sandbox, less a plain start of the stopped sandbox measured in the same
cycle). The baselines, in the same run on the same disk image: `tar --sparse -c | zstd -3
-T0` into a file then `sync` it (archive), and `zstd -d | tar --sparse -x` then `sync` the
image (restore). Runs interleave, so both see the same page cache and load."""

import os
import shutil
import statistics
import subprocess
import time

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, BUSYBOX, Cove  # noqa: E402
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig  # noqa: E402

RUNS = int(os.environ.get("BENCH_ARCHIVE_RUNS", "3"))
HALF_MIB = int(os.environ.get("BENCH_ARCHIVE_MIB", "1024")) // 2


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def sh(cmd):
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def main():
    with Scratch() as run:
        tmp, registry = run.tmp, run.registry
        mkimage.push_image(registry.url, "busybox", ["1"], seed="bench")  # BUSYBOX
        server = run.server = Cove(tmp / "d", registry.url, ["--warm-pool-size", "0"]).start()
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        daytona.snapshot.create(CreateSnapshotParams(name="bb", image=BUSYBOX))
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="bb", auto_stop_interval=0))
        r = sandbox.process.exec(
            f"head -c {HALF_MIB << 20} /dev/urandom > /root/random.bin"
            f" && dd if=/dev/zero of=/root/zeros.bin bs=1M count={HALF_MIB} 2>/dev/null"
            " && sync && sha256sum /root/random.bin",
            timeout=600,
        )
        assert r.exit_code == 0, r.result
        digest = r.result
        sandbox.stop()
        image = server.data_dir / "sandboxes" / sandbox.id / "disk.img"
        work = tmp / "baseline"

        def api(verb, want):
            st, body = server.api("POST", f"/sandbox/{sandbox.id}/{verb}")
            assert st == 200 and body["state"] == want, (verb, st, body)

        archive, restore, base_archive, base_restore, sizes = [], [], [], [], []
        for _ in range(RUNS):
            shutil.rmtree(work, ignore_errors=True)
            (work / "out").mkdir(parents=True)
            tarball = work / "disk.tar.zst"
            base_archive.append(
                timed(lambda: sh(f"tar --sparse -C {image.parent} -cf - disk.img | zstd -3 -T0 -q -o {tarball} && sync {tarball}"))
            )
            base_restore.append(
                timed(lambda: sh(f"zstd -dc {tarball} | tar --sparse -C {work / 'out'} -xf - && sync {work / 'out' / 'disk.img'}"))
            )
            base_size = tarball.stat().st_size
            shutil.rmtree(work, ignore_errors=True)
            archive.append(timed(lambda: api("archive", "archived")))
            st, rows = server.api("GET", f"/sandbox/{sandbox.id}")
            blobs = sorted((server.data_dir / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
            sizes.append((blobs[-1].stat().st_size, base_size))
            from_archive = timed(lambda: api("start", "started"))
            api("stop", "stopped")
            plain = timed(lambda: api("start", "started"))
            api("stop", "stopped")
            restore.append(from_archive - plain)
        api("start", "started")
        assert sandbox.process.exec("sha256sum /root/random.bin", timeout=120).result == digest, "restored byte-exactly"
        sandbox.delete()

        print(f"\nArchive and restore of a stopped sandbox with {2 * HALF_MIB} MiB written (half random, half zeros), {RUNS} runs")
        print(f"{'':<56} {'p50':>9} {'p90':>9} {'vs base':>8}")
        print(row("tar --sparse | zstd -3 -T0, sync (baseline archive), ms", base_archive, width=56))
        print(row("cove: archive (into the content store), ms", archive, base_archive, width=56))
        print(row("zstd -d | tar --sparse -x, sync (baseline restore), ms", base_restore, width=56))
        print(row("cove: restore (start of archived - start of stopped), ms", restore, base_restore, width=56))
        ours, theirs = sizes[-1]
        print(f"archive size: cove {ours / 2**20:.1f} MiB, baseline {theirs / 2**20:.1f} MiB")
        print(
            f"\ncove/baseline median: archive {statistics.median(archive) / statistics.median(base_archive):.2f}, "
            f"restore {statistics.median(restore) / statistics.median(base_restore):.2f}"
        )


if __name__ == "__main__":
    main()
