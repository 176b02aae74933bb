#!/usr/bin/env python3
"""`make bench`, pushes: MB/s of a local image (an OCI layout with a 48 MB layer) into Cove's
built-in registry, beside `skopeo copy` of the same layout into Debian's docker-registry in
the same run. Rows: skopeo → docker-registry (baseline), skopeo → Cove's /v2/, and
`cove snapshot push oci:DIR` (push only, as the CLI reports it)."""

import os
import re
import statistics
import subprocess
import time

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, COVE_BIN, Cove  # noqa: E402

RUNS = int(os.environ.get("BENCH_PUSH_RUNS", "5"))


def host(url):
    return url.split("://", 1)[1]


def mbps(size, secs):
    return [size / 1e6 / s for s in secs]


def main():
    with Scratch(prefix="cvp", registries=("src", "dst")) as run:
        tmp, (src_reg, dst_reg) = run.tmp, run.registries
        mkimage.push_image(src_reg.url, "big", ["1.0"], random_mb=48, seed="pushbench")
        layout = tmp / "layout"
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host(src_reg.url)}/big:1.0",
                        f"oci:{layout}:1.0"], check=True, capture_output=True)
        size = sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())
        server = run.server = Cove(tmp / "d", src_reg.url).start()
        org = server.api("GET", "/object-storage/push-access")[1]["organizationId"]

        def skopeo_to(dest, creds=None):
            args = ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:1.0", dest]
            if creds:
                args[2:2] = ["--dest-creds", creds]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            return time.perf_counter() - t0

        base = [skopeo_to(f"docker://{host(dst_reg.url)}/bench/big{i}:1.0") for i in range(RUNS)]
        cove_skopeo = [skopeo_to(f"docker://{host(server.url)}/{org}/big{i}:1.0", f"bench:{API_KEY}") for i in range(RUNS)]
        env = dict(os.environ, COVE_API_URL=server.api_url, COVE_API_KEY=API_KEY)
        cli = []
        for i in range(RUNS):
            out = subprocess.run([str(COVE_BIN), "snapshot", "push", f"oci:{layout}:1.0", "--name", f"cli{i}"],
                                 env=env, capture_output=True, text=True, check=True)
            m = re.search(r"Pushed ([\d.]+) MB in ([\d.]+) s", out.stderr)
            cli.append(float(m.group(2)))
        print(f"\nPushes of an OCI layout of {size / 1e6:.1f} MB, {RUNS} runs each (MB/s; higher is better)")
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
        print(row("skopeo copy -> Debian docker-registry (baseline)", mbps(size, base), unit="MB/s"))
        print(row("skopeo copy -> cove /v2/", mbps(size, cove_skopeo), mbps(size, base), unit="MB/s"))
        print(row("cove snapshot push oci:DIR (push part)", mbps(size, cli), mbps(size, base), unit="MB/s"))
        print(f"\ntarget: report only (push {statistics.median(mbps(size, cli)):.0f} MB/s vs "
              f"skopeo into docker-registry {statistics.median(mbps(size, base)):.0f} MB/s)")


if __name__ == "__main__":
    main()
