#!/usr/bin/env python3
"""`make bench`, preview proxy: download throughput of a 64 MiB file that a sandbox serves
with `python3 -m http.server`, through the server's preview proxy
(`{port}-{id}.localhost:{api port}`, with the preview token) beside the same download
straight from the sandbox's bridge address (the baseline), in the same run."""

import http.client
import os
import statistics
import time

from benchenv import Scratch, row  # release binaries, fixtures on the path
import mkimage  # noqa: E402
from harness import API_KEY, BUSYBOX_PYTHON, Cove, wait_until  # noqa: E402
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest  # noqa: E402

RUNS = int(os.environ.get("BENCH_PREVIEW_RUNS", "5"))
SIZE = 64 << 20
PORT = 8000
CHUNK = 1 << 20

SANDBOX_IP = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.connect(('10.255.255.255', 1)); print(s.getsockname()[0])"
)


def download(addr, port, host, headers=None):
    """Seconds to read /big.bin from addr:port with `host` as the Host header."""
    conn = http.client.HTTPConnection(addr, port, timeout=60)
    t0 = time.perf_counter()
    conn.request("GET", "/big.bin", headers={"Host": host, **(headers or {})})
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read(300))
    n = 0
    while chunk := r.read(CHUNK):
        n += len(chunk)
    dt = time.perf_counter() - t0
    conn.close()
    assert n == SIZE, n
    return dt


def mbps(seconds):
    """Downloads as MB/s (10^6 bytes), for `row` with unit != "ms"."""
    return [SIZE / s / 1e6 for s in seconds]


def main():
    with Scratch() as run:
        tmp, registry = run.tmp, run.registry
        mkimage.push_image(registry.url, "busybox-python", ["1"], python=True, seed="python")  # BUSYBOX_PYTHON
        server = run.server = Cove(tmp / "d", registry.url).start()
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
        r = sandbox.process.exec(
            f"mkdir -p /tmp/www && python3 -c \"import os; open('/tmp/www/big.bin', 'wb').write(os.urandom({SIZE}))\"",
            timeout=120,
        )
        assert r.exit_code == 0, r.result
        sandbox.process.create_session("web")
        sandbox.process.execute_session_command(
            "web", SessionExecuteRequest(command=f"python3 -m http.server {PORT} --directory /tmp/www", run_async=True)
        )
        ip = server.api("GET", f"/sandbox/{sandbox.id}")[1].get("ip") or sandbox.process.exec(
            f'python3 -c "{SANDBOX_IP}"'
        ).result.strip()
        link = sandbox.get_preview_link(PORT)
        host = link.url.split("://", 1)[1]
        auth = {"X-Daytona-Preview-Token": link.token}

        def up():
            try:
                return download(ip, PORT, f"{ip}:{PORT}")
            except (OSError, AssertionError):
                return None

        wait_until(up, 30, interval=0.2, what="the sandbox's http.server")
        download("127.0.0.1", server.port, host, auth)  # warm-up through the proxy, not counted

        direct, proxied = [], []
        for _ in range(RUNS):  # interleaved, so both see the same page cache and load
            direct.append(download(ip, PORT, f"{ip}:{PORT}"))
            proxied.append(download("127.0.0.1", server.port, host, auth))
        sandbox.delete()

        d, p = mbps(direct), mbps(proxied)
        print(f"\nPreview proxy: {RUNS} downloads of a {SIZE >> 20} MiB file from `python3 -m http.server` in a sandbox")
        print(f"{'':<52} {'best':>9} {'median':>9} {'vs base':>8}")
        print(f"{'direct to the sandbox IP from the host (baseline), MB/s':<52} {max(d):9.1f} {statistics.median(d):9.1f}    1.00x")
        ratio = statistics.median(p) / statistics.median(d)
        print(f"{'cove: via the preview proxy (host name + token), MB/s':<52} {max(p):9.1f} {statistics.median(p):9.1f} {ratio:7.2f}x")
        print(f"{'':<52} {'p50':>9} {'p90':>9} {'vs base':>8}")
        print(row("  per download, direct (baseline), ms", direct))
        print(row("  per download, via the proxy, ms", proxied, direct))
        print(f"\nproxy/direct median throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
