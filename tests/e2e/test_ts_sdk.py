"""The seed's k3s walk-through (with harmless commands) through the official TypeScript SDK
`@daytona/sdk`, unmodified, from npm."""

from daytona import CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, BUSYBOX
from tsrun import run_ts


def test_the_typescript_sdk_runs_the_seed_k3s_flow(cove):
    server = cove(extra=["--default-snapshot", "k3s-snap"])
    Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).snapshot.create(
        CreateSnapshotParams(name="k3s-snap", image=BUSYBOX)
    )
    r = run_ts("seed_k3s_flow.mjs", server, timeout=120)
    assert r["exitCode"] == 3
    assert r["result"] == "installing\nwarn\n"
    assert r["asyncReturnedMs"] < 1500, "async: true must answer before the command ends"
    assert "tick3" in r["logs"]
    assert r["streamed"] == {"out": "out1\nout2\n", "err": "err1\n"}
    assert r["unknownSession"] is True
    assert r["pods"] == "services: {}\n"
    assert server.api("GET", "/sandbox")[1]["items"] == []
