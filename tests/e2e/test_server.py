"""End-to-end behaviour of `cove server` over raw HTTP: auth and organizations, validation,
what a pull really puts on disk, failure reasons, durability across kill -9."""

import os
import random
import stat
import subprocess
import threading
import time

import pytest

from harness import API_KEY, ARM64_ONLY, BUSYBOX, BUSYBOX_2, FIXTURES, MULTIARCH, Registry, wait_until
import mkimage


def create(server, name, image=BUSYBOX, key=API_KEY, **extra):
    st, body = server.api("POST", "/snapshots", {"name": name, "imageName": image, **extra}, key=key)
    assert st == 200, body
    return body


# --- auth, organizations, keys -------------------------------------------------------------


def test_health_needs_no_key_but_everything_else_does(server):
    assert server.api("GET", "/health", key=None)[0] == 200
    for key in (None, "wrong-key"):
        st, body = server.api("GET", "/snapshots", key=key)
        assert st == 401
        assert body["statusCode"] == 401 and body["path"] == "/api/snapshots"
        assert "API key" in body["message"]


def test_unknown_routes_answer_a_json_404(server):
    st, body = server.api("GET", "/nope")
    assert st == 404 and body["statusCode"] == 404


def test_regions_are_listed_default_first(server):
    st, body = server.api("GET", "/shared-regions")
    assert st == 200
    assert [r["id"] for r in body] == ["us", "eu", "us-east-1"]


def test_organizations_never_see_each_others_snapshots(server):
    mine = create(server, "shared-name")
    st, org = server.api("POST", "/organizations", {"name": "team b"})
    assert st == 200, org
    other = org["apiKey"]["value"]
    assert server.api("GET", f"/snapshots/{mine['id']}", key=other)[0] == 404
    assert server.api("GET", "/snapshots/shared-name", key=other)[0] == 404
    assert server.api("DELETE", f"/snapshots/{mine['id']}", key=other)[0] == 404
    assert server.api("POST", f"/snapshots/{mine['id']}/deactivate", key=other)[0] == 404
    st, page = server.api("GET", "/snapshots", key=other)
    assert st == 200 and page["total"] == 0 and page["items"] == []
    theirs = create(server, "shared-name", key=other)
    assert theirs["organizationId"] != mine["organizationId"]
    # A non-admin key cannot mint organizations.
    assert server.api("POST", "/organizations", {"name": "c"}, key=other)[0] == 403


def test_api_keys_are_shown_once_listed_without_secret_and_revocable(server):
    st, k = server.api("POST", "/api-keys", {"name": "ci"})
    assert st == 200 and k["value"].startswith("cove_")
    assert server.api("GET", "/snapshots", key=k["value"])[0] == 200
    st, listed = server.api("GET", "/api-keys")
    assert k["value"] not in str(listed) and API_KEY not in str(listed)
    assert server.api("DELETE", f"/api-keys/{k['id']}")[0] == 204
    assert server.api("GET", "/snapshots", key=k["value"])[0] == 401
    db = (server.data_dir / "cove.db").read_bytes()
    assert API_KEY.encode() not in db and k["value"].encode() not in db


def test_a_generated_bootstrap_key_is_printed_once_and_works(cove, short_tmp):
    from harness import Cove

    srv = Cove(short_tmp / "gen", None).start(env_key=None)
    try:
        out = wait_until(lambda: "DAYTONA_API_KEY=" in srv.log_path.read_text() and srv.log_path.read_text(), 10, what="key banner")
        key = out.split("DAYTONA_API_KEY=")[1].split()[0]
        assert key.startswith("cove_") and len(key) == 45
        assert srv.api("GET", "/snapshots", key=key)[0] == 200
        srv.kill()
        srv.start(env_key=None)
        assert srv.log_path.read_text().count(key) == 2, "the key is printed (in two lines) only at first start"
        assert srv.api("GET", "/snapshots", key=key)[0] == 200
    finally:
        srv.cleanup()


# --- validation ------------------------------------------------------------------------------

# Every request below is refused before anything is pulled, so Docker Hub's names can stand
# for what users type.

@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"name": "x", "imageName": "ubuntu"}, 400, "must include a tag"),
        ({"name": "x", "imageName": "ubuntu:latest"}, 400, '"latest"'),
        ({"name": "x", "imageName": "ubuntu:stable"}, 400, '"stable"'),
        ({"name": "x", "imageName": "Ubuntu:22.04"}, 400, "invalid image name"),
        ({"name": "bad name", "imageName": "ubuntu:22.04"}, 400, "invalid snapshot name"),
        ({"name": "x"}, 400, "imageName is required"),
        ({"name": "x", "imageName": "ubuntu:22.04", "cpu": 0}, 400, "cpu must be between"),
        ({"name": "x", "imageName": "ubuntu:22.04", "memory": 100000}, 400, "memory must be between"),
        ({"name": "x", "imageName": "ubuntu:22.04", "cpu": "2"}, 400, "invalid request body"),
        ({"name": "x", "imageName": "ubuntu:22.04", "regionId": "mars"}, 404, "serves: us, eu, us-east-1"),
        ({"name": "x", "imageName": "ubuntu:22.04", "sandboxClass": "windows"}, 400, "not supported"),
        ({"name": "x", "buildInfo": {"dockerfileContent": "RUN true\n"}}, 400, "invalid Dockerfile"),
        ({"name": "x", "buildInfo": {"dockerfileContent": "  \n"}}, 400, "dockerfileContent is empty"),
        ({"name": "x", "buildInfo": {"dockerfileContent": "FROM a:1\n", "contextHashes": ["../x"]}}, 400, "invalid context hash"),
        ({"name": "x", "imageName": "a:1", "buildInfo": {"dockerfileContent": "FROM a:1"}}, 400, "image name"),
    ],
)
def test_bad_create_requests_are_refused_with_a_message_naming_the_problem(server, body, status, needle):
    st, resp = server.api("POST", "/snapshots", body)
    assert st == status, resp
    assert needle in resp["message"], resp
    assert server.api("GET", "/snapshots")[1]["total"] == 0, "nothing is stored"


def test_a_body_that_is_not_json_is_a_400(server):
    st, resp = server.api("POST", "/snapshots", raw=b"{not json")
    assert st == 400 and "invalid request body" in resp["message"]


@pytest.mark.parametrize("query,needle", [("page=0", "page"), ("limit=0", "limit"), ("limit=500", "limit"), ("page=abc", "invalid query"), ("sort=size", "sort"), ("order=up", "order")])
def test_bad_list_parameters_are_refused(server, query, needle):
    st, resp = server.api("GET", f"/snapshots?{query}")
    assert st == 400 and needle in resp["message"], resp


def test_a_page_past_the_end_is_empty(server):
    create(server, "only")
    st, page = server.api("GET", "/snapshots?page=5&limit=10")
    assert st == 200 and page["items"] == [] and page["total"] == 1 and page["totalPages"] == 1


# --- what a pull puts on disk -----------------------------------------------------------------


def test_layers_are_applied_in_order_with_whiteouts_modes_and_links(server):
    snap = create(server, "disk")
    snap = server.wait_state(snap["id"])
    assert snap["state"] == "active", snap
    rootfs = server.data_dir / "images" / snap["ref"].split(":")[1] / "rootfs"
    assert not (rootfs / "etc/motd").exists(), "the second layer's whiteout removed it"
    assert (rootfs / "etc/cove-fixture").read_text() == "cove\n"
    assert os.readlink(rootfs / "bin/sh") == "busybox"
    assert os.stat(rootfs / "bin/busybox").st_mode & 0o777 == 0o755
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    assert (server.data_dir / "images" / snap["ref"].split(":")[1] / ".complete").exists()
    out = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", "echo hi from $(uname -s)"], capture_output=True, text=True)
    assert out.stdout.strip() == "hi from Linux", out


def test_an_index_resolves_to_its_linux_amd64_manifest(server):
    snap = server.wait_state(create(server, "multi", MULTIARCH)["id"])
    assert snap["state"] == "active", snap


def test_an_image_without_amd64_fails_with_the_platform_advice(server):
    snap = server.wait_state(create(server, "arm", ARM64_ONLY)["id"])
    assert snap["state"] == "error"
    assert "linux/arm64" in snap["errorReason"] and "--platform=linux/amd64" in snap["errorReason"]


def test_an_unreachable_registry_is_reported_as_such(server):
    snap = server.wait_state(create(server, "offline", "127.0.0.1:9/some/image:1.0")["id"])
    assert snap["state"] == "error"
    assert "cannot reach" in snap["errorReason"] and "127.0.0.1:9" in snap["errorReason"]


def test_a_private_registry_without_credentials_fails_naming_the_auth_problem(cove, tmp_path):
    ht = tmp_path / "htpasswd"
    ht.write_text(subprocess.run(["htpasswd", "-Bbn", "user", "secret"], capture_output=True, text=True, check=True).stdout)
    private = Registry(tmp_path / "private", htpasswd=ht)
    try:
        mkimage.push_image(private.url, "team/app", ["1.0"], auth="user:secret")
        host = private.url.removeprefix("http://")
        server = cove(extra=["--insecure-registry", host])
        snap = server.wait_state(create(server, "private", f"{host}/team/app:1.0")["id"])
        assert snap["state"] == "error"
        assert "unauthorized" in snap["errorReason"] and "no credentials" in snap["errorReason"], snap
    finally:
        private.stop()


def test_a_registry_given_by_host_is_pulled_directly_when_marked_insecure(cove, registry):
    host = registry.url.removeprefix("http://")
    server = cove(extra=["--insecure-registry", host])
    snap = server.wait_state(create(server, "direct", f"{host}/busybox:1")["id"])
    assert snap["state"] == "active", snap


def test_concurrent_snapshots_of_one_image_download_and_unpack_it_once(server):
    ids = []
    threads = [threading.Thread(target=lambda i=i: ids.append(create(server, f"same-{i}", BUSYBOX_2)["id"])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refs = {server.wait_state(i)["ref"] for i in ids}
    assert len(refs) == 1
    assert len(list((server.data_dir / "images").iterdir())) == 1
    # 2 layers + config + manifest, each stored once.
    assert len(list((server.data_dir / "blobs/sha256").iterdir())) == 4


def test_deactivate_and_activate_follow_the_state_machine(server):
    snap = server.wait_state(create(server, "sm")["id"])
    assert server.api("POST", f"/snapshots/{snap['id']}/deactivate")[0] == 204
    assert server.api("POST", f"/snapshots/{snap['id']}/deactivate")[0] == 204, "idempotent"
    st, body = server.api("POST", f"/snapshots/{snap['id']}/activate")
    assert st == 200 and body["state"] == "active"
    bad = server.wait_state(create(server, "broken", f"{FIXTURES}/busybox:9.9.9-missing")["id"])
    st, body = server.api("POST", f"/snapshots/{bad['id']}/activate")
    assert st == 400 and "only inactive snapshots" in body["message"]
    st, body = server.api("POST", f"/snapshots/{bad['id']}/deactivate")
    assert st == 400


def test_unused_snapshots_go_inactive_and_can_be_activated_again(cove):
    server = cove(extra=["--snapshot-inactive-after-secs", "2", "--inactivity-sweep-secs", "1"])
    snap = server.wait_state(create(server, "idle")["id"])
    assert snap["state"] == "active"
    server.wait_state(snap["id"], states=("inactive",), timeout=15)
    st, body = server.api("POST", f"/snapshots/{snap['id']}/activate")
    assert st == 200 and body["state"] == "active"


def test_deleting_everything_leaves_no_image_or_blob_behind(server):
    a = server.wait_state(create(server, "a", BUSYBOX)["id"])
    b = server.wait_state(create(server, "b", BUSYBOX_2)["id"])
    assert server.api("DELETE", f"/snapshots/{a['id']}")[0] == 200
    assert server.api("GET", f"/snapshots/{a['id']}")[0] == 404
    wait_until(lambda: len(list((server.data_dir / "images").iterdir())) == 1, 10, what="a's image to go")
    assert (server.data_dir / "images" / b["ref"].split(":")[1] / "rootfs").exists(), "b's image stays"
    assert server.api("DELETE", "/snapshots/b")[0] == 200
    wait_until(lambda: not list((server.data_dir / "images").iterdir()), 10, what="all images to go")
    wait_until(lambda: not list((server.data_dir / "blobs/sha256").iterdir()), 10, what="all blobs to go")


# --- durability -------------------------------------------------------------------------------


def test_snapshots_and_keys_survive_a_restart(server):
    snap = server.wait_state(create(server, "durable")["id"])
    server.kill()
    server.start()
    st, body = server.api("GET", f"/snapshots/{snap['id']}")
    assert st == 200 and body["state"] == "active" and body["ref"] == snap["ref"]


def test_a_server_killed_during_pulls_ends_every_snapshot_active_or_error(server, big_image):
    rng = random.Random(7)
    ids = []
    for round_ in range(4):
        snap = create(server, f"crash-{round_}", big_image)
        ids.append(snap["id"])
        if round_ == 0:
            # Kill exactly while it is pulling.
            server.wait_state(snap["id"], states=("pulling",), timeout=20)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        server.kill()
        server.start()
        # Startup removed debris: no staging dir and no image without its marker is left.
        assert not list((server.data_dir / "tmp").iterdir())
        for d in (server.data_dir / "images").iterdir():
            assert (d / ".complete").exists() or not d.exists()
    for i in ids:
        snap = server.wait_state(i, timeout=120)
        assert snap["state"] == "active", snap
    rootfs = server.data_dir / "images" / snap["ref"].split(":")[1] / "rootfs"
    assert (rootfs / "data/random.bin").stat().st_size == 48 << 20
    assert (rootfs / "etc/cove-fixture").read_text() == "big\n"


def test_bearer_token_auth_is_negotiated_from_the_registry_challenge(cove, registry):
    from harness import TokenAuthFront

    front = TokenAuthFront(registry.url)
    try:
        server = cove(extra=["--insecure-registry", front.host])
        snap = server.wait_state(create(server, "tokened", f"{front.host}/busybox:1")["id"])
        assert snap["state"] == "active", snap
        assert front.token_requests, "the client asked the realm for a token"
        assert "repository%3Abusybox%3Apull" in front.token_requests[0] or "repository:busybox:pull" in front.token_requests[0]
    finally:
        front.stop()


def test_a_token_realm_that_wants_credentials_fails_the_pull_as_unauthorized(cove, registry):
    from harness import TokenAuthFront

    front = TokenAuthFront(registry.url, basic="user:secret")
    try:
        server = cove(extra=["--insecure-registry", front.host])
        snap = server.wait_state(create(server, "denied", f"{front.host}/busybox:1")["id"])
        assert snap["state"] == "error"
        assert snap["errorReason"].startswith(f"unauthorized to pull image {front.host}/busybox:1"), snap
    finally:
        front.stop()
