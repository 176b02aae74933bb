"""A full data disk (issue 13, items 2 and 3): sandbox disks are allocated in full at create,
so one sandbox filling its disk never hurts another; a create that cannot be guaranteed is
refused with the numbers; with the data filesystem full, deletes still work and errors say
the disk is full and where. The server's data dir is a small loop-mounted ext4 (root)."""

import json
import subprocess

import pytest

from harness import BUSYBOX, wait_until
from v2client import V2, sha

FS_MIB = 3072


@pytest.fixture
def small_fs(short_tmp):
    img, mnt = short_tmp / "fs.img", short_tmp / "fs"
    subprocess.run(["truncate", "-s", f"{FS_MIB}M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    mnt.chmod(0o711)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def make_snapshot(server):
    st, body = server.api("POST", "/snapshots", {"name": "small", "imageName": BUSYBOX, "disk": 1, "cpu": 1, "memory": 1})
    assert st == 200, body
    assert server.wait_state("small")["state"] == "active"


def create(server):
    return server.api("POST", "/sandbox", {"snapshot": "small"})


def execute(server, sid, command, timeout=120):
    from urllib.request import Request, urlopen

    req = Request(
        f"{server.url}/toolbox/{sid}/process/execute",
        data=json.dumps({"command": command, "timeout": timeout}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer cove-test-admin-key"},
    )
    with urlopen(req, timeout=timeout + 10) as r:
        return json.loads(r.read())


def fill(path, bs="1M"):
    """Writes until the filesystem of `path` has no free `bs` left."""
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", "status=none"], capture_output=True)
    subprocess.run(["sync"])


def test_a_full_data_disk_hurts_no_sandbox_refuses_creates_with_numbers_and_deletes_still_work(small_fs, cove):
    # small_fs first: torn down last, after the server and its sandboxes are gone (the other
    # way round, a failed run left its sandboxes running on a detached file system).
    server = cove(data_dir=small_fs / "d", extra=["--disk-reserve", "256M", "--warm-pool-size", "0"])
    make_snapshot(server)
    st, a = create(server)
    assert st == 200 and a["state"] == "started", a
    st, b = create(server)
    assert st == 200 and b["state"] == "started", b

    # Everything else on the data filesystem is taken.
    fill(small_fs / "filler")

    # A fills its own disk: ENOSPC inside A only, and neither disk fails.
    r = execute(server, a["id"], "sh -c 'dd if=/dev/zero of=/root/fill bs=1M count=1100 2>&1; sync; echo rc=$?'")
    assert "No space left on device" in r["result"], r
    r = execute(server, b["id"], "sh -c 'dd if=/dev/zero of=/root/fill bs=1M count=400 2>&1 && sync && echo ok'")
    assert r["result"].strip().endswith("ok"), r
    mounts = open("/proc/self/mountinfo").read()
    assert not [l for l in mounts.splitlines() if "/sandboxes/" in l and l.split(" - ")[1].split()[2].startswith("ro")]
    for sb in (a, b):
        assert server.api("GET", f"/sandbox/{sb['id']}")[1]["state"] == "started"

    # A create whose disk cannot be guaranteed: 409 naming free and needed bytes.
    st, body = create(server)
    assert st == 409, (st, body)
    assert "bytes free" in body["message"] and str(1 << 30) in body["message"], body

    # The last partial MiB too, block by block.
    fill(small_fs / "filler.tail", bs="4k")

    # Database writes on the full disk: a clear 507 naming the data dir, never a bare 500.
    statuses, labels = [], {}
    for i in range(300):
        labels[f"k{i}"] = "x" * 3000  # the row grows: the database needs new pages
        st, body = server.api("PUT", f"/sandbox/{b['id']}/labels", {"labels": labels})
        statuses.append(st)
        if st != 200:
            break
    assert statuses[-1] == 507, (statuses, str(body)[:300])
    assert "data disk is full" in body["message"] and str(small_fs / "d") in body["message"], body

    # A push to the built-in registry on the full disk: the same 507, in the OCI error body.
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    st, _, raw = V2(server).upload_blob(f"{access['project']}/full", b"\x01" * (8 << 20), sha(b"\x01" * (8 << 20)))
    assert st == 507, (st, raw[:300])
    err = json.loads(raw)["errors"][0]
    assert "data disk is full" in err["message"] and str(small_fs / "d") in err["message"], err

    # A delete works on the full disk and frees the sandbox's disk.
    st, body = server.api("DELETE", f"/sandbox/{a['id']}")
    assert st == 200, (st, body)
    assert server.api("GET", f"/sandbox/{a['id']}")[0] == 404
    st, body = server.api("PUT", f"/sandbox/{b['id']}/labels", {"labels": {"after": "delete"}})
    assert st == 200, (st, body)

    (small_fs / "filler").unlink()
    (small_fs / "filler.tail").unlink()
    st, c = create(server)
    assert st == 200 and c["state"] == "started", c
    for sb in (b, c):
        assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200


def test_a_sandbox_whose_disk_went_read_only_is_reported_as_error_with_the_reason(cove):
    server = cove(extra=["--warm-pool-size", "0"])
    make_snapshot(server)
    st, sb = create(server)
    assert st == 200, sb
    disk = server.data_dir / "sandboxes" / sb["id"] / "disk"
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    body = wait_until(
        lambda: (b := server.api("GET", f"/sandbox/{sb['id']}")[1])["state"] == "error" and b, 15, what="error state"
    )
    assert "read-only" in body["errorReason"], body
    assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200


def test_sparse_disks_promise_more_room_than_the_data_filesystem_has_and_take_only_what_is_written(small_fs, cove):
    # --sandbox-disks=sparse: four 1 GiB disks on a 3 GiB filesystem (allocated ones stop at
    # two with this reserve: the test above), each holding only what mkfs and the sandbox wrote.
    server = cove(data_dir=small_fs / "d", extra=[
        "--disk-reserve", "256M", "--warm-pool-size", "0", "--sandbox-disks", "sparse"])
    make_snapshot(server)
    ids = []
    for _ in range(4):
        st, sb = create(server)
        assert st == 200 and sb["state"] == "started", sb
        ids.append(sb["id"])
    for i in ids:
        img = (small_fs / "d" / "sandboxes" / i / "disk.img").stat()
        assert img.st_size == 1 << 30 and img.st_blocks * 512 < 128 << 20, (i, img.st_size, img.st_blocks)
    r = execute(server, ids[0], "sh -c 'dd if=/dev/zero of=/root/f bs=1M count=64 2>/dev/null && sync && echo ok'")
    assert r["result"].strip().endswith("ok"), r
    grown = (small_fs / "d" / "sandboxes" / ids[0] / "disk.img").stat().st_blocks * 512
    assert grown >= 64 << 20, grown
    for i in ids:
        assert server.api("DELETE", f"/sandbox/{i}")[0] == 200
