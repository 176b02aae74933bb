"""The `cove` command-line client end to end against a running server: the seed's CLI lines
with `cove` in place of `daytona` (snapshot create from an image and from a Dockerfile with
COPY, snapshot push of local images, list/get/activate/deactivate/delete), sandboxes,
registries and API keys."""

import hashlib
import json
import os
import re
import shutil
import ssl
import stat
import subprocess

import pytest

from harness import API_KEY, BUSYBOX, COVE_BIN


def runner(home):
    """Runs `cove …` with `home` as HOME (and its .config as XDG_CONFIG_HOME), no COVE_/DAYTONA_ variables."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "DAYTONA_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    def run(*args, check=True, timeout=180, input=None):
        p = subprocess.run([str(COVE_BIN), *args], env=env, capture_output=True, text=True, timeout=timeout, input=input)
        if check:
            assert p.returncode == 0, f"cove {' '.join(args)} exited {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
        return p

    run.home = home
    run.env = env
    return run


@pytest.fixture
def cli(s3_server, tmp_path):
    """Runs `cove …` as a user who logged in to the server (config under a private HOME)."""
    home = tmp_path / "home"
    run = runner(home)
    out = run("login", "--api-url", s3_server.url, "--api-key", API_KEY)
    assert "Logged in" in out.stdout
    run.server = s3_server
    return run


def test_login_stores_the_url_and_key_for_the_user_only(cli):
    cfg = cli.home / ".config" / "cove" / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert json.loads(cfg.read_text())["apiUrl"] == cli.server.api_url
    bad = subprocess.run(
        [str(COVE_BIN), "login", "--api-url", cli.server.url, "--api-key", "wrong"],
        env=cli.env, capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "401" in bad.stderr


def test_snapshot_create_from_an_image_then_list_get_deactivate_activate_and_delete(cli):
    out = cli("snapshot", "create", "cli-snap", "--image", BUSYBOX, "--cpu", "2", "--memory", "2")
    assert "cli-snap is active" in out.stdout
    listed = cli("snapshot", "list")
    assert "cli-snap" in listed.stdout and "NAME" in listed.stdout and "2/2/3" in listed.stdout
    got = json.loads(cli("snapshot", "get", "cli-snap", "--format", "json").stdout)
    assert got["state"] == "active" and got["cpu"] == 2
    page = json.loads(cli("snapshot", "list", "--page", "1", "--limit", "1", "--format", "json").stdout)
    assert page["items"][0]["name"] == "cli-snap"
    cli("snapshot", "deactivate", "cli-snap")
    assert json.loads(cli("snapshot", "get", "cli-snap", "--format", "json").stdout)["state"] == "inactive"
    cli("snapshot", "activate", "cli-snap")
    cli("snapshot", "delete", "cli-snap")
    missing = cli("snapshot", "get", "cli-snap", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_snapshot_create_from_a_dockerfile_uploads_what_copy_uses_and_streams_the_build(cli, tmp_path):
    ctx = tmp_path / "proj"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "hello.txt").write_text("hello from the context\n")
    (ctx / "unused.bin").write_bytes(b"x" * 1000)
    (ctx / "Dockerfile").write_text(
        f"FROM {BUSYBOX}\nCOPY app/hello.txt /srv/\nRUN cat /srv/hello.txt && echo built-by-cli\n"
        'ENTRYPOINT ["sleep", "infinity"]\n'
    )
    out = cli("snapshot", "create", "from-df", "--dockerfile", str(ctx / "Dockerfile"))
    assert "hello from the context" in out.stderr and "built-by-cli" in out.stderr, out.stderr
    assert "Step 2/4" in out.stderr, out.stderr
    assert "1 files" in out.stderr, "only the file COPY uses is uploaded"
    sb = json.loads(cli("sandbox", "create", "--snapshot", "from-df", "--format", "json").stdout)
    r = cli("sandbox", "exec", sb["id"], "--", "cat", "/srv/hello.txt")
    assert r.stdout == "hello from the context\n"
    cli("sandbox", "delete", sb["id"])


def ca_fingerprint(pem_path):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


def test_login_pins_the_servers_ca_so_a_dockerfile_build_needs_no_trust_store_change(cove, tmp_path):
    server = cove()  # its CA is made at start and installed in no trust store
    fp = ca_fingerprint(server.data_dir / "tls" / "ca.pem")
    other = tmp_path / "other"
    subprocess.run([str(COVE_BIN), "tls", "init", "--data-dir", str(other)], check=True, capture_output=True)
    other_fp = ca_fingerprint(other / "tls" / "ca.pem")
    run = runner(tmp_path / "home")
    cfg = run.home / ".config" / "cove" / "config.json"
    login = ("login", "--api-url", server.url, "--api-key", API_KEY)

    wrong = run(*login, "--ca-file", str(other / "tls" / "ca.pem"), check=False)
    assert wrong.returncode != 0 and "fingerprint mismatch" in wrong.stderr, wrong.stderr
    assert fp in wrong.stderr and other_fp in wrong.stderr, wrong.stderr
    assert not cfg.exists(), "a refused login saves nothing"

    out = run(*login)
    assert f"sha256 {fp}" in out.stdout, out.stdout
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert json.loads(cfg.read_text())["ca"]["sha256"] == fp
    run(*login, "--ca-file", str(server.data_dir / "tls" / "ca.pem"))  # the same CA given out of band

    ctx = tmp_path / "proj"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("pinned\n")
    (ctx / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY hello.txt /srv/\nRUN cat /srv/hello.txt\n")
    built = run("snapshot", "create", "pinned-df", "--dockerfile", str(ctx / "Dockerfile"))
    assert "pinned" in built.stderr, built.stderr

    # Without the pin, the same upload fails, and the advice is about this machine's login.
    saved = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({k: v for k, v in saved.items() if k != "ca"}))
    (ctx / "hello.txt").write_text("changed, so the context is uploaded again\n")
    unpinned = run("snapshot", "create", "unpinned-df", "--dockerfile", str(ctx / "Dockerfile"), check=False)
    assert unpinned.returncode != 0 and "cove login" in unpinned.stderr, unpinned.stderr
    assert "server's machine" not in unpinned.stderr

    # A CA other than the pinned one is shown and needs --trust-new-ca.
    cfg.write_text(json.dumps(dict(saved, ca={"certificate": (other / "tls" / "ca.pem").read_text(), "sha256": other_fp})))
    changed = run(*login, check=False)
    assert changed.returncode != 0 and "--trust-new-ca" in changed.stderr, changed.stderr
    assert f"pinned sha256 {other_fp}, now sha256 {fp}" in changed.stderr, changed.stderr
    assert json.loads(cfg.read_text())["ca"]["sha256"] == other_fp, "nothing saved"
    accepted = run(*login, "--trust-new-ca")
    assert f"new CA, sha256 {fp}" in accepted.stdout, accepted.stdout
    assert json.loads(cfg.read_text())["ca"]["sha256"] == fp


def test_a_failing_dockerfile_build_exits_non_zero_with_the_reason(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN echo doomed; exit 4\n")
    out = cli("snapshot", "create", "doomed", "--dockerfile", str(tmp_path / "Dockerfile"), check=False)
    assert out.returncode != 0
    assert "build_failed" in out.stderr and "exit code 4" in out.stderr and "doomed" in out.stderr, out.stderr
    missing = cli("snapshot", "create", "nofile", "--dockerfile", str(tmp_path / "Dockerfile"), "--context", "/etc", check=False)
    assert missing.returncode != 0 and "outside" in missing.stderr


def test_sandbox_create_list_exec_and_delete(cli):
    cli("snapshot", "create", "sb-snap", "--image", BUSYBOX)
    sb = json.loads(cli("sandbox", "create", "--snapshot", "sb-snap", "--env", "GREETING=hi there", "--format", "json").stdout)
    assert sb["state"] == "started"
    assert sb["id"] in cli("sandbox", "list").stdout
    assert cli("sandbox", "exec", sb["id"], "--", "echo $GREETING").stdout == "hi there\n"
    failed = cli("sandbox", "exec", sb["id"], "--", "sh", "-c", "echo nope; exit 3", check=False)
    assert failed.returncode == 3 and failed.stdout == "nope\n"
    cli("sandbox", "delete", sb["id"])
    assert sb["id"] not in cli("sandbox", "list").stdout


def test_sandbox_create_docker_in_docker_sets_the_engine_label_and_the_server_gives_the_rights(cli):
    cli("snapshot", "create", "dind-snap", "--image", BUSYBOX)
    sb = json.loads(cli("sandbox", "create", "--snapshot", "dind-snap", "--docker-in-docker", "true",
                        "--format", "json").stdout)
    assert sb["labels"]["dev.cove.container-engine"] == "true", sb
    # Engine mode: the capabilities of the sandbox's own namespace, writable cgroups.
    caps = cli("sandbox", "exec", sb["id"], "--", "grep CapEff /proc/self/status").stdout
    assert int(caps.split()[1], 16) & (1 << 21), f"CAP_SYS_ADMIN in its namespace: {caps}"
    assert cli("sandbox", "exec", sb["id"], "--", "mount | grep ' /var/lib/docker '").stdout.strip()
    plain = json.loads(cli("sandbox", "create", "--snapshot", "dind-snap", "--format", "json").stdout)
    caps = cli("sandbox", "exec", plain["id"], "--", "grep CapEff /proc/self/status").stdout
    assert not int(caps.split()[1], 16) & (1 << 21), f"no CAP_SYS_ADMIN without engine mode: {caps}"
    bad = cli("sandbox", "create", "--snapshot", "dind-snap", "--docker-in-docker", "true",
              "--label", "dev.cove.container-engine=false", check=False)
    assert bad.returncode != 0 and "contradicts" in bad.stderr, bad.stderr
    odd = cli("sandbox", "create", "--snapshot", "dind-snap", "--label", "dev.cove.container-engine=maybe", check=False)
    assert odd.returncode != 0 and "dev.cove.container-engine" in odd.stderr, odd.stderr
    for s in (sb, plain):
        cli("sandbox", "delete", s["id"])


def test_api_keys_are_created_listed_and_revoked(cli):
    made = json.loads(cli("api-key", "create", "ci", "--format", "json").stdout)
    assert made["value"]
    listed = cli("api-key", "list").stdout
    assert "ci" in listed and made["value"] not in listed
    cli("api-key", "revoke", made["id"])
    assert made["id"] not in cli("api-key", "list").stdout


def test_delete_all_removes_every_snapshot(cli):
    for n in ("a1", "a2"):
        cli("snapshot", "create", n, "--image", BUSYBOX)
    out = cli("snapshot", "delete", "--all")
    assert "Deleted 2 snapshots" in out.stdout
    assert json.loads(cli("snapshot", "list", "--format", "json").stdout)["total"] == 0


def host_of(url):
    return url.split("://", 1)[1].rstrip("/")


def skopeo(*args):
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_snapshot_push_from_an_oci_layout_and_a_docker_archive_becomes_active_and_runs(cli, registry, tmp_path):
    src = f"docker://{host_of(registry.url)}/busybox:1"
    skopeo("copy", "--src-tls-verify=false", src, f"oci:{tmp_path / 'layout'}:1")
    out = cli("snapshot", "push", f"oci:{tmp_path / 'layout'}:1", "--name", "pushed-oci", "--cpu", "1")
    assert "pushed-oci is active" in out.stdout, out.stdout + out.stderr
    assert "MB/s" in out.stderr
    sb = json.loads(cli("sandbox", "create", "--snapshot", "pushed-oci", "--format", "json").stdout)
    assert cli("sandbox", "exec", sb["id"], "--", "echo pushed-and-running").stdout == "pushed-and-running\n"
    cli("sandbox", "delete", sb["id"])

    skopeo("copy", "--src-tls-verify=false", src, f"docker-archive:{tmp_path / 'img.tar'}:custom-busybox:1.0")
    out = cli("snapshot", "push", f"docker-archive:{tmp_path / 'img.tar'}", "--name", "pushed-archive")
    assert "pushed-archive is active" in out.stdout, out.stdout + out.stderr
    got = json.loads(cli("snapshot", "get", "pushed-archive", "--format", "json").stdout)
    assert got["imageName"].endswith(":1.0"), got["imageName"]


def test_snapshot_push_skips_blobs_the_repository_has_and_names_a_blob_whose_digest_is_wrong(cli, registry, tmp_path):
    layout = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{host_of(registry.url)}/busybox:1", f"oci:{layout}:1")
    # The same image already in the repository `--name again` pushes to (a name without an
    # organization id is the caller's).
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"cli:{API_KEY}", f"oci:{layout}:1",
           f"docker://{host_of(cli.server.url)}/again:1")
    out = cli("snapshot", "push", f"oci:{layout}:1", "--name", "again")
    assert "again is active" in out.stdout, out.stdout + out.stderr
    m = re.search(r"(\d+) of (\d+) blobs were already in the registry", out.stderr)
    assert m and m.group(1) == m.group(2) != "0", out.stderr

    bad = tmp_path / "bad"
    shutil.copytree(layout, bad)
    layer = max((bad / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    layer.write_bytes(bytes(b ^ 0xFF for b in layer.read_bytes()))  # same size, other bytes
    r = cli("snapshot", "push", f"oci:{bad}:1", "--name", "corrupt", check=False)
    assert r.returncode != 0 and f"sha256:{layer.name}" in r.stderr, r.stderr
    assert "DIGEST_INVALID" in r.stderr, r.stderr
    assert "corrupt" not in cli("snapshot", "list").stdout


def test_snapshot_push_refuses_an_arm64_image_with_the_platform_advice(cli, registry, tmp_path):
    src = f"docker://{host_of(registry.url)}/arm64-only:1.0"
    skopeo("copy", "--src-tls-verify=false", "--override-arch", "arm64", src, f"oci:{tmp_path / 'arm'}:1.0")
    out = cli("snapshot", "push", f"oci:{tmp_path / 'arm'}:1.0", "--name", "armsnap", check=False)
    assert out.returncode != 0
    assert "--platform=linux/amd64" in out.stderr and "arm64" in out.stderr, out.stderr
    assert "armsnap" not in cli("snapshot", "list").stdout


def test_snapshot_push_without_a_docker_engine_says_how_to_push_instead(cli):
    if os.path.exists("/var/run/docker.sock"):
        pytest.skip("a Docker engine is running here; the engine path is tested separately")
    out = cli("snapshot", "push", "custom-alpine:3.21", "--name", "alpine-minimal", check=False)
    assert out.returncode != 0 and "oci:DIR" in out.stderr and "docker-archive:FILE" in out.stderr, out.stderr


def test_registries_are_added_listed_without_secrets_and_deleted(cli):
    made = json.loads(cli(
        "registry", "add", "--type", "generic", "--name", "corp", "--url", "registry.corp.example:5000",
        "--username", "bot", "--password", "s3cret-value", "--format", "json",
    ).stdout)
    assert "s3cret-value" not in json.dumps(made)
    listed = cli("registry", "list")
    assert "corp" in listed.stdout and "s3cret-value" not in listed.stdout
    hub = cli("registry", "add", "--type", "dockerhub", "--name", "hub", "--username", "me", "--password", "-",
              input="pat-123\n", check=False)
    assert hub.returncode == 0, hub.stderr
    assert "docker.io" in cli("registry", "list").stdout
    cli("registry", "delete", "corp")
    assert "corp" not in cli("registry", "list").stdout


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A Docker engine of its own (Debian's docker.io), on a private socket."""
    import shutil
    import urllib.request  # noqa: F401

    exe = shutil.which("dockerd")
    if not exe:
        pytest.skip("dockerd (Debian's docker.io) is not installed")
    d = tmp_path_factory.mktemp("dockerd")
    sock = d / "docker.sock"
    log = open(d / "dockerd.log", "w")
    proc = subprocess.Popen(
        [exe, "--data-root", str(d / "root"), "--exec-root", str(d / "exec"), "--host", f"unix://{sock}",
         "--pidfile", str(d / "dockerd.pid"), "--iptables=false", "--bridge=none"],
        stdout=log, stderr=log,
    )
    from harness import wait_until

    def up():
        if proc.poll() is not None:
            raise AssertionError((d / "dockerd.log").read_text()[-2000:])
        return subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True).returncode == 0

    wait_until(up, 60, what="dockerd")
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(30)
    log.close()


def test_the_seeds_push_flow_from_a_docker_engine(cli, registry, dockerd, tmp_path):
    archive = tmp_path / "alpine.tar"
    skopeo("copy", "--src-tls-verify=false", f"docker://{host_of(registry.url)}/busybox:1",
           f"docker-archive:{archive}:custom-alpine:3.21")
    docker = ["docker", "-H", dockerd]
    subprocess.run([*docker, "load", "-i", str(archive)], check=True, capture_output=True)
    images = subprocess.run([*docker, "images"], check=True, capture_output=True, text=True).stdout
    assert "custom-alpine" in images and "3.21" in images
    cli.env["DOCKER_HOST"] = dockerd
    out = cli("snapshot", "push", "custom-alpine:3.21", "--name", "alpine-minimal")
    assert "alpine-minimal is active" in out.stdout, out.stdout + out.stderr
    sb = json.loads(cli("sandbox", "create", "--snapshot", "alpine-minimal", "--format", "json").stdout)
    assert cli("sandbox", "exec", sb["id"], "--", "echo from-docker").stdout == "from-docker\n"
    cli("sandbox", "delete", sb["id"])


def test_docker_push_into_the_built_in_registry_then_a_snapshot_of_it(cli, registry, dockerd, tmp_path):
    archive = tmp_path / "img.tar"
    skopeo("copy", "--src-tls-verify=false", f"docker://{host_of(registry.url)}/busybox:1",
           f"docker-archive:{archive}:local/app:2.0")
    here = host_of(cli.server.url)
    org = cli.server.api("GET", "/object-storage/push-access")[1]["organizationId"]
    env = dict(cli.env, DOCKER_CONFIG=str(tmp_path / "docker-config"))
    docker = ["docker", "-H", dockerd]

    def run(*args, input=None):
        p = subprocess.run([*docker, *args], env=env, capture_output=True, text=True, input=input, timeout=120)
        assert p.returncode == 0, p.stderr
        return p

    run("load", "-i", str(archive))
    run("login", here, "-u", "anyone", "--password-stdin", input=API_KEY)
    run("tag", "local/app:2.0", f"{here}/{org}/app:2.0")
    run("push", f"{here}/{org}/app:2.0")
    import base64
    import urllib.request

    auth = base64.b64encode(f"x:{API_KEY}".encode()).decode()
    req = urllib.request.Request(f"{cli.server.url}/v2/{org}/app/tags/list", headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["tags"] == ["2.0"]
    out = cli("snapshot", "create", "from-docker-push", "--image", f"{here}/{org}/app:2.0")
    assert "from-docker-push is active" in out.stdout
