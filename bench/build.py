#!/usr/bin/env python3
"""`make bench`, builds: a small multi-step Dockerfile (three RUN steps and one COPY of a
small context file on the busybox fixture `fixtures.cove.test/busybox:1`) built through Cove's API, beside
`buildah bud --layers` of the same Dockerfile and context measured in the same run.

The Dockerfile is the one the official Python SDK generates for
`Image.base(BUSYBOX).run_commands(f"echo run-{i} …").add_local_file(…).run_commands(…)`,
and its context is uploaded by the SDK itself to Cove's HTTPS S3 endpoint (the server's CA is
trusted for the run with `cove tls trust` and removed again at the end).

- cold: each run's Dockerfile is unique (its first RUN writes `run-<i>`), so every step misses
  the step cache, on one server whose data dir outlives the runs. The base image is already
  pulled on both sides (Cove: a warm-up build of a different Dockerfile through the SDK;
  buildah: `buildah pull` before timing), so both measure the build, not the pull.
- cached: the same Dockerfile and context again under a new snapshot name (identical
  buildInfo: Cove reuses the image; buildah answers every step from its layer cache).
- last step changed: that Dockerfile with only its last RUN changed (the other steps cached).

Cove's figure is `POST /api/snapshots` (buildInfo with the SDK's context hashes) → `active`
seen by polling every 2 ms: the SDK's own `snapshot.create` polls once a second, which
would hide what is measured. The context upload is timed on its own.
"""

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, BUSYBOX, COVE_BIN, FIXTURES, Cove  # noqa: E402

RUNS = int(os.environ.get("BENCH_BUILD_RUNS", "7"))


def add_history(registry_url, repo, tag):
    """Gives the fixture image a `history` entry per layer. mkimage's configs have none, which
    OCI allows and Cove accepts, but buildah 1.28 refuses to commit a `--layers` step on such
    a base ("history lists 2 non-empty layers, but we have 4 layers on disk"). Both sides
    build on this same image."""
    reg = mkimage.Registry(registry_url)
    mt = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(reg.req("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": mt}).read())
    config = json.loads(reg.req("GET", f"/v2/{repo}/blobs/{manifest['config']['digest']}").read())
    config["history"] = [{"created_by": f"mkimage layer {n + 1}"} for n in range(len(manifest["layers"]))]
    blob = json.dumps(config, sort_keys=True).encode()
    reg.push_blob(repo, blob)
    manifest["config"].update(digest=mkimage.sha(blob), size=len(blob))
    reg.push_manifest(repo, tag, json.dumps(manifest).encode(), mt)


def image(ctx_file, i, last="echo done > /srv/done"):
    from daytona import Image

    return (
        Image.base(BUSYBOX)
        .run_commands(f"echo run-{i} > /run-id")
        .add_local_file(str(ctx_file), "/app/a.txt")
        .run_commands("mkdir -p /srv && cp /app/a.txt /srv/a.txt && sha256sum /srv/a.txt > /srv/a.sum", last)
    )


def changed(ctx_file, i):
    return image(ctx_file, i, last="echo changed > /srv/done")


class CoveSide:
    def __init__(self, server, daytona):
        from daytona._sync.snapshot import SnapshotService

        self.server, self.daytona, self.service = server, daytona, SnapshotService
        self.uploads = []

    def context(self, img):
        t0 = time.perf_counter()
        hashes = self.service.process_image_context(self.daytona._object_storage_api, img)
        self.uploads.append(time.perf_counter() - t0)
        return hashes

    def build(self, name, img):
        """Seconds from POST /api/snapshots to `active`, and the snapshot."""
        body = {"name": name, "buildInfo": {"dockerfileContent": img.dockerfile(), "contextHashes": self.context(img)}}
        t0 = time.perf_counter()
        st, snap = self.server.api("POST", "/snapshots", body)
        assert st == 200, snap
        while snap["state"] not in ("active", "error", "build_failed"):
            time.sleep(0.002)
            st, snap = self.server.api("GET", f"/snapshots/{snap['id']}")
        elapsed = time.perf_counter() - t0
        assert snap["state"] == "active", snap
        return elapsed, snap

    def cache_hits(self, snap_id):
        import urllib.request

        st, body = self.server.api("GET", f"/snapshots/{snap_id}/build-logs-url")
        req = urllib.request.Request(body["url"] + "?follow=false", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode().count("Using cache")


class Buildah:
    """`buildah bud --layers` (Docker's default: one cached layer per step) with private
    storage under the run's temporary directory and the local registry as fixtures.cove.test."""

    def __init__(self, work, registry_url):
        self.work = work
        work.mkdir()
        conf = work / "registries.conf"
        host = registry_url.split("://", 1)[1]
        conf.write_text(f'[[registry]]\nprefix = "{FIXTURES}"\nlocation = "{host}"\ninsecure = true\n')
        self.env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf))
        self.driver = None
        self.why = None

    def cmd(self, *args, driver=None):
        return ["buildah", "--root", str(self.work / "root"), "--runroot", str(self.work / "run"),
                "--storage-driver", driver or self.driver, *args]

    def run(self, *args, driver=None):
        return subprocess.run(self.cmd(*args, driver=driver), env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    def setup(self, ctx_file, registry_url):
        if not shutil.which("buildah"):
            self.why = "buildah is not installed (make bench-setup installs Debian's)"
            return False
        host = registry_url.split("://", 1)[1]
        errors = []
        for driver in ("overlay", "vfs"):
            out = self.run("pull", "-q", "--tls-verify=false", f"docker://{host}/busybox:1", driver=driver)
            if out.returncode == 0:
                out = self.run("tag", f"{host}/busybox:1", BUSYBOX, driver=driver)
            if out.returncode == 0:
                self.driver = driver
                try:
                    self.bud("probe", image(ctx_file, "probe").dockerfile(), ctx_file)
                    return True
                except RuntimeError as e:
                    errors.append(f"{driver}: {e}")
            else:
                errors.append(f"{driver}: {out.stderr.strip()[-300:]}")
            self.cleanup(driver)
        self.why = "buildah cannot build here: " + " | ".join(errors)
        return False

    def bud(self, tag, dockerfile, ctx_file):
        """Seconds for `buildah bud` of `dockerfile` with the SDK's archive layout as context."""
        ctx = self.work / "ctx"
        dest = ctx / str(ctx_file).lstrip("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ctx_file, dest)
        df = self.work / f"Dockerfile.{tag}"
        df.write_text(dockerfile)
        t0 = time.perf_counter()
        out = self.run("bud", "-q", "--layers", "--pull=false", "--isolation", "chroot", "-f", str(df), "-t", tag, str(ctx))
        elapsed = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-400:])
        return elapsed

    def cleanup(self, driver=None):
        driver = driver or self.driver
        if not driver or not shutil.which("buildah"):
            return
        self.run("rm", "-a", driver=driver)
        self.run("rmi", "-a", "-f", driver=driver)
        mounts = [l.split()[1] for l in Path("/proc/mounts").read_text().splitlines() if str(self.work) in l.split()[1]]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.work / "root", ignore_errors=True)
        shutil.rmtree(self.work / "run", ignore_errors=True)


def main():
    from daytona import CreateSnapshotParams, Daytona, DaytonaConfig, Image

    with Scratch(prefix="cvbb") as run:
        tmp, registry = run.tmp, run.registry
        data = tmp / "d"
        buildah = Buildah(tmp / "buildah", registry.url)
        run.at_exit(buildah.cleanup)
        mkimage.push_image(registry.url, "busybox", ["1"], seed="bench")  # BUSYBOX
        add_history(registry.url, "busybox", "1")
        ctx_file = tmp / "ctx" / "app.txt"
        ctx_file.parent.mkdir()
        ctx_file.write_text("".join(f"line {n} of the build context\n" for n in range(200)))

        out = subprocess.run([str(COVE_BIN), "tls", "trust", "--data-dir", str(data)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        run.at_exit(lambda: subprocess.run([str(COVE_BIN), "tls", "untrust", "--data-dir", str(data)], capture_output=True))
        server = run.server = Cove(data, registry.url).start()
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        cove = CoveSide(server, daytona)

        cove.context(image(ctx_file, "upload"))  # the first, real upload of the context
        first_upload = cove.uploads.pop()
        # Warm-up, not counted: the SDK end to end (its context check, build, 1 s polling);
        # pulls the base image.
        t0 = time.perf_counter()
        warm = daytona.snapshot.create(CreateSnapshotParams(
            name="warm-up", image=Image.base(BUSYBOX).add_local_file(str(ctx_file), "/warm.txt").run_commands("echo warm")))
        warm_s = time.perf_counter() - t0
        assert warm.state == "active", warm

        have_buildah = buildah.setup(ctx_file, registry.url)

        cold, cached, last, b_cold, b_cached, b_last, hits = [], [], [], [], [], [], []
        for i in range(RUNS):
            img = image(ctx_file, i)
            t, snap = cove.build(f"cold-{i}", img)
            cold.append(t)
            t, again = cove.build(f"cached-{i}", img)
            cached.append(t)
            assert again["ref"] == snap["ref"], "identical buildInfo must reuse the image"
            t, ch = cove.build(f"last-{i}", changed(ctx_file, i))
            last.append(t)
            assert ch["ref"] != snap["ref"]
            if i == 0:
                hits.append(cove.cache_hits(ch["id"]))
            if have_buildah:
                b_cold.append(buildah.bud(f"cold-{i}", img.dockerfile(), ctx_file))
                b_cached.append(buildah.bud(f"cached-{i}", img.dockerfile(), ctx_file))
                b_last.append(buildah.bud(f"last-{i}", changed(ctx_file, i).dockerfile(), ctx_file))

        print(f"\nDockerfile builds (3 RUN + 1 COPY of a {ctx_file.stat().st_size} B context file on "
              f"{BUSYBOX}), {RUNS} runs each; cold = unique first RUN per run, base image already pulled")
        print("Dockerfile (run 0):\n  " + image(ctx_file, 0).dockerfile().strip().replace("\n", "\n  "))
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
        if have_buildah:
            print(row(f"buildah bud --layers, cold ({buildah.driver}, chroot), ms", b_cold))
            print(row("cove: POST /api/snapshots -> active, cold, ms", cold, b_cold))
            print(row("buildah bud --layers, same Dockerfile again, ms", b_cached))
            print(row("cove: same buildInfo, new name (image reused), ms", cached, b_cached))
            print(row("buildah bud --layers, only the last RUN changed, ms", b_last))
            print(row("cove: only the last RUN changed, ms", last, b_last))
        else:
            print(f"buildah baseline skipped: {buildah.why}")
            print(row("cove: POST /api/snapshots -> active, cold, ms", cold))
            print(row("cove: same buildInfo, new name (image reused), ms", cached))
            print(row("cove: only the last RUN changed, ms", last))
        print(row("SDK context upload, already stored (a list), ms", cove.uploads))
        print(f"first context upload through the SDK (HTTPS S3): {first_upload * 1000:.1f} ms; warm-up "
              f"snapshot.create through the SDK (base pull, 1 s polls): {warm_s:.2f} s; steps answered "
              f"from cache when only the last RUN changed: {hits[0]} of 3")
        ratio = f"{statistics.median(cold) / statistics.median(b_cold):.2f}x" if have_buildah else "no baseline"
        print(f"\ntargets: cold <= buildah ({ratio}), cached <= 0.5 s ({statistics.median(cached):.3f} s)")


if __name__ == "__main__":
    main()
