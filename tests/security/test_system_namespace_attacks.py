"""Attacks on the registry's system namespace `cove/` (where `cove image bootstrap` stores
cove/sandbox): every organization pulls from it, but only credentials issued to an admin key
for `?namespace=cove` push there. A member key cannot get such credentials, and neither its
own token, its API key nor another organization's can push, overwrite, retag or delete
anything in `cove/`."""

import json

import pytest

from harness import API_KEY
from v2client import V2, sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def error(body: bytes) -> dict:
    return json.loads(body)["errors"][0]


def push_access(server, key, namespace=None):
    path = "/docker-registry/registry-push-access" + (f"?namespace={namespace}" if namespace else "")
    return server.api("GET", path, key=key)


def image(v2, repo, tag, payload):
    """Pushes a one-layer image; returns (manifest digest, manifest bytes)."""
    layer = v2.push_blob(repo, payload)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(payload)]}}).encode()
    cd = v2.push_blob(repo, config)
    m = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len(payload)}],
    }).encode()
    st, h, body = v2.push_manifest(repo, tag, m)
    assert st == 201, body
    return h["Docker-Content-Digest"], m


@pytest.fixture
def setup(server):
    """The admin's system token, a member key of the admin's organization, and another
    organization's key."""
    st, access = push_access(server, API_KEY, "cove")
    assert st == 200 and access["project"] == "cove", access
    st, k = server.api("POST", "/api-keys", {"name": "member"})
    assert st == 200, k
    st, org = server.api("POST", "/organizations", {"name": "other"})
    assert st in (200, 201), org
    return V2(server, access["secret"]), k["value"], org["apiKey"]["value"]


def test_a_member_key_gets_no_push_access_to_the_system_namespace(server, setup):
    _, member, other = setup
    for key in (member, other):
        st, body = push_access(server, key, "cove")
        assert st == 403 and "admin API key" in body["message"], body
    st, body = push_access(server, member, "somebody-else")
    assert st == 400 and "unknown namespace" in body["message"], body
    st, body = server.api("GET", "/docker-registry/registry-push-access?namespce=cove", key=member)
    assert st == 400 and "namespce" in json.dumps(body), "an unknown parameter is refused, never ignored"


def test_no_organization_can_push_overwrite_or_delete_cove_sandbox(server, setup):
    system, member, other = setup
    digest, manifest = image(system, "cove/sandbox", "minimal-bookworm", b"the real image")
    for key in (member, other):
        st, access = push_access(server, key)
        assert st == 200 and access["project"] != "cove", access
        for v2 in (V2(server, access["secret"]), V2(server, key)):
            # Overwrite the tag with its own image, pushed first into its own namespace.
            own = f"{access['project']}/app"
            _, evil = image(v2, own, "1", b"a planted image")
            st, _, body = v2.upload_blob("cove/sandbox", b"planted", sha(b"planted"))
            assert st == 403 and error(body)["code"] == "DENIED", body
            st, _, body = v2.req("POST", "/v2/cove/sandbox/blobs/uploads/")
            assert st == 403, body
            st, _, body = v2.push_manifest("cove/sandbox", "minimal-bookworm", evil)
            assert st == 403 and error(body)["code"] == "DENIED", body
            st, _, body = v2.push_manifest("cove/sandbox", "minimal-bookworm", manifest)
            assert st == 403, "not even the same manifest under its tag"
            for ref in ("minimal-bookworm", digest):
                st, _, body = v2.req("DELETE", f"/v2/cove/sandbox/manifests/{ref}")
                assert st == 403 and error(body)["code"] == "DENIED", body
            st, _, body = v2.req("DELETE", f"/v2/cove/sandbox/blobs/{sha(b'the real image')}")
            assert st == 403, body
            # It still reads the system image.
            st, h, got = v2.req("GET", "/v2/cove/sandbox/manifests/minimal-bookworm", headers={"Accept": OCI_MANIFEST})
            assert st == 200 and h["Docker-Content-Digest"] == digest and got == manifest
    # The admin's organization token is an organization's too: no system rights by itself.
    st, access = push_access(server, API_KEY)
    st, _, body = V2(server, access["secret"]).req("DELETE", "/v2/cove/sandbox/manifests/minimal-bookworm")
    assert st == 403, body
    st, _, got = system.req("GET", "/v2/cove/sandbox/manifests/minimal-bookworm", headers={"Accept": OCI_MANIFEST})
    assert st == 200 and got == manifest, "the tag still points at the real image"


def test_another_organization_makes_a_snapshot_of_the_system_image_but_cannot_delete_it(server, setup):
    import mkimage

    system, _, other = setup
    st, access = push_access(server, API_KEY, "cove")
    # A runnable image (busybox) pushed into cove/sandbox with the system token.
    digest = mkimage.push_image(server.url, "cove/sandbox", ["busy"], auth=f"cove:{access['secret']}")
    image_name = f"{access['registryUrl']}/cove/sandbox:busy"
    st, snap = server.api("POST", "/snapshots", {"name": "from-system", "imageName": image_name}, key=other)
    assert st == 200, snap
    done = server.wait_state(snap["id"], key=other)
    assert done["state"] == "active", done
    st, sb = server.api("POST", "/sandbox", {"snapshot": "from-system"}, key=other)
    assert st == 200 and sb["state"] == "started", sb
    assert server.api("DELETE", f"/sandbox/{sb['id']}", key=other)[0] == 200

    v2 = V2(server, other)
    for ref in ("busy", digest):
        st, _, body = v2.req("DELETE", f"/v2/cove/sandbox/manifests/{ref}")
        assert st == 403 and error(body)["code"] == "DENIED", body
    st, _, _ = system.req("GET", "/v2/cove/sandbox/manifests/busy", headers={"Accept": OCI_MANIFEST})
    assert st == 200, "the system image is still there"
    # Its own snapshot is its own: deleting it leaves the system image alone.
    assert server.api("DELETE", f"/snapshots/{snap['id']}", key=other)[0] == 200
    st, h, _ = system.req("HEAD", "/v2/cove/sandbox/manifests/busy", headers={"Accept": OCI_MANIFEST})
    assert st == 200 and h["Docker-Content-Digest"] == digest
