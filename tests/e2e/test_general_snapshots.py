"""General snapshots: made by an admin key, seen and used by every organization, changed
only by admin keys, and their names reserved (the seed's default snapshots; `cove image
bootstrap --general` makes cove-small/medium/large this way)."""

import json
import os
import subprocess

import pytest
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig, DaytonaError

from harness import BUSYBOX, COVE_BIN, REGIONS


def new_org_key(server, name):
    st, org = server.api("POST", "/organizations", {"name": name})
    assert st == 200, org
    return org["apiKey"]["value"]


def test_a_general_snapshot_is_shared_with_every_organization_and_changed_only_by_admin_keys(server):
    st, k = server.api("POST", "/api-keys", {"name": "member"})
    assert st == 200, k
    member = k["value"]
    st, body = server.api("POST", "/snapshots", {"name": "shared", "imageName": BUSYBOX, "general": True}, key=member)
    assert st == 403 and "only an admin API key" in body["message"], body

    st, snap = server.api("POST", "/snapshots", {"name": "shared", "imageName": BUSYBOX, "general": True})
    assert st == 200 and snap["general"] is True, snap
    assert server.wait_state(snap["id"])["state"] == "active"

    other = new_org_key(server, "team b")
    st, page = server.api("GET", "/snapshots", key=other)
    assert st == 200 and [(s["name"], s["general"]) for s in page["items"]] == [("shared", True)], page
    st, got = server.api("GET", "/snapshots/shared", key=other)
    assert st == 200 and got["id"] == snap["id"] and got["general"] is True, got

    st, sb = server.api("POST", "/sandbox", {"snapshot": "shared"}, key=other)
    assert st == 200 and sb["state"] == "started" and sb["snapshot"] == "shared", sb

    for verb, method, path in [
        ("delete", "DELETE", "/snapshots/shared"),
        ("deactivate", "POST", f"/snapshots/{snap['id']}/deactivate"),
        ("activate", "POST", f"/snapshots/{snap['id']}/activate"),
    ]:
        st, body = server.api(method, path, key=other)
        assert st == 403 and f"cannot {verb} snapshot shared: it is a general snapshot" in body["message"], (verb, body)
    st, body = server.api("DELETE", "/snapshots/shared", key=member)
    assert st == 403, "a member of the admin's own organization is no admin either"

    st, body = server.api("POST", "/snapshots", {"name": "shared", "imageName": BUSYBOX}, key=other)
    assert st == 409 and "general snapshot" in body["message"], body
    st, body = server.api("POST", "/snapshots", {"name": "x", "imageName": BUSYBOX, "generall": True}, key=other)
    assert st == 400 and "generall" in json.dumps(body), "an unknown field is refused, never ignored"

    assert server.api("GET", "/snapshots/shared", key=other)[1]["state"] == "active", "untouched by the refusals"
    assert server.api("DELETE", f"/sandbox/{sb['id']}", key=other)[0] == 200
    assert server.api("DELETE", "/snapshots/shared")[0] == 200, "an admin key may delete it"
    st, body = server.api("GET", "/snapshots/shared", key=other)
    assert st == 404, body


def test_the_cli_lists_general_snapshots_as_such(server, tmp_path):
    st, snap = server.api("POST", "/snapshots", {"name": "cove-small", "imageName": BUSYBOX, "general": True})
    assert st == 200, snap
    server.wait_state(snap["id"])
    other = new_org_key(server, "team c")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "DAYTONA_"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    run = lambda *a: subprocess.run([str(COVE_BIN), *a], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("login", "--api-url", server.url, "--api-key", other).returncode == 0
    out = run("snapshot", "list")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert "GENERAL" in header.split() and row.split()[0] == "cove-small" and "yes" in row.split(), out.stdout

    # With no snapshot named, a sandbox starts from the default, cove-small.
    st, sb = server.api("POST", "/sandbox", {}, key=other)
    assert st == 200 and sb["snapshot"] == "cove-small", sb
    assert server.api("DELETE", f"/sandbox/{sb['id']}", key=other)[0] == 200


def test_a_general_snapshot_is_usable_in_every_region_the_server_serves(cove):
    server = cove(extra=["--default-snapshot", "everywhere"])
    st, snap = server.api("POST", "/snapshots", {"name": "everywhere", "imageName": BUSYBOX, "general": True})
    assert st == 200, snap
    snap = server.wait_state(snap["id"])
    assert snap["state"] == "active" and snap["regionIds"] == REGIONS, snap

    # A client targeting a region other than the first, with no parameters at all.
    other = new_org_key(server, "team eu")
    daytona = Daytona(DaytonaConfig(api_key=other, api_url=server.api_url, target="eu"))
    sandbox = daytona.create(timeout=60)
    try:
        assert sandbox.snapshot == "everywhere" and sandbox.target == "eu", (sandbox.snapshot, sandbox.target)
        assert sandbox.process.exec("echo ok").result.strip() == "ok"
        assert daytona.get(sandbox.id).target == "eu"
    finally:
        sandbox.delete()

    with pytest.raises(DaytonaError) as refused:
        Daytona(DaytonaConfig(api_key=other, api_url=server.api_url, target="mars")).create(timeout=30)
    assert refused.value.status_code == 400 and "mars" in str(refused.value), refused.value

    # An organization's own snapshot stays in the region it was made in.
    st, own = server.api("POST", "/snapshots", {"name": "own", "imageName": BUSYBOX}, key=other)
    assert st == 200 and own["regionIds"] == [REGIONS[0]], own
    server.wait_state(own["id"], key=other)
    with pytest.raises(DaytonaError) as refused:
        daytona.create(CreateSandboxFromSnapshotParams(snapshot="own"), timeout=30)
    assert refused.value.status_code == 400 and f"available in region {REGIONS[0]}, not eu" in str(refused.value)
