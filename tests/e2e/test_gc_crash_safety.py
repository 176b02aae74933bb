"""Garbage collection of unpacked images (issue 13, items 1 and 9): a kill in the middle of an
image's removal never leaves a tree that looks complete, the warm pool's sandboxes of a
deleted snapshot go at once, and an image pushed to the built-in registry is unpacked only
while a snapshot uses it."""

import json
import os
import signal
import urllib.request

import mkimage
from harness import API_KEY, FIXTURES, wait_until

MANY = 1500


def unpacked(server):
    """Image directories that look complete (the marker is what the server trusts)."""
    images = server.data_dir / "images"
    return {p.name for p in images.iterdir() if (p / ".complete").exists()} if images.is_dir() else set()


def count_files(root):
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def test_a_kill_during_an_image_removal_leaves_no_trusted_partial_tree_and_the_image_comes_back_complete(cove, registry):
    mkimage.push_image(registry.url, "manyfiles", ["1"], seed="manyfiles",
                       files=[(f"data/d{i % 30}/f{i}", b"x", 0o644) for i in range(MANY)])
    server = cove()
    image = f"{FIXTURES}/manyfiles:1"
    assert server.api("POST", "/snapshots", {"name": "many", "imageName": image})[0] == 200
    assert server.wait_state("many")["state"] == "active"
    (hexdigest,) = unpacked(server)
    rootfs = server.data_dir / "images" / hexdigest / "rootfs"
    expected = count_files(rootfs)
    assert expected > MANY

    # Restart with the fault armed; the GC that the delete starts aborts the server mid-removal.
    server.kill(signal.SIGTERM)
    server.start(env={"COVE_FAULT": "gc.image_removal"})
    assert server.api("DELETE", "/snapshots/many")[0] == 200
    wait_until(lambda: server.proc.poll() is not None, 30, what="the server to abort at gc.image_removal")
    assert "aborting at gc.image_removal" in server.log_path.read_text()
    assert hexdigest not in unpacked(server), "a tree whose removal began is not trusted"
    left = [p for p in (server.data_dir / "trash").iterdir() if p.name.startswith(hexdigest)]
    assert len(left) == 1 and count_files(left[0]) < expected + 3, "the kill came mid-removal"

    server.kill()
    server.start()
    assert server.api("POST", "/snapshots", {"name": "again", "imageName": image})[0] == 200
    assert server.wait_state("again")["state"] == "active"
    assert count_files(rootfs) == expected, "the image is unpacked afresh and complete"
    wait_until(lambda: not any((server.data_dir / "trash").iterdir()), 30, what="the trash emptied after the restart")


def unrecorded_bundles(server):
    """Sandbox bundles on disk that the API does not list: the warm pool's prepared ones."""
    listed = {s["id"] for s in server.api("GET", "/sandbox")[1]["items"]}
    root = server.data_dir / "sandboxes"
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} - listed


def test_the_prepared_sandboxes_of_a_deleted_snapshot_are_removed_at_once_and_its_image_freed(cove):
    server = cove(extra=["--warm-pool-size", "2", "--warm-pool-idle-secs", "3600"])
    assert server.api("POST", "/snapshots", {"name": "pooled", "imageName": f"{FIXTURES}/busybox:2"})[0] == 200
    assert server.wait_state("pooled")["state"] == "active"
    st, sb = server.api("POST", "/sandbox", {"snapshot": "pooled"})
    assert st == 200, sb
    wait_until(lambda: len(unrecorded_bundles(server)) >= 2, 60, what="two prepared sandboxes")
    assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200
    wait_until(lambda: server.api("GET", f"/sandbox/{sb['id']}")[0] == 404, 30, what="the sandbox deleted")
    assert unpacked(server)
    assert server.api("DELETE", "/snapshots/pooled")[0] == 200
    wait_until(lambda: not unrecorded_bundles(server), 15, what="the deleted snapshot's prepared sandboxes removed")
    wait_until(lambda: not unpacked(server), 15, what="the deleted snapshot's image freed")


def test_an_image_pushed_to_the_builtin_registry_is_unpacked_only_while_a_snapshot_uses_it(cove):
    server = cove()
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    org = access["project"]
    mkimage.push_image(server.url, f"{org}/pushed", ["1"], auth=f"any:{API_KEY}", seed="pushed-gc")
    assert not unpacked(server), "a push unpacks nothing"
    name = f"127.0.0.1:{server.port}/{org}/pushed:1"
    for round_ in range(2):
        assert server.api("POST", "/snapshots", {"name": "fromreg", "imageName": name})[0] == 200
        done = server.wait_state("fromreg")
        assert done["state"] == "active", (round_, done.get("errorReason"))
        assert len(unpacked(server)) == 1, "the first snapshot that uses it unpacks it"
        assert server.api("DELETE", "/snapshots/fromreg")[0] == 200
        wait_until(lambda: not unpacked(server), 15, what="the tree freed though its tag remains")
    # The tag and its blobs stay in the registry.
    reg = mkimage.Registry(server.url, f"any:{API_KEY}")
    assert reg.req("HEAD", f"/v2/{org}/pushed/manifests/1").status == 200


def exec_in(server, sid, command):
    req = urllib.request.Request(
        f"{server.url}/toolbox/{sid}/process/execute",
        data=json.dumps({"command": command, "timeout": 30}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(req, timeout=40) as r:
        return json.loads(r.read())


def test_a_sandbox_keeps_its_image_when_its_snapshot_is_deleted_and_frees_it_when_deleted(cove):
    """The chaos test once saw a started sandbox lose its image: garbage collection counted
    only snapshots' images, so deleting a snapshot freed the tree its sandboxes run on."""
    server = cove(extra=["--warm-pool-size", "0"])
    for name, image in (("kept", f"{FIXTURES}/busybox:2"), ("other", f"{FIXTURES}/busybox:1")):
        assert server.api("POST", "/snapshots", {"name": name, "imageName": image})[0] == 200
        assert server.wait_state(name)["state"] == "active"
    images = unpacked(server)
    assert len(images) == 2
    st, sb = server.api("POST", "/sandbox", {"snapshot": "kept"})
    assert st == 200 and sb["state"] == "started", sb
    listing = exec_in(server, sb["id"], "ls /bin")["result"]
    assert "busybox" in listing

    assert server.api("DELETE", "/snapshots/kept")[0] == 200
    # A collection after that delete has run once the other snapshot's image is gone.
    assert server.api("DELETE", "/snapshots/other")[0] == 200
    wait_until(lambda: len(unpacked(server)) == 1, 15, what="the other snapshot's image freed")
    # The sandbox's image stayed: it runs, and a stop and start remount it.
    assert exec_in(server, sb["id"], "ls /bin")["result"] == listing
    assert server.api("POST", f"/sandbox/{sb['id']}/stop")[0] == 200
    st, body = server.api("POST", f"/sandbox/{sb['id']}/start")
    assert st == 200 and body["state"] == "started", body
    assert exec_in(server, sb["id"], "ls /bin")["result"] == listing

    # Deleting the last sandbox that uses it frees it.
    assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200
    wait_until(lambda: not unpacked(server), 15, what="the image freed with its last sandbox")
