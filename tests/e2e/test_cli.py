"""The `cove` command-line client end to end against a running server: the seed's CLI lines
with `cove` in place of `daytona` (snapshot create from an image and from a Dockerfile with
COPY, snapshot push of local images, list/get/activate/deactivate/delete), sandboxes,
registries and API keys."""

import json
import os
import stat
import subprocess

import pytest

from harness import API_KEY, COVE_BIN


@pytest.fixture
def cli(s3_server, tmp_path):
    """Runs `cove …` as a user who logged in to the server (config under a private HOME)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "DAYTONA_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))

    def run(*args, check=True, timeout=180, input=None):
        p = subprocess.run([str(COVE_BIN), *args], env=env, capture_output=True, text=True, timeout=timeout, input=input)
        if check:
            assert p.returncode == 0, f"cove {' '.join(args)} exited {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}"
        return p

    out = run("login", "--api-url", s3_server.url, "--api-key", API_KEY)
    assert "Logged in" in out.stdout
    run.server = s3_server
    run.home = home
    run.env = env
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
    out = cli("snapshot", "create", "cli-snap", "--image", "python:3.12", "--cpu", "2", "--memory", "2")
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
        "FROM python:3.12\nCOPY app/hello.txt /srv/\nRUN cat /srv/hello.txt && echo built-by-cli\n"
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


def test_a_failing_dockerfile_build_exits_non_zero_with_the_reason(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.12\nRUN echo doomed; exit 4\n")
    out = cli("snapshot", "create", "doomed", "--dockerfile", str(tmp_path / "Dockerfile"), check=False)
    assert out.returncode != 0
    assert "build_failed" in out.stderr and "exit code 4" in out.stderr and "doomed" in out.stderr, out.stderr
    missing = cli("snapshot", "create", "nofile", "--dockerfile", str(tmp_path / "Dockerfile"), "--context", "/etc", check=False)
    assert missing.returncode != 0 and "outside" in missing.stderr


def test_sandbox_create_list_exec_and_delete(cli):
    cli("snapshot", "create", "sb-snap", "--image", "python:3.12")
    sb = json.loads(cli("sandbox", "create", "--snapshot", "sb-snap", "--env", "GREETING=hi there", "--format", "json").stdout)
    assert sb["state"] == "started"
    assert sb["id"] in cli("sandbox", "list").stdout
    assert cli("sandbox", "exec", sb["id"], "--", "echo $GREETING").stdout == "hi there\n"
    failed = cli("sandbox", "exec", sb["id"], "--", "sh", "-c", "echo nope; exit 3", check=False)
    assert failed.returncode == 3 and failed.stdout == "nope\n"
    cli("sandbox", "delete", sb["id"])
    assert sb["id"] not in cli("sandbox", "list").stdout


def test_api_keys_are_created_listed_and_revoked(cli):
    made = json.loads(cli("api-key", "create", "ci", "--format", "json").stdout)
    assert made["value"]
    listed = cli("api-key", "list").stdout
    assert "ci" in listed and made["value"] not in listed
    cli("api-key", "revoke", made["id"])
    assert made["id"] not in cli("api-key", "list").stdout


def test_delete_all_removes_every_snapshot(cli):
    for n in ("a1", "a2"):
        cli("snapshot", "create", n, "--image", "python:3.12")
    out = cli("snapshot", "delete", "--all")
    assert "Deleted 2 snapshots" in out.stdout
    assert json.loads(cli("snapshot", "list", "--format", "json").stdout)["total"] == 0
