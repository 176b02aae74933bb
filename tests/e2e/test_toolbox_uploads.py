"""Uploads through the toolbox proxy (issue 12 item 11): a multipart body sent in pieces with
pauses between them, as a slow client or Node's form-data stream sends it, must get the
agent's answer every time (no 503 "Broken pipe"), and the file must be there. Run 40 times:
the failure this guards against came about one time in four."""

import hashlib
import http.client
import time
import urllib.parse

import pytest
from daytona import CreateSnapshotParams, Daytona, DaytonaConfig

from harness import API_KEY, BUSYBOX
from tsrun import run_ts


def send_in_pieces(server, path, body, content_type, piece=700, pause=0.002):
    url = urllib.parse.urlparse(server.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Authorization", f"Bearer {API_KEY}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    for i in range(0, len(body), piece):
        try:
            conn.send(body[i:i + piece])
        except (BrokenPipeError, ConnectionResetError):
            break  # the server answered early and stopped reading: its answer is waiting
        time.sleep(pause)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def multipart(files, boundary="----cove-test-boundary"):
    parts = []
    for i, (path, data) in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files[{i}].path"\r\n\r\n{path}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files[{i}].file"; filename="f"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    # The closing boundary, then an epilogue line, as some form-data writers add.
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def sandbox(cove):
    server = cove(extra=["--default-snapshot", "up-snap"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="up-snap", image=BUSYBOX))
    sb = daytona.create()
    yield server, sb
    sb.delete()


def test_forty_multipart_uploads_sent_in_pieces_all_get_the_agents_answer(sandbox):
    server, sb = sandbox
    failures = []
    for n in range(40):
        data = (f"upload {n}\n".encode() * (50 + n * 37))
        body, ctype = multipart([(f"/tmp/up/{n}.txt", data)])
        status, answer = send_in_pieces(server, f"/toolbox/{sb.id}/files/bulk-upload", body, ctype)
        if status != 200:
            failures.append((n, status, answer[:200]))
    assert failures == [], failures
    listing = sb.process.exec("ls /tmp/up | wc -l; md5sum /tmp/up/39.txt").result.split()
    assert listing[0] == "40", listing
    assert listing[1] == hashlib.md5(b"upload 39\n" * (50 + 39 * 37)).hexdigest()


def test_an_upload_the_agent_refuses_early_gets_its_refusal_not_a_broken_pipe(sandbox):
    server, sb = sandbox
    # Not multipart: the agent refuses it before reading the 2 MiB body.
    for _ in range(5):
        status, answer = send_in_pieces(server, f"/toolbox/{sb.id}/files/bulk-upload", b"x" * (2 << 20),
                                        "text/plain", piece=64 * 1024, pause=0.001)
        assert 400 <= status < 500, (status, answer[:300])


def test_thirty_typescript_upload_files_calls_with_files_over_a_mebibyte_all_succeed_intact(cove):
    """The same guard through the official TypeScript SDK (`sandbox.fs.uploadFiles`), which is
    where the failures were first reported (about one call in three)."""
    server = cove(extra=["--default-snapshot", "up-ts-snap"])
    Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).snapshot.create(
        CreateSnapshotParams(name="up-ts-snap", image=BUSYBOX)
    )
    r = run_ts("upload_files_repeat.mjs", server, timeout=300)
    assert r["failures"] == [], r["failures"]
    assert r["files"] == 4 * r["rounds"] == 120
    assert r["found"] == r["files"], r
    assert r["mismatched"] == [], r["mismatched"]
