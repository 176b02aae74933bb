#!/usr/bin/env python3
"""`make bench`, Docker-in-Docker (issue 17): a sandbox of the `cove-docker` general snapshot
(`cove image bootstrap --profile docker --general`; the build is cached under
/var/cache/cove/bootstrap) from the create request to `docker info` answering inside it, cold
(no warm pool: a container-engine sandbox is made by runc with its cgroups handed over, then
dockerd starts) and warm (a prepared sandbox, dockerd starting at release). The baseline is
`docker info` answering in the same sandbox once the daemon is up (what the client's first
call costs either way). Its 10 GiB disks are sparse here (`--sandbox-disks sparse`) so that a
2-core test machine's disk holds the pools. Skipped when no Debian mirror answers (the image
cannot be built)."""

import os
import subprocess
import sys
import time

from benchenv import Scratch, row
from harness import API_KEY, COVE_BIN, Cove

from sandbox_start import post  # noqa: E402  (kept-alive client)

RUNS = int(os.environ.get("BENCH_DIND_RUNS", "5"))


def until_docker_answers(server, sid, deadline_s=120):
    t0 = time.perf_counter()
    while True:
        r = post(f"{server.url}/toolbox/{sid}/process/execute",
                 {"command": "docker info --format '{{.ServerVersion}}'", "timeout": 30})
        if r["exitCode"] == 0:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > deadline_s:
            raise RuntimeError(f"docker info never answered: {r}")
        time.sleep(0.05)


def measure(server, warm):
    totals, infos = [], []
    for _ in range(RUNS):
        time.sleep(1.0 if warm else 0.2)  # a warm pool refills meanwhile
        t0 = time.perf_counter()
        sb = post(server.api_url + "/sandbox", {"snapshot": "cove-docker"})
        until_docker_answers(server, sb["id"])
        totals.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        post(f"{server.url}/toolbox/{sb['id']}/process/execute", {"command": "docker info --format '{{.ServerVersion}}'"})
        infos.append(time.perf_counter() - t1)
        server.api("DELETE", f"/sandbox/{sb['id']}")
    return totals, infos


def main():
    with Scratch(prefix="cvd") as run:
        cold = run.server = Cove(run.tmp / "d", run.registry.url, extra=["--warm-pool-size", "0", "--sandbox-disks", "sparse"]).start()
        env = dict(os.environ, COVE_API_URL=cold.api_url, COVE_API_KEY=API_KEY)
        b = subprocess.run([str(COVE_BIN), "--format", "json", "image", "bootstrap", "--profile", "docker", "--general"],
                           env=env, capture_output=True, text=True, timeout=1800)
        if b.returncode != 0:
            print(f"docker-in-docker: skipped, the docker image could not be bootstrapped:\n{b.stderr[-1500:]}")
            return
        totals, infos = measure(cold, warm=False)
        print(f"\nDocker-in-Docker: create -> `docker info` answering inside, {RUNS} sandboxes of cove-docker")
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
        print(row("docker info in a running engine (baseline), ms", infos))
        print(row("create -> docker info answering, no warm pool, ms", totals, infos))
    with Scratch(prefix="cvd") as run:
        warm = run.server = Cove(run.tmp / "d", run.registry.url, extra=["--sandbox-disks", "sparse"]).start()
        env = dict(os.environ, COVE_API_URL=warm.api_url, COVE_API_KEY=API_KEY)
        subprocess.run([str(COVE_BIN), "image", "bootstrap", "--profile", "docker", "--general"], env=env,
                       capture_output=True, text=True, timeout=1800, check=True)
        post(warm.api_url + "/sandbox", {"snapshot": "cove-docker"})  # the pool learns the key
        totals, infos = measure(warm, warm=True)
        print(row("create -> docker info answering, warm pool, ms", totals, infos))


if __name__ == "__main__":
    main()
