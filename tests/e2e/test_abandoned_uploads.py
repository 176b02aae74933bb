"""Abandoned uploads do not keep their bytes (issue 13, item 4): a registry push whose client
disconnects mid-blob, or that goes idle, leaves nothing staged after a short time, and an
organization's unfinished uploads are held to a limit (a new one past it is refused with a
4xx naming the limit)."""

import json
import socket
import time
import urllib.parse

import pytest

from harness import wait_until
from v2client import V2

LIMIT_MIB = 4


@pytest.fixture
def reg(cove):
    server = cove(extra=["--upload-idle-secs", "2", "--upload-staging-limit-mib", str(LIMIT_MIB)])
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    return server, access["project"], V2(server)


def staged(server):
    """Files of uploads in progress (registry blobs stream into `<data-dir>/ingest/`)."""
    d = server.data_dir / "ingest"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def start_upload(v2, repo):
    st, h, b = v2.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert st == 202, (st, b)
    return h["Location"]


def test_a_push_that_disconnects_mid_blob_leaves_no_staged_bytes(reg):
    server, org, v2 = reg
    loc = start_upload(v2, f"{org}/app")
    path = urllib.parse.urlsplit(loc).path if loc.startswith("http") else loc
    # A PATCH announcing 2 MB that sends half of it, then the client goes away.
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {v2.auth}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: 2000000\r\n\r\n".encode()
    )
    s.sendall(b"x" * 1_000_000)
    wait_until(lambda: staged(server), 10, what="the upload's bytes to be staged")
    s.close()
    # Gone at once (well before the 2 s idle time would have removed it).
    wait_until(lambda: not staged(server), 1.5, what="the abandoned upload's bytes to be deleted")
    st, _, b = v2.req("GET", loc)
    assert st == 404 and json.loads(b)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", (st, b)
    # A graceful stop waits about 35 s on the connection the client dropped mid-body (a
    # shutdown matter, not an upload one): end this server at once.
    server.kill()


def test_an_idle_upload_is_removed_after_the_idle_time(reg):
    server, org, v2 = reg
    loc = start_upload(v2, f"{org}/app")
    st, h, b = v2.req("PATCH", loc, b"y" * 1000, {"Content-Range": "0-999"})
    assert st == 202, (st, b)
    assert staged(server)
    t0 = time.monotonic()
    wait_until(lambda: not staged(server), 10, what="the idle upload's bytes to be deleted")
    assert time.monotonic() - t0 >= 1, "removed before it was idle for --upload-idle-secs"
    st, _, b = v2.req("GET", h["Location"])
    assert st == 404, (st, b)


def test_an_organization_at_its_staging_limit_is_refused_a_new_upload(reg):
    server, org, v2 = reg
    loc = start_upload(v2, f"{org}/app")
    st, h, b = v2.req("PATCH", loc, b"z" * (LIMIT_MIB << 20))
    assert st == 202, (st, b)
    st, _, b = v2.req("POST", f"/v2/{org}/other/blobs/uploads/")
    assert st == 403, (st, b)
    err = json.loads(b)["errors"][0]
    assert err["code"] == "DENIED", err
    assert f"the limit is {LIMIT_MIB << 20} bytes" in err["message"], err
    assert err["detail"]["limitBytes"] == LIMIT_MIB << 20, err
    # Cancelling gives the bytes back.
    st, _, b = v2.req("DELETE", h["Location"])
    assert st == 204, (st, b)
    start_upload(v2, f"{org}/other")
