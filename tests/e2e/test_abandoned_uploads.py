"""Abandoned uploads do not keep their bytes (issue 13, item 4): a registry push whose client
disconnects mid-blob, or that goes idle, leaves nothing staged after a short time, and an
organization's unfinished uploads are held to a limit (a new one past it is refused with a
4xx naming the limit). Object storage's multipart uploads obey the same flags: an idle one is
swept with its parts, a part whose client disconnects leaves nothing in `.tmp/`, and their
parts share the organization's limit with its registry pushes."""

import json
import socket
import ssl
import time
import urllib.parse

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

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


# Object storage: multipart uploads signed by boto3 against the server's S3 endpoint.


def s3_client(server):
    st, a = server.api("GET", "/object-storage/push-access")
    assert st == 200, a
    client = boto3.client(
        "s3",
        endpoint_url=a["storageUrl"],
        region_name=a["region"],
        aws_access_key_id=a["accessKey"],
        aws_secret_access_key=a["secret"],
        aws_session_token=a["sessionToken"],
        verify=str(server.data_dir / "tls" / "ca.pem"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )
    return client, a


def multipart_dirs(server):
    d = server.data_dir / "objects" / ".uploads"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def in_progress(server):
    """Writes in progress in object storage's staging directory."""
    d = server.data_dir / "objects" / ".tmp"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def s3_code(call):
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value


def test_an_idle_multipart_upload_is_removed_with_its_parts_after_the_idle_time(reg):
    server, _, _ = reg
    s3, a = s3_client(server)
    key = f"{a['organizationId']}/idle/context.tar"
    up = s3.create_multipart_upload(Bucket=a["bucket"], Key=key)["UploadId"]
    part = s3.upload_part(Bucket=a["bucket"], Key=key, UploadId=up, PartNumber=1, Body=b"p" * 100_000)
    assert (server.data_dir / "objects" / ".uploads" / up / "part-00001").stat().st_size == 100_000
    t0 = time.monotonic()
    wait_until(lambda: up not in multipart_dirs(server), 10, what="the idle multipart upload to be removed")
    assert time.monotonic() - t0 >= 1, "removed before it was idle for --upload-idle-secs"
    assert multipart_dirs(server) == [] and in_progress(server) == []
    code, status, _ = s3_code(lambda: s3.list_parts(Bucket=a["bucket"], Key=key, UploadId=up))
    assert (code, status) == ("NoSuchUpload", 404)
    done = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    code, status, _ = s3_code(
        lambda: s3.complete_multipart_upload(Bucket=a["bucket"], Key=key, UploadId=up, MultipartUpload=done)
    )
    assert (code, status) == ("NoSuchUpload", 404)


def test_a_multipart_upload_in_use_is_kept_past_the_idle_time(reg):
    server, _, _ = reg
    s3, a = s3_client(server)
    key = f"{a['organizationId']}/busy/context.tar"
    up = s3.create_multipart_upload(Bucket=a["bucket"], Key=key)["UploadId"]
    # A request each second for longer than the 2 s idle time keeps it.
    for _ in range(4):
        time.sleep(1)
        assert s3.list_parts(Bucket=a["bucket"], Key=key, UploadId=up).get("Parts", []) == []
    part = s3.upload_part(Bucket=a["bucket"], Key=key, UploadId=up, PartNumber=1, Body=b"kept")
    done = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    s3.complete_multipart_upload(Bucket=a["bucket"], Key=key, UploadId=up, MultipartUpload=done)
    assert s3.get_object(Bucket=a["bucket"], Key=key)["Body"].read() == b"kept"
    assert multipart_dirs(server) == []


def test_a_part_whose_client_disconnects_mid_body_leaves_no_staged_bytes(reg):
    server, _, _ = reg
    s3, a = s3_client(server)
    key = f"{a['organizationId']}/cut/context.tar"
    up = s3.create_multipart_upload(Bucket=a["bucket"], Key=key)["UploadId"]
    # A signed UploadPart announcing 2 MB that sends half of it, then the client goes away.
    url = f"{a['storageUrl']}/{a['bucket']}/{key}?partNumber=1&uploadId={up}"
    req = AWSRequest(method="PUT", url=url, headers={"Content-Length": "2000000"})
    req.context["client_config"] = Config(s3={"payload_signing_enabled": False})  # body unsigned
    S3SigV4Auth(Credentials(a["accessKey"], a["secret"], a["sessionToken"]), "s3", a["region"]).add_auth(req)
    assert req.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    split = urllib.parse.urlsplit(url)
    lines = [f"PUT {split.path}?{split.query} HTTP/1.1", f"Host: {split.netloc}"]
    head = "\r\n".join(lines + [f"{k}: {v}" for k, v in req.headers.items()]) + "\r\n"
    tls = ssl.create_default_context(cafile=str(server.data_dir / "tls" / "ca.pem"))
    s = tls.wrap_socket(socket.create_connection(("127.0.0.1", server.s3_port)), server_hostname="127.0.0.1")
    s.sendall((head + "\r\n").encode() + b"x" * 1_000_000)
    wait_until(lambda: in_progress(server), 10, what="the part's bytes to be staged")
    s.close()
    wait_until(lambda: not in_progress(server), 1.5, what="the broken-off part's bytes to be deleted")
    assert s3.list_parts(Bucket=a["bucket"], Key=key, UploadId=up).get("Parts", []) == []
    # A graceful stop may wait on the connection the client dropped mid-body: end it at once.
    server.kill()


@pytest.fixture
def limited(cove):
    """A server whose uploads are not idle within a test, with a 4 MiB staging limit."""
    server = cove(extra=["--upload-idle-secs", "120", "--upload-staging-limit-mib", str(LIMIT_MIB)])
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    return server, access["project"], V2(server)


def test_a_part_past_the_limit_shared_with_registry_pushes_is_refused_and_nothing_is_kept(limited):
    server, org, v2 = limited
    s3, a = s3_client(server)
    assert a["organizationId"] == org
    # A registry push of the same organization stages 3 of its 4 MiB.
    loc = start_upload(v2, f"{org}/app")
    st, h, b = v2.req("PATCH", loc, b"r" * (3 << 20))
    assert st == 202, (st, b)
    key = f"{org}/ctx/context.tar"
    up = s3.create_multipart_upload(Bucket=a["bucket"], Key=key)["UploadId"]
    body = b"s" * (2 << 20)
    code, status, e = s3_code(
        lambda: s3.upload_part(Bucket=a["bucket"], Key=key, UploadId=up, PartNumber=1, Body=body)
    )
    assert (code, status) == ("QuotaExceeded", 403), e
    message = e.response["Error"]["Message"]
    assert "--upload-staging-limit-mib" in message and f"the limit is {LIMIT_MIB << 20} bytes" in message, message
    assert not (server.data_dir / "objects" / ".uploads" / up / "part-00001").exists()
    assert in_progress(server) == []
    # Cancelling the push gives its bytes back: the part fits, and completing gives its bytes
    # back too (a push of the whole limit is then accepted).
    st, _, b = v2.req("DELETE", h["Location"])
    assert st == 204, (st, b)
    part = s3.upload_part(Bucket=a["bucket"], Key=key, UploadId=up, PartNumber=1, Body=body)
    done = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    s3.complete_multipart_upload(Bucket=a["bucket"], Key=key, UploadId=up, MultipartUpload=done)
    assert (server.data_dir / "objects" / "cove-builds" / key).stat().st_size == 2 << 20
    loc = start_upload(v2, f"{org}/app")
    st, _, b = v2.req("PATCH", loc, b"z" * (LIMIT_MIB << 20))
    assert st == 202, (st, b)
