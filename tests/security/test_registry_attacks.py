"""Attacks on the built-in registry's integrity (issue 9, hole 12): what it stores must be what
was announced. A blob is committed only under the digest its bytes hash to (sha256 and
sha512 alike), so one organization cannot replace another's blob; an upload whose chunks do
not follow each other is refused; a manifest cannot lie about the sizes of its blobs."""

import hashlib
import json

import pytest

from harness import API_KEY
from v2client import V2

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def sha512(b: bytes) -> str:
    return "sha512:" + hashlib.sha512(b).hexdigest()


def error(body: bytes) -> dict:
    return json.loads(body)["errors"][0]


def project(server, key):
    st, access = server.api("GET", "/docker-registry/registry-push-access", key=key)
    assert st == 200, access
    return access["project"]


@pytest.fixture
def org_a(server):
    """The default organization (the admin key's): (its namespace, its client)."""
    return project(server, API_KEY), V2(server, API_KEY)


@pytest.fixture
def org_b(server):
    """A second organization with its own key: (its namespace, its client)."""
    st, created = server.api("POST", "/organizations", {"name": "attacker"})
    assert st in (200, 201), created
    key = created["apiKey"]["value"]
    return project(server, key), V2(server, key)


def test_another_organization_cannot_overwrite_a_sha512_blob(org_a, org_b):
    (ns_a, a), (ns_b, b) = org_a, org_b
    assert ns_a != ns_b
    mine, theirs = b"organization A's layer " * 100, b"organization B's payload " * 100
    d = sha512(mine)
    st, _, body = a.upload_blob(f"{ns_a}/app", mine, d)
    assert st == 201, body

    # Monolithic: B claims A's digest for its own bytes.
    st, _, body = b.upload_blob(f"{ns_b}/app", theirs, d)
    assert st == 400 and error(body)["code"] == "DIGEST_INVALID", (st, body)
    # Chunked: the same claim at the end of an upload.
    st, h, body = b.req("POST", f"/v2/{ns_b}/app/blobs/uploads/")
    assert st == 202, body
    st, h, body = b.req("PATCH", h["Location"], theirs, {"Content-Range": f"0-{len(theirs) - 1}"})
    assert st == 202, body
    st, _, body = b.req("PUT", f"{h['Location']}?digest={d}", b"")
    assert st == 400 and error(body)["code"] == "DIGEST_INVALID", (st, body)

    st, _, got = a.req("GET", f"/v2/{ns_a}/app/blobs/{d}")
    assert st == 200 and got == mine, "A still gets its own bytes"
    assert b.req("HEAD", f"/v2/{ns_b}/app/blobs/{d}")[0] == 404, "B's failed uploads left no link"


def test_a_digest_of_an_unsupported_algorithm_is_refused(org_a):
    ns, a = org_a
    st, _, body = a.upload_blob(f"{ns}/app", b"x", "md5:" + hashlib.md5(b"x").hexdigest())
    assert st == 400 and error(body)["code"] == "DIGEST_INVALID", (st, body)
    st, _, body = a.upload_blob(f"{ns}/app", b"x", "sha384:" + hashlib.sha384(b"x").hexdigest())
    assert st == 400 and error(body)["code"] == "DIGEST_INVALID", (st, body)


def test_a_final_put_whose_content_range_skips_a_chunk_gets_416_and_nothing_is_committed(org_a):
    ns, a = org_a
    repo = f"{ns}/gappy"
    first, skipped, last = b"A" * 1000, b"B" * 500, b"C" * 10
    st, h, body = a.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert st == 202, body
    loc = h["Location"]
    st, h, body = a.req("PATCH", loc, first, {"Content-Range": "0-999"})
    assert st == 202 and h["Range"] == "0-999", body
    # The digest matches the bytes actually sent: only the range check can stop this.
    sent = sha256(first + last)
    st, h, body = a.req("PUT", f"{loc}?digest={sent}", last, {"Content-Range": f"{len(first) + len(skipped)}-1509"})
    assert st == 416, (st, body)
    assert h["Range"] == "0-999", "the refusal says where the upload stands"
    assert a.req("HEAD", f"/v2/{repo}/blobs/{sent}")[0] == 404, "nothing was committed"
    st, h, _ = a.req("GET", loc)
    assert st == 204 and h["Range"] == "0-999", "the upload is left as it was"
    # An overlapping PATCH is refused the same way.
    st, _, body = a.req("PATCH", loc, first[:10], {"Content-Range": "990-999"})
    assert st == 416, (st, body)
    # The honest continuation still completes.
    whole = first + skipped + last
    st, h, body = a.req("PATCH", loc, skipped, {"Content-Range": "1000-1499"})
    assert st == 202, body
    st, h, body = a.req("PUT", f"{loc}?digest={sha256(whole)}", last, {"Content-Range": "1500-1509"})
    assert st == 201, body
    st, _, got = a.req("GET", f"/v2/{repo}/blobs/{sha256(whole)}")
    assert st == 200 and got == whole


def test_a_manifest_with_a_lying_layer_size_is_refused(org_a):
    ns, a = org_a
    repo = f"{ns}/liar"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = bytes(range(256)) * 4096  # 1 MiB
    for blob in (config, layer):
        st, _, body = a.upload_blob(repo, blob, sha256(blob))
        assert st == 201, body

    def manifest(layer_size):
        return json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                        "size": layer_size}],
        }).encode()

    lie = manifest(100)
    st, _, body = a.req("PUT", f"/v2/{repo}/manifests/1.0", lie, {"Content-Type": OCI_MANIFEST})
    assert st == 400, (st, body)
    e = error(body)
    assert e["code"] in ("MANIFEST_INVALID", "SIZE_INVALID"), e
    assert "layers[0]" in e["message"] and "100" in e["message"], e
    assert a.req("GET", f"/v2/{repo}/manifests/1.0")[0] == 404, "the tag was not set"
    assert a.req("GET", f"/v2/{repo}/manifests/{sha256(lie)}")[0] == 404, "the manifest was not stored"

    honest = manifest(len(layer))
    st, _, body = a.req("PUT", f"/v2/{repo}/manifests/1.0", honest, {"Content-Type": OCI_MANIFEST})
    assert st == 201, body
