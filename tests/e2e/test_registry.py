"""The built-in OCI registry at /v2/: real skopeo pushes and pulls, the distribution API by hand
(chunked, monolithic, mounts, manifests, tags, catalog, deletes; cases after the OCI
distribution-spec conformance suite), organization scoping, push tokens, and snapshots made
from pushed images."""

import base64
import hashlib
import hmac
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from harness import API_KEY
from v2client import OCI_MANIFEST, V2, sha

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def image(v2, repo, tag, layer=b"layer-bytes", config=b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'):
    """Pushes a small (not runnable) image; returns (manifest bytes, manifest digest, layer digest)."""
    cd, ld = v2.push_blob(repo, config), v2.push_blob(repo, layer)
    m = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    }).encode()
    st, h, b = v2.push_manifest(repo, tag, m)
    assert st == 201, (st, b)
    assert h["Docker-Content-Digest"] == sha(m)
    return m, sha(m), ld


def skopeo(*args, check=True):
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def reg(cove):
    server = cove()
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    return server, access["project"], V2(server)


@pytest.fixture(scope="session")
def oci_layout(registry, tmp_path_factory):
    d = tmp_path_factory.mktemp("layout") / "busybox"
    host = registry.url.split("://", 1)[1]
    skopeo("copy", "--src-tls-verify=false", f"docker://{host}/busybox:1", f"oci:{d}:1")
    return d


def test_the_base_endpoint_challenges_anonymous_callers_and_accepts_an_api_key(reg):
    server, org, v2 = reg
    st, h, _ = V2(server, password=None).req("GET", "/v2/")
    assert st == 401 and h["WWW-Authenticate"] == 'Basic realm="cove"'
    st, h, _ = V2(server, password="cove_wrong").req("GET", "/v2/")
    assert st == 401 and error_code(_) == "UNAUTHORIZED"
    st, h, _ = v2.req("GET", "/v2/")
    assert st == 200 and h["Docker-Distribution-API-Version"] == "registry/2.0"
    bearer = urllib.request.Request(server.url + "/v2/", headers={"Authorization": f"Bearer {API_KEY}"})
    assert urllib.request.urlopen(bearer).status == 200


def test_skopeo_pushes_an_oci_layout_and_pulls_it_back_byte_for_byte(reg, oci_layout, tmp_path):
    server, org, v2 = reg
    host = f"127.0.0.1:{server.port}"
    dest = f"docker://{host}/{org}/myimg:1.0"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}", f"oci:{oci_layout}:1", dest)
    info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"any:{API_KEY}", dest).stdout)
    assert info["Architecture"] == "amd64" and len(info["Layers"]) >= 1
    out = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", f"any:{API_KEY}", dest, f"oci:{out}:1.0")
    src_index = json.loads((oci_layout / "index.json").read_text())["manifests"][0]["digest"]
    back_index = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    assert src_index == back_index == info["Digest"], "the manifest comes back unchanged"
    # A second push uploads nothing new and keeps the digest.
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}", f"oci:{oci_layout}:1",
           f"docker://{host}/{org}/myimg:1.1")
    st, _, tags = v2.json("GET", f"/v2/{org}/myimg/tags/list")
    assert st == 200 and tags == {"name": f"{org}/myimg", "tags": ["1.0", "1.1"]}


def test_an_index_pushed_with_all_platforms_becomes_a_snapshot_of_its_amd64_image(reg, registry):
    server, org, v2 = reg
    src = registry.url.split("://", 1)[1]
    skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}",
           f"docker://{src}/multiarch:1.0", f"docker://127.0.0.1:{server.port}/{org}/multi:1.0")
    st, h, b = v2.req("GET", f"/v2/{org}/multi/manifests/1.0", headers={"Accept": OCI_INDEX})
    assert st == 200 and h["Content-Type"] == OCI_INDEX
    st, snap = server.api("POST", "/snapshots", {"name": "multi", "imageName": f"127.0.0.1:{server.port}/{org}/multi:1.0"})
    assert st == 200, snap
    done = server.wait_state("multi")
    assert done["state"] == "active", done.get("errorReason")


def test_a_chunked_upload_by_hand_reports_its_range_and_verifies_the_digest(reg):
    server, org, v2 = reg
    repo = f"{org}/chunked"
    data = b"A" * 1000 + b"B" * 500 + b"C" * 10
    st, h, _ = v2.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert st == 202 and h["Docker-Upload-UUID"] and h["Location"]
    loc = h["Location"]
    st, h, _ = v2.req("PATCH", loc, data[:1000], {"Content-Range": "0-999", "Content-Type": "application/octet-stream"})
    assert st == 202 and h["Range"] == "0-999"
    st, h, b = v2.req("PATCH", h["Location"], data[:10], {"Content-Range": "5-14"})
    assert st == 416, "a chunk that does not continue the upload is refused"
    st, h, _ = v2.req("GET", loc)
    assert st == 204 and h["Range"] == "0-999"
    st, h, _ = v2.req("PATCH", loc, data[1000:1500], {"Content-Range": "1000-1499"})
    assert st == 202 and h["Range"] == "0-1499"
    st, h, b = v2.req("PUT", f"{loc}?digest={sha(b'wrong')}", data[1500:])
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    assert v2.req("HEAD", f"/v2/{repo}/blobs/{sha(b'wrong')}")[0] == 404

    st, h, _ = v2.req("POST", f"/v2/{repo}/blobs/uploads/")
    loc = h["Location"]
    v2.req("PATCH", loc, data[:1000], {"Content-Range": "0-999"})
    v2.req("PATCH", loc, data[1000:1500], {"Content-Range": "1000-1499"})
    st, h, _ = v2.req("PUT", f"{loc}?digest={sha(data)}", data[1500:])
    assert st == 201 and h["Docker-Content-Digest"] == sha(data)
    st, h, body = v2.req("GET", f"/v2/{repo}/blobs/{sha(data)}")
    assert st == 200 and body == data and h["Docker-Content-Digest"] == sha(data)
    st, h, body = v2.req("HEAD", f"/v2/{repo}/blobs/{sha(data)}")
    assert st == 200 and h["Content-Length"] == str(len(data)) and body == b""
    assert v2.req("GET", loc)[0] == 404, "a finished upload is gone"

    st, h, _ = v2.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert v2.req("DELETE", h["Location"])[0] == 204
    st, _, b = v2.req("GET", h["Location"])
    assert st == 404 and error_code(b) == "BLOB_UPLOAD_UNKNOWN"


def test_monolithic_uploads_mounts_manifests_tags_and_deletes(reg):
    server, org, v2 = reg
    repo, other = f"{org}/mono", f"{org}/other"
    st, _, b = v2.req("POST", f"/v2/{repo}/blobs/uploads/?digest={sha(b'x')}", b"y")
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    m, md, ld = image(v2, repo, "v1")
    # Pull by tag and by digest, HEAD included.
    for ref in ("v1", md):
        st, h, body = v2.req("GET", f"/v2/{repo}/manifests/{ref}")
        assert st == 200 and body == m and h["Content-Type"] == OCI_MANIFEST and h["Docker-Content-Digest"] == md
    st, h, body = v2.req("HEAD", f"/v2/{repo}/manifests/v1")
    assert st == 200 and body == b"" and h["Content-Length"] == str(len(m))
    st, _, b = v2.req("GET", f"/v2/{repo}/manifests/nope")
    assert st == 404 and error_code(b) == "MANIFEST_UNKNOWN"
    # Cross-repository mount: 201 from a readable repository, else a normal upload.
    st, h, _ = v2.req("POST", f"/v2/{other}/blobs/uploads/?mount={ld}&from={repo}")
    assert st == 201 and h["Location"].endswith(f"/blobs/{ld}")
    assert v2.req("HEAD", f"/v2/{other}/blobs/{ld}")[0] == 200
    st, h, _ = v2.req("POST", f"/v2/{other}/blobs/uploads/?mount={sha(b'absent')}&from={repo}")
    assert st == 202 and h["Docker-Upload-UUID"]
    # A manifest referencing a blob the repository lacks is refused.
    bad = json.loads(m)
    bad["layers"][0]["digest"] = sha(b"never pushed")
    st, _, b = v2.push_manifest(repo, "bad", json.dumps(bad).encode())
    assert st == 400 and error_code(b) == "MANIFEST_BLOB_UNKNOWN"
    st, _, b = v2.push_manifest(repo, sha(b"other"), m)
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    # Tags with pagination.
    for t in ("v2", "v3", "a0"):
        assert v2.push_manifest(repo, t, m)[0] == 201
    st, h, tags = v2.json("GET", f"/v2/{repo}/tags/list?n=2")
    assert tags["tags"] == ["a0", "v1"] and 'rel="next"' in h["Link"]
    st, h, tags = v2.json("GET", f"/v2/{repo}/tags/list?n=2&last=v1")
    assert tags["tags"] == ["v2", "v3"]
    st, _, cat = v2.json("GET", "/v2/_catalog")
    assert st == 200 and {repo, other} <= set(cat["repositories"])
    # Deletes: a tag, then the manifest by digest (its other tags go with it), then a blob.
    assert v2.req("DELETE", f"/v2/{repo}/manifests/a0")[0] == 202
    assert v2.req("GET", f"/v2/{repo}/manifests/a0")[0] == 404
    assert v2.req("DELETE", f"/v2/{repo}/manifests/{md}")[0] == 202
    assert v2.req("GET", f"/v2/{repo}/manifests/{md}")[0] == 404
    assert v2.json("GET", f"/v2/{repo}/tags/list")[2]["tags"] == []
    assert v2.req("DELETE", f"/v2/{repo}/blobs/{ld}")[0] == 202
    st, _, b = v2.req("GET", f"/v2/{repo}/blobs/{ld}")
    assert st == 404 and error_code(b) == "BLOB_UNKNOWN"
    assert v2.req("GET", f"/v2/{other}/blobs/{ld}")[0] == 200, "the mounted copy is still linked"
    st, _, b = v2.req("GET", f"/v2/{org}/nothing-here/tags/list")
    assert st == 404 and error_code(b) == "NAME_UNKNOWN"
    st, _, b = v2.req("GET", "/v2/UPPER/tags/list")
    assert st == 400 and error_code(b) == "NAME_INVALID"


def test_another_organization_cannot_push_into_or_read_from_a_namespace_not_its_own(reg):
    server, org, v2 = reg
    image(v2, f"{org}/private", "1.0")
    st, created = server.api("POST", "/organizations", {"name": "b"})
    assert st in (200, 201), created
    other = V2(server, password=created["apiKey"]["value"])
    st, access = server.api("GET", "/docker-registry/registry-push-access", key=created["apiKey"]["value"])
    org_b = access["project"]
    assert org_b != org
    st, _, b = other.req("GET", f"/v2/{org}/private/manifests/1.0")
    assert st == 404 and error_code(b) == "NAME_UNKNOWN"
    st, _, b = other.req("POST", f"/v2/{org}/private/blobs/uploads/")
    assert st == 403 and error_code(b) == "DENIED"
    st, _, b = other.req("PUT", f"/v2/{org}/private/manifests/evil", b"{}", {"Content-Type": OCI_MANIFEST})
    assert st == 403
    assert other.req("DELETE", f"/v2/{org}/private/manifests/1.0")[0] == 403
    # Mounting from a foreign repository falls back to an upload.
    ld = sha(b"layer-bytes")
    st, h, _ = other.req("POST", f"/v2/{org_b}/mine/blobs/uploads/?mount={ld}&from={org}/private")
    assert st == 202
    assert other.json("GET", "/v2/_catalog")[2]["repositories"] == []
    assert f"{org}/private" in v2.json("GET", "/v2/_catalog")[2]["repositories"]
    # A snapshot of another organization's image is "not found".
    st, snap = server.api("POST", "/snapshots", {"name": "stolen", "imageName": f"127.0.0.1:{server.port}/{org}/private:1.0"},
                          key=created["apiKey"]["value"])
    assert st == 200, snap
    done = server.wait_state("stolen", key=created["apiKey"]["value"])
    assert done["state"] == "error" and "not found" in done["errorReason"]


def test_a_push_token_works_as_a_password_until_it_expires_and_cannot_be_forged(reg, short_tmp):
    server, org, v2 = reg
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert set(access) == {"username", "secret", "registryUrl", "registryId", "project", "expiresAt"}
    assert access["registryUrl"] == f"127.0.0.1:{server.port}" and access["registryId"] == "internal"
    tok = V2(server, user=access["username"], password=access["secret"])
    assert tok.req("GET", "/v2/")[0] == 200
    image(tok, f"{org}/bytoken", "1.0")
    # The server log never shows the secret.
    logs = server.log_path.read_text(errors="replace")
    assert "issued a registry push token" in logs and access["secret"] not in logs
    claims_b64, mac = access["secret"][len("cvr1."):].split(".")
    claims = base64.urlsafe_b64decode(claims_b64 + "==").decode()
    forged = "cvr1." + base64.urlsafe_b64encode(claims.replace(org, "someone-else").encode()).decode().rstrip("=") + "." + mac
    assert V2(server, password=forged).req("GET", "/v2/")[0] == 401
    # An expired token, correctly signed with the server's secret, is refused.
    secret = (server.data_dir / "registry-token.key").read_bytes()
    o, _, nonce = claims.split("\n")
    old = f"{o}\n{int(time.time()) - 10}\n{nonce}"
    sig = hmac.new(secret, b"registry-push\n" + old.encode(), hashlib.sha256).digest()
    expired = "cvr1." + base64.urlsafe_b64encode(old.encode()).decode().rstrip("=") + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")
    st, h, b = V2(server, password=expired).req("GET", "/v2/")
    assert st == 401 and "expired" in json.loads(b)["errors"][0]["message"]


def test_a_pushed_image_becomes_a_snapshot_and_a_sandbox_runs_from_it(reg, oci_layout):
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    server, org, v2 = reg
    name = f"127.0.0.1:{server.port}/{org}/myimg:1.0"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}", f"oci:{oci_layout}:1", f"docker://{name}")
    st, snap = server.api("POST", "/snapshots", {"name": "pushed", "imageName": name})
    assert st == 200, snap
    done = server.wait_state("pushed")
    assert done["state"] == "active", done.get("errorReason")
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="pushed"))
    try:
        assert sandbox.process.exec("echo ok").result.strip() == "ok"
    finally:
        sandbox.delete()
    # Garbage collection keeps the registry's blobs: the image pulls again after the
    # snapshot that used it is deleted.
    assert server.api("DELETE", "/snapshots/pushed")[0] == 200
    time.sleep(1)
    st, _, _ = v2.req("GET", f"/v2/{org}/myimg/manifests/1.0")
    assert st == 200
    info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"any:{API_KEY}", f"docker://{name}").stdout)
    for layer in info["Layers"]:
        assert v2.req("HEAD", f"/v2/{org}/myimg/blobs/{layer}")[0] == 200


def test_a_client_reusing_its_connection_after_an_early_refusal_gets_every_answer(reg):
    """A body answered 401 or 404 before it is read is drained, so the connection stays usable
    (clients retry with credentials on the same connection); past the drain limit the answer
    says `Connection: close` instead of resetting the connection under the client."""
    import http.client

    server, org, v2 = reg
    host, port = server.url.split("://", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = b"\x02" * (1 << 20)
    d = sha(body)
    ok = 0
    for i in range(50):
        # Anonymous first, as docker and skopeo do: 401 before the body is read.
        conn.request("POST", f"/v2/{org}/reuse/blobs/uploads/?digest={d}", body=body)
        r = conn.getresponse()
        r.read()
        assert r.status == 401, r.status
        assert r.getheader("connection") != "close"
        # The retry on the same connection, now with credentials.
        conn.request("POST", f"/v2/{org}/reuse/blobs/uploads/?digest={d}", body=body, headers={"Authorization": v2.auth})
        r = conn.getresponse()
        r.read()
        assert r.status == 201, r.status
        # A body refused for a bad repository name, also before it is read.
        conn.request("PUT", f"/v2/{org}/BAD..name/manifests/x", body=body, headers={"Authorization": v2.auth})
        r = conn.getresponse()
        r.read()
        assert r.status in (400, 404), r.status
        ok += 1
    assert ok == 50
    conn.close()


# Content discovery: the referrers API (distribution-spec 1.1, "Listing Referrers").

ARTIFACT_CONFIG = "application/vnd.example.config.v1+json"


def artifact(v2, repo, subject_digest, subject_size, note, artifact_type=None, ref=None):
    """Pushes a manifest whose `subject` is the given manifest; returns (status, headers, digest, bytes)."""
    cd, ld = v2.push_blob(repo, b"{}"), v2.push_blob(repo, note.encode())
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": ARTIFACT_CONFIG, "digest": cd, "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": ld, "size": len(note)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {"org.example.note": note},
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    m = json.dumps(doc).encode()
    st, h, _ = v2.push_manifest(repo, ref or sha(m), m)
    return st, h, sha(m), m


def referrers(v2, repo, digest, artifact_type=None):
    q = f"?artifactType={artifact_type}" if artifact_type else ""
    st, h, b = v2.req("GET", f"/v2/{repo}/referrers/{digest}{q}")
    assert st == 200, (st, b)
    assert h["Content-Type"] == OCI_INDEX
    index = json.loads(b)
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    return h, {d["digest"]: d for d in index["manifests"]}


def test_referrers_list_the_manifests_whose_subject_is_a_digest_with_their_artifact_type(reg):
    server, org, v2 = reg
    repo = f"{org}/signed"
    m, md, _ = image(v2, repo, "1.0")
    st, h, sig, sig_bytes = artifact(v2, repo, md, len(m), "signature", "application/vnd.example.sig.v1")
    assert st == 201 and h["OCI-Subject"] == md
    st, h, sbom, sbom_bytes = artifact(v2, repo, md, len(m), "sbom")
    assert st == 201 and h["OCI-Subject"] == md
    # A manifest without a subject gets no OCI-Subject header.
    st, h, _ = v2.push_manifest(repo, "plain", m)
    assert st == 201 and h["OCI-Subject"] is None
    h, listed = referrers(v2, repo, md)
    assert h["OCI-Filters-Applied"] is None
    assert set(listed) == {sig, sbom}
    assert listed[sig] == {
        "mediaType": OCI_MANIFEST, "digest": sig, "size": len(sig_bytes),
        "artifactType": "application/vnd.example.sig.v1", "annotations": {"org.example.note": "signature"},
    }
    # Without an artifactType of its own, a manifest's is its config's media type.
    assert listed[sbom]["artifactType"] == ARTIFACT_CONFIG and listed[sbom]["size"] == len(sbom_bytes)
    # Filtered by artifactType, saying so.
    h, only = referrers(v2, repo, md, "application/vnd.example.sig.v1")
    assert h["OCI-Filters-Applied"] == "artifactType" and set(only) == {sig}
    h, none = referrers(v2, repo, md, "application/vnd.example.nothing")
    assert h["OCI-Filters-Applied"] == "artifactType" and none == {}
    # No referrers: an empty index, not 404; a malformed digest is 400.
    assert referrers(v2, repo, sha(b"no such manifest"))[1] == {}
    st, _, b = v2.req("GET", f"/v2/{repo}/referrers/sha256:nothex")
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    # Another organization cannot list them.
    st, created = server.api("POST", "/organizations", {"name": "other"})
    assert st in (200, 201), created
    st, _, b = V2(server, password=created["apiKey"]["value"]).req("GET", f"/v2/{repo}/referrers/{md}")
    assert st == 404 and error_code(b) == "NAME_UNKNOWN"


def test_a_referrer_pushed_before_its_subject_is_kept_survives_a_restart_and_goes_with_its_manifest(reg):
    server, org, v2 = reg
    repo = f"{org}/early"
    subject = sha(b"the image, pushed later")
    st, h, first, _ = artifact(v2, repo, subject, 100, "first", "application/vnd.example.a")
    assert st == 201 and h["OCI-Subject"] == subject
    st, _, second, _ = artifact(v2, repo, subject, 100, "second", "application/vnd.example.b", ref="second")
    assert st == 201
    assert set(referrers(v2, repo, subject)[1]) == {first, second}
    server.kill()
    server.start()
    assert set(referrers(v2, repo, subject)[1]) == {first, second}, "the relation survives a restart"
    # Deleting a referrer takes it off the list; deleting only a tag does not.
    assert v2.req("DELETE", f"/v2/{repo}/manifests/second")[0] == 202
    assert set(referrers(v2, repo, subject)[1]) == {first, second}
    assert v2.req("DELETE", f"/v2/{repo}/manifests/{first}")[0] == 202
    assert set(referrers(v2, repo, subject)[1]) == {second}
    assert v2.req("DELETE", f"/v2/{repo}/manifests/{second}")[0] == 202
    assert referrers(v2, repo, subject)[1] == {}
    server.kill()
    server.start()
    assert referrers(v2, repo, subject)[1] == {}


# Pull: range requests on blobs.

def test_blob_range_requests_answer_exactly_the_bytes_asked_for(reg):
    server, org, v2 = reg
    repo = f"{org}/ranges"
    data = bytes(range(256)) * 40  # 10240 bytes, every offset recognisable
    d = v2.push_blob(repo, data)
    size = len(data)
    st, h, _ = v2.req("HEAD", f"/v2/{repo}/blobs/{d}")
    assert st == 200 and h["Accept-Ranges"] == "bytes" and h["Content-Length"] == str(size)
    st, h, b = v2.req("GET", f"/v2/{repo}/blobs/{d}")
    assert st == 200 and b == data and h["Accept-Ranges"] == "bytes"
    for asked, start, end in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-4195", 100, 4195),
        (f"bytes=9000-{size * 2}", 9000, size - 1),  # cut at the end
        ("bytes=10000-", 10000, size - 1),  # open range
        ("bytes=-77", size - 77, size - 1),  # suffix range
        (f"bytes=-{size * 3}", 0, size - 1),
    ]:
        st, h, b = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": asked})
        assert st == 206, (asked, st)
        assert h["Content-Range"] == f"bytes {start}-{end}/{size}", asked
        assert h["Content-Length"] == str(end - start + 1) and b == data[start:end + 1], asked
        assert h["Docker-Content-Digest"] == d
    for asked in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        st, h, b = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": asked})
        assert st == 416, (asked, st)
        assert h["Content-Range"] == f"bytes */{size}"
    # Several ranges, or a syntax that is not a range: the whole blob.
    for asked in ("bytes=0-1,5-6", "bytes=5-1", "lines=1-2"):
        st, _, b = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": asked})
        assert st == 200 and b == data, asked
    # An If-Range naming another version gets the whole blob; naming this one, the range.
    st, _, b = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=1-2", "If-Range": '"sha256:x"'})
    assert st == 200 and b == data
    st, _, b = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": "bytes=1-2", "If-Range": f'"{d}"'})
    assert st == 206 and b == data[1:3]
    # A sha512 blob is served by range too.
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    assert v2.upload_blob(repo, data, d512)[0] == 201
    st, h, b = v2.req("GET", f"/v2/{repo}/blobs/{d512}", headers={"Range": "bytes=-10"})
    assert st == 206 and b == data[-10:] and h["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"


def test_an_interrupted_pull_resumes_from_where_it_stopped(reg):
    """What a pulling client does with a dropped connection: ask for the rest by range."""
    import http.client

    server, org, v2 = reg
    repo = f"{org}/resume"
    data = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    d = v2.push_blob(repo, data)
    host, port = server.url.split("://", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/v2/{repo}/blobs/{d}", headers={"Authorization": v2.auth})
    r = conn.getresponse()
    got = r.read(300_000)
    conn.close()  # dropped mid-body
    st, h, rest = v2.req("GET", f"/v2/{repo}/blobs/{d}", headers={"Range": f"bytes={len(got)}-"})
    assert st == 206 and h["Content-Range"] == f"bytes {len(got)}-{len(data) - 1}/{len(data)}"
    assert sha(got + rest) == d


# Push and content management: manifests addressed by a sha512 digest.

def sha512(b: bytes) -> str:
    return "sha512:" + hashlib.sha512(b).hexdigest()


def test_a_manifest_pushed_by_a_sha512_digest_is_pulled_listed_and_deleted_by_it(reg):
    server, org, v2 = reg
    repo = f"{org}/sha512"
    cd, ld = v2.push_blob(repo, b"{}"), v2.push_blob(repo, b"sha512 layer")
    m = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": 12}],
    }).encode()
    d = sha512(m)
    st, h, b = v2.push_manifest(repo, d, m)
    assert st == 201, b
    assert h["Docker-Content-Digest"] == d and h["Location"].endswith(f"/manifests/{d}")
    for method in ("GET", "HEAD"):
        st, h, b = v2.req(method, f"/v2/{repo}/manifests/{d}")
        assert st == 200 and h["Docker-Content-Digest"] == d and h["Content-Length"] == str(len(m))
        assert b == (m if method == "GET" else b"")
    # A body that hashes otherwise is refused.
    st, _, b = v2.push_manifest(repo, sha512(b"other"), m)
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    # A tag push names no digest: the answer is the canonical (sha256) one, and the tag pulls.
    st, h, _ = v2.push_manifest(repo, "tagged", m)
    assert st == 201 and h["Docker-Content-Digest"] == sha(m)
    st, h, b = v2.req("GET", f"/v2/{repo}/manifests/tagged")
    assert st == 200 and b == m and h["Docker-Content-Digest"] == sha(m)
    # A sha512 manifest is listed as a referrer by its sha512 digest, of a sha512 subject too.
    st, h, ref, ref_bytes = artifact(v2, repo, d, len(m), "about the sha512 manifest")
    assert st == 201 and h["OCI-Subject"] == d
    note = json.loads(ref_bytes)
    ref512 = sha512(ref_bytes)
    assert v2.push_manifest(repo, ref512, ref_bytes)[0] == 201
    assert set(referrers(v2, repo, d)[1]) == {ref, ref512}
    assert referrers(v2, repo, d)[1][ref512]["size"] == len(ref_bytes) and note["subject"]["digest"] == d
    # Deleted by its sha512 digest: gone, the sha256 copy and its tag stay.
    assert v2.req("DELETE", f"/v2/{repo}/manifests/{ref512}")[0] == 202
    assert set(referrers(v2, repo, d)[1]) == {ref}
    assert v2.req("DELETE", f"/v2/{repo}/manifests/{d}")[0] == 202
    st, _, b = v2.req("GET", f"/v2/{repo}/manifests/{d}")
    assert st == 404 and error_code(b) == "MANIFEST_UNKNOWN"
    assert v2.req("HEAD", f"/v2/{repo}/manifests/{d}")[0] == 404
    assert v2.req("GET", f"/v2/{repo}/manifests/tagged")[0] == 200


def test_a_snapshot_runs_from_an_image_whose_manifest_is_addressed_by_sha512(reg, oci_layout):
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    server, org, v2 = reg
    host = f"127.0.0.1:{server.port}"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}", f"oci:{oci_layout}:1",
           f"docker://{host}/{org}/img512:1")
    st, h, m = v2.req("GET", f"/v2/{org}/img512/manifests/1", headers={"Accept": OCI_MANIFEST})
    assert st == 200
    # The same manifest (sha256 layer blobs) pushed again under its sha512 digest.
    d = sha512(m)
    st, _, b = v2.push_manifest(org + "/img512", d, m, h["Content-Type"])
    assert st == 201, b
    st, snap = server.api("POST", "/snapshots", {"name": "by-sha512", "imageName": f"{host}/{org}/img512@{d}"})
    assert st == 200, snap
    done = server.wait_state("by-sha512")
    assert done["state"] == "active", done.get("errorReason")
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="by-sha512"))
    try:
        assert sandbox.process.exec("echo ok").result.strip() == "ok"
    finally:
        sandbox.delete()


# Pull and content management: references that are neither a tag nor a digest.

def test_a_reference_that_is_neither_a_tag_nor_a_digest_is_an_unknown_manifest_but_cannot_be_pushed(reg):
    server, org, v2 = reg
    repo = f"{org}/refs"
    m, md, _ = image(v2, repo, "1.0")
    for bad in (".hidden", "-dash", "t" * 129, "sha256:nothex", "md5:abc", "bad%21"):
        for method in ("GET", "HEAD", "DELETE"):
            st, _, b = v2.req(method, f"/v2/{repo}/manifests/{bad}")
            assert st == 404, (method, bad, st)
            if method != "HEAD":
                assert error_code(b) == "MANIFEST_UNKNOWN", (method, bad)
    st, _, b = v2.push_manifest(repo, "-dash", m)
    assert st == 400 and error_code(b) == "TAG_INVALID"
    assert "-dash" in json.loads(b)["errors"][0]["message"]
    st, _, b = v2.push_manifest(repo, "sha256:nothex", m)
    assert st == 400 and error_code(b) == "DIGEST_INVALID"
    assert v2.req("GET", f"/v2/{repo}/manifests/1.0")[0] == 200
