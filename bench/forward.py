#!/usr/bin/env python3
"""`make bench`, nodes: two Cove nodes on one throw-away PostgreSQL (initdb in a temp dir,
unix socket only, as `nobody` when root). A sandbox is created on node B; then
create -> first exec and exec `true` are timed through B itself (the owner) and through node
A, which forwards the toolbox call to B (`forward.rs`: the caller's key plus a node token).
The baseline is the owner's own figure in the same run."""

import glob
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import BUSYBOX, Cove, wait_until  # noqa: E402
from sandbox_start import post  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
EXEC_RUNS = int(os.environ.get("BENCH_EXEC_RUNS", "100"))


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise SystemExit("bench/forward.py: PostgreSQL not installed; run `make setup`")
    return Path(dirs[-1])


class Postgres:
    """A cluster in a temp dir, listening on a unix socket there only."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cove-bench-pg-"))
        self.pre = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            self.pre = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
        b = pg_bin()
        subprocess.run(self.pre + [str(b / "initdb"), "-D", str(self.dir / "data"), "-U", "cove", "--auth=trust",
                                   "--encoding=UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True,
                       cwd=self.dir)
        self.log = open(self.dir / "postgres.log", "w")
        self.proc = subprocess.Popen(self.pre + [str(b / "postgres"), "-D", str(self.dir / "data"), "-k", str(self.dir),
                                                 "-c", "listen_addresses=", "-c", "max_connections=200"],
                                     stdout=self.log, stderr=self.log, cwd=self.dir)
        wait_until(lambda: subprocess.run([str(b / "pg_isready"), "-h", str(self.dir)], capture_output=True).returncode == 0,
                   20, what="postgres")
        subprocess.run(self.pre + [str(b / "psql"), "-h", str(self.dir), "-U", "cove", "-d", "postgres", "-qc",
                                   "CREATE DATABASE bench"], check=True, capture_output=True, cwd=self.dir)
        self.url = f"postgres://cove@localhost:5432/bench?host={self.dir}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    pg = Postgres()
    nodes = []
    try:
        with Scratch(prefix="cove-bench-fw-") as run:
            mkimage.push_image(run.registry.url, "busybox", ["1"], seed="bench")
            common = ["--database-url", pg.url, "--warm-pool-size", "0", "--node-heartbeat", "1s"]
            b = Cove(run.tmp / "b", run.registry.url, extra=common + ["--default-snapshot", "bench"]).start()
            nodes.append(b)
            a = Cove(run.tmp / "a", run.registry.url, extra=common).start()
            nodes.append(a)
            snap = post(b.api_url + "/snapshots", {"name": "bench", "imageName": BUSYBOX})
            b.wait_state(snap["id"])
            via = {"owner (node B)": b, "forwarded by node A": a}
            first = {k: [] for k in via}
            execs = {k: [] for k in via}
            for i in range(RUNS):
                for name, node in via.items():
                    t = time.perf_counter()
                    sb = post(b.api_url + "/sandbox", {})
                    r = post(f"{node.url}/toolbox/{sb['id']}/process/execute", {"command": "true"})
                    first[name].append(time.perf_counter() - t)
                    assert r["exitCode"] == 0, r
                    b.api("DELETE", f"/sandbox/{sb['id']}")
            sb = post(b.api_url + "/sandbox", {})
            for name, node in via.items():
                for _ in range(EXEC_RUNS):
                    t = time.perf_counter()
                    post(f"{node.url}/toolbox/{sb['id']}/process/execute", {"command": "true"})
                    execs[name].append(time.perf_counter() - t)
            owner = "owner (node B)"
            print(f"\nTwo nodes on one PostgreSQL: sandboxes on node B, {RUNS} creates, {EXEC_RUNS} execs")
            print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
            for name in via:
                print(row(f"create on B -> first exec via {name}, ms", first[name], first[owner]))
            for name in via:
                print(row(f"exec `true` via {name}, ms", execs[name], execs[owner]))
            run.server = None
    finally:
        for n in nodes:
            n.cleanup()
        pg.stop()


if __name__ == "__main__":
    main()
