"""Images whose manifests leave `mediaType` out (OCI allows it; umoci and older buildah write
them): their type comes from the descriptor or `Content-Type`, else from the document's
fields. Pulled from a remote registry (Debian's docker-registry), pushed by skopeo into the
built-in `/v2/` and by `cove snapshot push`, each becomes an active snapshot a sandbox runs
from."""

import json
import os
import subprocess
import urllib.request

import mkimage
from harness import API_KEY, COVE_BIN, FIXTURES
from v2client import OCI_MANIFEST, V2

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def skopeo(*args):
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p


def fetch_manifest(url, repo, ref):
    req = urllib.request.Request(f"{url}/v2/{repo}/manifests/{ref}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def snapshot_runs(server, name, image):
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    st, snap = server.api("POST", "/snapshots", {"name": name, "imageName": image})
    assert st == 200, snap
    done = server.wait_state(name, timeout=120)
    assert done["state"] == "active", done.get("errorReason")
    sandbox = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).create(
        CreateSandboxFromSnapshotParams(snapshot=name))
    try:
        assert sandbox.process.exec("cat /etc/cove-fixture").result.strip() == "no-media-type"
    finally:
        sandbox.delete()


def test_an_image_without_media_type_becomes_a_snapshot_from_a_remote_registry_and_from_the_built_in_one(cove, registry):
    mkimage.push_image(registry.url, "no-media-type", ["1"], seed="no-media-type", media_type=False)
    assert "mediaType" not in fetch_manifest(registry.url, "no-media-type", "1"), "the fixture registry keeps it out"
    server = cove()
    snapshot_runs(server, "remote-no-mt", f"{FIXTURES}/no-media-type:1")

    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    org = access["project"]
    dest = f"127.0.0.1:{server.port}/{org}/no-media-type:1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", f"any:{API_KEY}",
           f"docker://{registry.url.split('://', 1)[1]}/no-media-type:1", f"docker://{dest}")
    st, h, body = V2(server).req("GET", f"/v2/{org}/no-media-type/manifests/1", headers={"Accept": OCI_MANIFEST})
    assert st == 200 and "mediaType" not in json.loads(body), "skopeo pushed the manifest unchanged"
    assert h["Content-Type"] == OCI_MANIFEST
    snapshot_runs(server, "pushed-no-mt", dest)


def test_an_index_without_media_type_resolves_to_its_amd64_image(cove, registry):
    mkimage.push_image(registry.url, "no-media-type-index", ["1"], index_arches=["arm64", "amd64"],
                       seed="no-media-type", media_type=False)
    assert "mediaType" not in fetch_manifest(registry.url, "no-media-type-index", "1")
    server = cove()
    st, snap = server.api("POST", "/snapshots", {"name": "index-no-mt", "imageName": f"{FIXTURES}/no-media-type-index:1"})
    assert st == 200, snap
    done = server.wait_state("index-no-mt", timeout=120)
    assert done["state"] == "active", done.get("errorReason")


def test_snapshot_push_of_an_oci_layout_without_media_types_becomes_active(cove, registry, tmp_path):
    mkimage.push_image(registry.url, "no-media-type", ["1"], seed="no-media-type", media_type=False)
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.url.split('://', 1)[1]}/no-media-type:1", f"oci:{layout}:1")
    # As bare as a layout gets: neither the index entry nor the manifest names its type.
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        m.pop("mediaType", None)
    (layout / "index.json").write_text(json.dumps(index))
    server = cove()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "DAYTONA_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    def cli(*args):
        p = subprocess.run([str(COVE_BIN), *args], env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, f"cove {' '.join(args)}: {p.stdout}{p.stderr}"
        return p

    cli("login", "--api-url", server.url, "--api-key", API_KEY)
    out = cli("snapshot", "push", f"oci:{layout}:1", "--name", "cli-no-mt")
    assert "cli-no-mt is active" in out.stdout, out.stdout + out.stderr
