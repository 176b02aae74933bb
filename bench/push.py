#!/usr/bin/env python3
"""`make bench`, pushes: MB/s of a local image (an OCI layout with a 48 MB layer) into Cove's
built-in registry, beside `skopeo copy` of layouts of the same size in the same run. Rows: skopeo →
Debian's docker-registry (baseline), skopeo → Cove's /v2/, `cove snapshot push oci:DIR` (the
push as the CLI reports it: reading the layout, push credentials, blobs, manifest; not the
snapshot it then makes), and both again into repositories that already hold every blob
(HEAD-skipped). The cove rows' ratio is to skopeo into Cove's /v2/ in the same run (goal:
at least 1.0x); skopeo's times include its process start. Every fresh push has a layout of its
own (different random layers): skopeo remembers where it pushed a blob and mounts it from
that repository instead of uploading it, which would time a mount, not a push."""

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
        def make_layout(name):
            mkimage.push_image(src_reg.url, name, ["1.0"], random_mb=48, seed=f"pushbench-{name}")
            layout = tmp / name
            subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host(src_reg.url)}/{name}:1.0",
                            f"oci:{layout}:1.0"], check=True, capture_output=True)
            return layout

        # skopeo's (docker-registry, then Cove's /v2/) and the CLI's, one per run.
        for_skopeo = [make_layout(f"skopeo{i}") for i in range(RUNS)]
        for_cli = [make_layout(f"cli{i}") for i in range(RUNS)]
        sizes = {sum(p.stat().st_size for p in (lay / "blobs").rglob("*") if p.is_file()) for lay in for_skopeo + for_cli}
        size = statistics.median(sizes)
        assert max(sizes) - min(sizes) < size / 100, sizes
        server = run.server = Cove(tmp / "d", src_reg.url).start()
        org = server.api("GET", "/object-storage/push-access")[1]["organizationId"]

        def skopeo_to(layout, dest, creds=None):
            args = ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:1.0", dest]
            if creds:
                args[2:2] = ["--dest-creds", creds]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            return time.perf_counter() - t0

        base = [skopeo_to(lay, f"docker://{host(dst_reg.url)}/bench/big{i}:1.0") for i, lay in enumerate(for_skopeo)]
        cove_skopeo = [skopeo_to(lay, f"docker://{host(server.url)}/{org}/big{i}:1.0", f"bench:{API_KEY}")
                       for i, lay in enumerate(for_skopeo)]
        env = dict(os.environ, COVE_API_URL=server.api_url, COVE_API_KEY=API_KEY)

        def cli_push(layout, name, skipped):
            out = subprocess.run([str(COVE_BIN), "snapshot", "push", f"oci:{layout}:1.0", "--name", name],
                                 env=env, capture_output=True, text=True, check=True)
            m = re.search(r"Pushed ([\d.]+) MB in ([\d.]+) s .*?(\d+) of (\d+) blobs were already", out.stderr)
            assert m and (m.group(3) == m.group(4)) == skipped, out.stderr
            return float(m.group(2))

        cli = [cli_push(lay, f"cli{i}", False) for i, lay in enumerate(for_cli)]
        # Every blob already there: skopeo into the repositories it filled above; the CLI into
        # repositories skopeo filled first (untimed).
        skopeo_again = [skopeo_to(lay, f"docker://{host(server.url)}/{org}/big{i}:1.0", f"bench:{API_KEY}")
                        for i, lay in enumerate(for_skopeo)]
        for i, lay in enumerate(for_cli):
            skopeo_to(lay, f"docker://{host(server.url)}/{org}/again{i}:1.0", f"bench:{API_KEY}")
        cli_again = [cli_push(lay, f"again{i}", True) for i, lay in enumerate(for_cli)]
        print(f"\nPushes of an OCI layout of {size / 1e6:.1f} MB, {RUNS} runs each (MB/s; higher is better)")
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'ratio':>8}")
        print(row("skopeo copy -> Debian docker-registry (baseline)", mbps(size, base), unit="MB/s"))
        print(row("skopeo copy -> cove /v2/ (vs baseline)", mbps(size, cove_skopeo), mbps(size, base), unit="MB/s"))
        print(row("cove snapshot push (vs skopeo -> cove /v2/)", mbps(size, cli), mbps(size, cove_skopeo), unit="MB/s"))
        print(row("skopeo copy -> cove /v2/, blobs exist", mbps(size, skopeo_again), unit="MB/s"))
        print(row("cove snapshot push, blobs exist (vs skopeo)", mbps(size, cli_again), mbps(size, skopeo_again),
                  unit="MB/s"))
        fresh = statistics.median(cove_skopeo) / statistics.median(cli)
        again = statistics.median(skopeo_again) / statistics.median(cli_again)
        print(f"\ntarget: cove snapshot push >= 1.0x skopeo copy into cove's /v2/: {fresh:.2f}x "
              f"({statistics.median(mbps(size, cli)):.0f} vs {statistics.median(mbps(size, cove_skopeo)):.0f} MB/s), "
              f"{again:.2f}x with every blob already there -> {'met' if min(fresh, again) >= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
