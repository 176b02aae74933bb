"""Build-context uploads through the official SDKs' own object-storage code: push-access
credentials, the S3-compatible HTTPS endpoint, the per-organization prefix, and the server's
CA in the system trust store (what the Python SDK's obstore requires)."""

import os
import tarfile
from datetime import timedelta

import pytest
from daytona import Daytona, DaytonaConfig, Image
from daytona._sync.snapshot import SnapshotService
from obstore.store import S3Store

from harness import API_KEY, BUSYBOX
from tsrun import run_ts


def push_access(server, key=API_KEY):
    st, body = server.api("GET", "/object-storage/push-access", key=key)
    assert st == 200, body
    return body


def context_tree(root):
    (root / "ctx" / "sub").mkdir(parents=True)
    (root / "ctx" / "a.txt").write_text("alpha\n")
    (root / "ctx" / "sub" / "b.txt").write_text("beta\n")
    return root


def members(path):
    with tarfile.open(path) as t:
        return {m.name: (t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}


def test_push_access_hands_out_scoped_https_credentials(s3_server):
    a = push_access(s3_server)
    for f in ("accessKey", "secret", "sessionToken", "storageUrl", "organizationId", "bucket", "region"):
        assert isinstance(a[f], str) and a[f], f
    assert a["storageUrl"] == f"https://127.0.0.1:{s3_server.s3_port}"
    assert a["bucket"] == "cove-builds"
    assert s3_server.api("GET", "/object-storage/push-access", key=None)[0] == 401
    for secret in (a["secret"], a["sessionToken"]):
        assert secret not in s3_server.log_path.read_text()


def test_the_python_sdk_uploads_a_context_and_skips_it_once_present(s3_server, tmp_path):
    root = context_tree(tmp_path)
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=s3_server.api_url))
    image = Image.base(BUSYBOX).add_local_file(str(root / "ctx" / "a.txt"), "/app/a.txt")
    image = image.add_local_dir(str(root / "ctx"), "/app/ctx")
    hashes = SnapshotService.process_image_context(daytona._object_storage_api, image)
    assert len(hashes) == 2
    org = push_access(s3_server)["organizationId"]
    stored = [s3_server.data_dir / "objects" / "cove-builds" / org / h / "context.tar" for h in hashes]
    base = str(root).lstrip("/")
    assert members(stored[0]) == {f"{base}/ctx/a.txt": b"alpha\n"}
    got = members(stored[1])
    assert got[f"{base}/ctx/a.txt"] == b"alpha\n" and got[f"{base}/ctx/sub/b.txt"] == b"beta\n"
    assert f"{base}/ctx" in got

    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in stored]
    assert SnapshotService.process_image_context(daytona._object_storage_api, image) == hashes
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in stored] == before, "HEAD 200 must skip the upload"


def test_another_organizations_prefix_is_refused_to_obstore(s3_server, tmp_path):
    root = context_tree(tmp_path)
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=s3_server.api_url))
    image = Image.base(BUSYBOX).add_local_file(str(root / "ctx" / "a.txt"), "/app/a.txt")
    [h] = SnapshotService.process_image_context(daytona._object_storage_api, image)
    mine = push_access(s3_server)
    st, org = s3_server.api("POST", "/organizations", {"name": "team b"})
    assert st == 200, org
    theirs = push_access(s3_server, key=org["apiKey"]["value"])
    assert theirs["organizationId"] != mine["organizationId"]
    store = S3Store(
        bucket=theirs["bucket"],
        endpoint=theirs["storageUrl"],
        region=theirs["region"],
        access_key_id=theirs["accessKey"],
        secret_access_key=theirs["secret"],
        session_token=theirs["sessionToken"],
        client_options={"timeout": timedelta(seconds=10)},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
    )
    key = f"{mine['organizationId']}/{h}/context.tar"
    with pytest.raises(Exception, match="(?i)denied|403|forbidden"):
        store.head(key)
    with pytest.raises(Exception, match="(?i)denied|403|forbidden"):
        store.put(key, b"overwritten")
    path = s3_server.data_dir / "objects" / "cove-builds" / key
    assert b"alpha" in path.read_bytes()
    # Their own prefix works with the same client.
    store.put(f"{theirs['organizationId']}/x/context.tar", b"ok")
    assert (s3_server.data_dir / "objects" / "cove-builds" / theirs["organizationId"] / "x" / "context.tar").read_bytes() == b"ok"


def test_the_typescript_sdk_uploads_a_context_with_the_aws_sdk(s3_server, tmp_path):
    root = context_tree(tmp_path)
    # Over 5 MB: lib-storage switches to a multipart upload with per-part CRC32 checksums.
    (root / "ctx" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    r = run_ts(
        "object_storage_upload.mjs",
        s3_server,
        timeout=60,
        CONTEXT_ROOT=str(root),
        NODE_EXTRA_CA_CERTS=str(s3_server.data_dir / "tls" / "ca.pem"),
    )
    assert r["again"] == r["hashes"] and len(r["hashes"]) == 2
    assert r["refused"] == {"put": "AccessDenied", "list": "AccessDenied"}
    objects = s3_server.data_dir / "objects" / "cove-builds" / r["organizationId"]
    assert members(objects / r["hashes"][0] / "context.tar") == {"ctx/a.txt": b"alpha\n"}
    got = members(objects / r["hashes"][1] / "context.tar")
    assert got["ctx/sub/b.txt"] == b"beta\n" and len(got["ctx/big.bin"]) == 6 * 1024 * 1024
