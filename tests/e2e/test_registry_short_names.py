"""Repositories named without the organization id in the built-in registry: `HOST/team/app:1`
pushed with an organization's credentials is `<orgId>/team/app:1` of that organization, for
skopeo and for a snapshot's `imageName`; the explicit form sees the same image, another
organization sees it under neither name, and the `Location` headers answer the name the
client used."""

import json
import subprocess

from harness import API_KEY
from v2client import OCI_MANIFEST, V2, sha


def skopeo(*args, check=True):
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_skopeo_pushes_team_app_and_a_snapshot_of_it_runs_while_another_organization_sees_neither_name(server, registry):
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    host = f"127.0.0.1:{server.port}"
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    org = access["project"]
    # With the organization's push token, as `docker login` would keep it.
    creds = f"{access['username']}:{access['secret']}"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", creds,
           f"docker://{registry.url.split('://', 1)[1]}/busybox:1", f"docker://{host}/team/app:1")
    short = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{host}/team/app:1").stdout)
    full = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"any:{API_KEY}",
                             f"docker://{host}/{org}/team/app:1").stdout)
    assert short["Digest"] == full["Digest"] and short["Layers"] == full["Layers"]
    v2 = V2(server)
    st, _, tags = v2.json("GET", "/v2/team/app/tags/list")
    assert st == 200 and tags == {"name": "team/app", "tags": ["1"]}, "the list names the repository as asked"
    assert f"{org}/team/app" in v2.json("GET", "/v2/_catalog")[2]["repositories"]

    st, snap = server.api("POST", "/snapshots", {"name": "short-name", "imageName": f"{host}/team/app:1"})
    assert st == 200, snap
    done = server.wait_state("short-name", timeout=120)
    assert done["state"] == "active", done.get("errorReason")
    sandbox = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).create(
        CreateSandboxFromSnapshotParams(snapshot="short-name"))
    try:
        assert sandbox.process.exec("echo short").result.strip() == "short"
    finally:
        sandbox.delete()
    st, snap = server.api("POST", "/snapshots", {"name": "full-name", "imageName": f"{host}/{org}/team/app:1"})
    assert st == 200 and server.wait_state("full-name")["state"] == "active"

    # Another organization: its `team/app` is its own (empty), `<org>/team/app` is not found.
    st, created = server.api("POST", "/organizations", {"name": "other"})
    assert st in (200, 201), created
    other_key = created["apiKey"]["value"]
    for name in ("team/app", f"{org}/team/app"):
        r = skopeo("inspect", "--tls-verify=false", "--creds", f"any:{other_key}", f"docker://{host}/{name}:1", check=False)
        assert r.returncode != 0 and "unknown" in r.stderr.lower(), r.stderr
        st, _, b = V2(server, password=other_key).req("GET", f"/v2/{name}/manifests/1")
        assert st == 404 and json.loads(b)["errors"][0]["code"] == "NAME_UNKNOWN"
        st, snap = server.api("POST", "/snapshots", {"name": f"stolen-{len(name)}", "imageName": f"{host}/{name}:1"},
                              key=other_key)
        assert st == 200, snap
        done = server.wait_state(f"stolen-{len(name)}", key=other_key)
        assert done["state"] == "error" and "not found" in done["errorReason"], done
    st, _, b = V2(server, password=other_key).req("POST", f"/v2/{org}/team/app/blobs/uploads/")
    assert st == 403 and json.loads(b)["errors"][0]["code"] == "DENIED"


def test_location_headers_answer_the_name_the_client_used(server):
    v2 = V2(server)
    st, h, _ = v2.req("POST", "/v2/team/loc/blobs/uploads/")
    assert st == 202 and h["Location"].startswith("/v2/team/loc/blobs/uploads/"), h["Location"]
    data = b"short name layer"
    st, h, _ = v2.req("PUT", f"{h['Location']}?digest={sha(data)}", data)
    assert st == 201 and h["Location"] == f"/v2/team/loc/blobs/{sha(data)}"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cd = v2.push_blob("team/loc", config)
    m = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(data), "size": len(data)}],
    }).encode()
    st, h, b = v2.push_manifest("team/loc", "1", m)
    assert st == 201 and h["Location"] == f"/v2/team/loc/manifests/{sha(m)}", (st, b)
    st, h, b = v2.req("GET", h["Location"], headers={"Accept": OCI_MANIFEST})
    assert st == 200 and b == m
