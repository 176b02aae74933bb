"""Sandbox lifecycle automation through the official SDKs: auto-stop (postponed by activity
and by running session commands), auto-archive, auto-delete, archive() and the start of an
archived sandbox, the interval setters. The server runs with `--lifecycle-minute-secs 1`, so
an interval of N "minutes" lasts N seconds."""

import sqlite3
import threading
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest
from daytona import SandboxState as S

from harness import API_KEY, BUSYBOX, wait_until
from tsrun import run_ts


@pytest.fixture
def life(cove):
    server = cove(extra=["--default-snapshot", "life", "--lifecycle-minute-secs", "1", "--warm-pool-size", "0"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="life", image=BUSYBOX))
    return server, daytona


def create(daytona, **kw):
    return daytona.create(CreateSandboxFromSnapshotParams(snapshot="life", **kw))


def state(sandbox):
    sandbox.refresh_data()
    return sandbox.state


def wait_state(sandbox, want, timeout=15):
    return wait_until(lambda: state(sandbox) == want, timeout, interval=0.1, what=f"sandbox {want}")


def archives(server):
    """The sandbox_lifecycle rows' archives (sandbox id → digest or None)."""
    with sqlite3.connect(server.data_dir / "cove.db") as db:
        return dict(db.execute("SELECT sandbox_id, archive_digest FROM sandbox_lifecycle"))


def test_an_idle_sandbox_stops_after_its_interval_and_refresh_activity_postpones_it(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=2)
    assert sandbox.auto_stop_interval == 2
    for _ in range(8):  # 4 s of refresh_activity, twice the interval
        sandbox.refresh_activity()
        time.sleep(0.5)
    assert state(sandbox) == S.STARTED, "refresh_activity keeps it started"
    sandbox.process.exec("true")
    seen = set()
    t0 = time.monotonic()
    wait_until(lambda: seen.add(state(sandbox)) or sandbox.state == S.STOPPED, 15, interval=0.05, what="auto-stop")
    assert time.monotonic() - t0 >= 1.5, "not before the interval"
    assert seen <= {S.STARTED, S.STOPPING, S.STOPPED}, seen
    sandbox.start()
    assert sandbox.process.exec("echo back").result == "back\n"
    sandbox.delete()


def test_a_running_async_session_command_keeps_the_sandbox_started(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=1)
    sandbox.process.create_session("long")
    sandbox.process.execute_session_command("long", SessionExecuteRequest(command="sleep 5", run_async=True))
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert state(sandbox) == S.STARTED, "a running command is activity"
        time.sleep(0.25)
    wait_state(sandbox, S.STOPPED, timeout=10)
    sandbox.delete()


def test_the_interval_setters_validate_and_show_in_the_sandbox(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=0)
    assert (sandbox.auto_stop_interval, sandbox.auto_archive_interval, sandbox.auto_delete_interval) == (0, 10080, -1)
    sandbox.set_autostop_interval(30)
    sandbox.set_auto_archive_interval(0)
    sandbox.set_auto_delete_interval(120)
    sandbox.refresh_data()
    assert (sandbox.auto_stop_interval, sandbox.auto_archive_interval, sandbox.auto_delete_interval) == (30, 43200, 120)
    for path, field in [
        ("autodelete/-2", "autoDeleteInterval"),
        ("autostop/-1", "autoStopInterval"),
        ("autoarchive/-5", "autoArchiveInterval"),
        ("autostop/soon", "autoStopInterval"),
    ]:
        st, body = server.api("POST", f"/sandbox/{sandbox.id}/{path}")
        assert st == 400 and field in body["message"], (path, st, body)
    st, body = server.api("POST", "/sandbox", {"snapshot": "life", "autoDeleteInterval": -3})
    assert st == 400 and "autoDeleteInterval" in body["message"]
    st, _ = server.api("POST", f"/sandbox/{sandbox.id}/last-activity")
    assert st == 201
    default = create(daytona)
    assert default.auto_stop_interval == 15, "Daytona's default"
    default.delete()
    sandbox.delete()


def test_archive_then_start_brings_every_file_back_byte_for_byte(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=0)
    r = sandbox.process.exec(
        "head -c 6291456 /dev/urandom > /root/random.bin && printf 'small file\\n' > /root/small.txt"
        " && sha256sum /root/random.bin /root/small.txt"
    )
    assert r.exit_code == 0, r.result
    before = r.result
    st, body = server.api("POST", f"/sandbox/{sandbox.id}/archive")
    assert st == 400 and "started" in body["message"], "only a stopped sandbox is archived"
    sandbox.stop()
    sandbox.archive()
    assert sandbox.state == S.ARCHIVED
    bundle = server.data_dir / "sandboxes" / sandbox.id
    assert not (bundle / "disk.img").exists(), "the disk image is freed"
    digest = archives(server)[sandbox.id]
    assert digest and (server.data_dir / "blobs" / "sha256" / digest.split(":")[1]).is_file()
    assert server.api("POST", f"/sandbox/{sandbox.id}/stop")[1]["state"] == "archived", "stop is a no-op"
    sandbox.archive()  # again: a no-op
    sandbox.start()
    assert sandbox.state == S.STARTED
    assert sandbox.process.exec("sha256sum /root/random.bin /root/small.txt").result == before
    assert sandbox.process.exec("cat /root/small.txt").result == "small file\n"
    assert archives(server)[sandbox.id] is None, "the archive is released after the restore"
    sandbox.delete()


def test_a_stopped_sandbox_is_auto_archived_then_auto_deleted(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=0, auto_archive_interval=1)
    sandbox.process.exec("echo kept > /root/kept.txt")
    sandbox.stop()
    wait_state(sandbox, S.ARCHIVED)
    assert not (server.data_dir / "sandboxes" / sandbox.id / "disk.img").exists()
    digest = archives(server)[sandbox.id].split(":")[1]
    sandbox.set_auto_delete_interval(1)
    wait_until(lambda: server.api("GET", f"/sandbox/{sandbox.id}")[0] == 404, 15, what="auto-delete")
    wait_until(
        lambda: not (server.data_dir / "blobs" / "sha256" / digest).exists(), 15, what="the archive's blob to be collected"
    )


def test_auto_delete_removes_a_sandbox_stopped_for_its_interval_and_zero_deletes_at_stop(life):
    server, daytona = life
    later = create(daytona, auto_stop_interval=0, auto_delete_interval=2)
    later.stop()
    time.sleep(1)
    assert server.api("GET", f"/sandbox/{later.id}")[0] == 200, "not before its interval"
    wait_until(lambda: server.api("GET", f"/sandbox/{later.id}")[0] == 404, 15, what="auto-delete")
    ephemeral = create(daytona, ephemeral=True, auto_stop_interval=1)
    assert ephemeral.auto_delete_interval == 0
    # Auto-stopped after a second of idleness, and deleted rather than stopped.
    wait_until(lambda: server.api("GET", f"/sandbox/{ephemeral.id}")[0] == 404, 15, what="ephemeral auto-stop")


def test_an_archive_killed_midway_leaves_the_disk_and_the_files(life):
    server, daytona = life
    sandbox = create(daytona, auto_stop_interval=0)
    r = sandbox.process.exec("head -c 268435456 /dev/urandom > /root/big.bin && sha256sum /root/big.bin", timeout=120)
    assert r.exit_code == 0, r.result
    before = r.result
    sandbox.stop()
    def archive():
        try:
            server.api("POST", f"/sandbox/{sandbox.id}/archive")
        except OSError:
            pass  # the server is killed under the request

    t = threading.Thread(target=archive, daemon=True)
    t.start()
    wait_until(lambda: server.api("GET", f"/sandbox/{sandbox.id}")[1]["state"] != "stopped", 10, interval=0.01)
    server.kill()  # SIGKILL while archiving
    server.start()
    after = server.api("GET", f"/sandbox/{sandbox.id}")[1]["state"]
    assert after in ("stopped", "archived"), after
    if after == "stopped":
        assert (server.data_dir / "sandboxes" / sandbox.id / "disk.img").is_file(), "the disk is intact"
    sandbox.start()
    assert sandbox.process.exec("sha256sum /root/big.bin", timeout=60).result == before
    sandbox.delete()


def test_the_typescript_sdk_sets_intervals_refreshes_archives_and_starts_again(life):
    server, daytona = life
    r = run_ts("lifecycle.mjs", server, timeout=120)
    assert r["intervals"] == [7, 9, 3]
    assert r["archived"] == "archived"
    assert r["started"] == "started"
    assert r["file"] == "ts kept\n"
    assert r["badInterval"] is True
