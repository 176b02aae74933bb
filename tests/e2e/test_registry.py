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
