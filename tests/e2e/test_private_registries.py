"""Private registries (`/api/docker-registry`): CRUD as Daytona's contract has it, Cove's
provider types, pulls that pick the matching record's credentials, secrets that never leave
the server in plain text, and ECR through a local STS/ECR emulator (moto)."""

import json
import shutil
import stat
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
import mkimage  # noqa: E402
from harness import Registry  # noqa: E402

USER = "cove-puller"
# Unique per run, so finding it anywhere (log, database) can only mean a leak.
SECRET = "pw-" + uuid.uuid4().hex
ECR_ACCOUNT = "123456789012"  # moto's default account, where its roles live
ECR_HOST = f"{ECR_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
# moto's GetAuthorizationToken always answers AWS:<account>-auth-token.
ECR_PASSWORD = f"{ECR_ACCOUNT}-auth-token"


def htpasswd_line(user, password):
    out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
    return out.stdout.strip() + "\n"


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """Debian's docker-registry with htpasswd (bcrypt) auth: our user, and the user and
    password moto's ECR tokens carry."""
    if not shutil.which("htpasswd"):
        pytest.fail("htpasswd is not installed: run scripts/setup.sh (apache2-utils)")
    d = tmp_path_factory.mktemp("private")
    ht = d / "htpasswd"
    ht.write_text(htpasswd_line(USER, SECRET) + htpasswd_line("AWS", ECR_PASSWORD))
    reg = Registry(d / "reg", htpasswd=ht)
    mkimage.push_image(reg.url, "team/app", ["1.0"], auth=f"{USER}:{SECRET}", seed="team")
    mkimage.push_image(reg.url, "private/app", ["1.0"], auth=f"{USER}:{SECRET}", seed="private")
    reg.host = reg.url.removeprefix("http://")
    yield reg
    reg.stop()


def snapshot(server, name, image, key=None):
    kw = {"key": key} if key else {}
    st, body = server.api("POST", "/snapshots", {"name": name, "imageName": image}, **kw)
    assert st == 200, body
    return server.wait_state(body["id"], **kw)


def add(server, key=None, **body):
    kw = {"key": key} if key else {}
    return server.api("POST", "/docker-registry", body, **kw)


def assert_no_secret(obj):
    text = json.dumps(obj)
    assert SECRET not in text and "password" not in text, text


def assert_secret_not_on_disk(server):
    files = [server.data_dir / "cove.db", server.data_dir / "cove.db-wal", server.log_path]
    for f in files:
        if f.exists():
            assert SECRET.encode() not in f.read_bytes(), f"the plain password is in {f}"
    assert (server.data_dir / "cove.db").exists()


def test_without_credentials_a_private_image_fails_as_unauthorized_naming_the_host(cove, private):
    server = cove(extra=["--insecure-registry", private.host])
    snap = snapshot(server, "nocreds", f"{private.host}/team/app:1.0")
    assert snap["state"] == "error"
    reason = snap["errorReason"]
    assert "unauthorized" in reason and private.host in reason, reason
    assert "no docker registry of this organization matches" in reason, reason


def test_a_generic_registry_makes_the_pull_active_and_its_password_never_leaves_the_server(cove, private):
    server = cove(extra=["--insecure-registry", private.host])
    st, created = add(server, name="fixture", url=f"http://{private.host}/", username=USER, password=SECRET)
    assert st == 201, created
    assert_no_secret(created)
    assert created["url"] == private.host, "scheme and trailing slash are normalised away"
    assert created["registryType"] == "organization" and created["provider"] == "generic"
    assert created["project"] == "" and created["username"] == USER and "roleArn" not in created
    assert created["createdAt"].endswith("Z") and created["updatedAt"].endswith("Z")

    st, got = server.api("GET", f"/docker-registry/{created['id']}")
    assert st == 200 and got == created
    st, listed = server.api("GET", "/docker-registry")
    assert st == 200 and listed == [created]
    st, patched = server.api("PATCH", f"/docker-registry/{created['id']}", {"name": "fixture", "url": private.host, "username": USER, "password": SECRET})
    assert st == 200, patched
    assert_no_secret(patched)
    for body in (got, listed):
        assert_no_secret(body)

    snap = snapshot(server, "withcreds", f"{private.host}/team/app:1.0")
    assert snap["state"] == "active", snap

    key_file = server.data_dir / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.stat().st_size == 32
    assert_secret_not_on_disk(server)


def test_a_dockerhub_registry_is_used_for_docker_hub_images_through_the_mirror(cove, private):
    # This test is about mirrors: Docker Hub mirrored (as an admin may configure it) to the
    # htpasswd fixture, so a `dockerhub` record's credentials must be sent to the mirror.
    # `private/app:1.0` is a Docker Hub name on purpose; only this server mirrors docker.io.
    server = cove(docker_hub_mirror=private.url)
    denied = snapshot(server, "hub-denied", "private/app:1.0")
    assert denied["state"] == "error" and "unauthorized" in denied["errorReason"], denied
    st, created = add(server, type="dockerhub", name="hub", username=USER, password=SECRET)
    assert st == 201, created
    assert created["url"] == "docker.io" and created["provider"] == "dockerhub"
    assert_no_secret(created)
    snap = snapshot(server, "hub-ok", "private/app:1.0")
    assert snap["state"] == "active", snap
    assert_secret_not_on_disk(server)


def test_patch_without_a_password_keeps_it_and_delete_makes_pulls_fail_again(cove, private):
    server = cove(extra=["--insecure-registry", private.host])
    st, reg = add(server, name="wrong", url=private.host, username=USER, password="not-the-password")
    assert st == 201
    bad = snapshot(server, "bad-pw", f"{private.host}/team/app:1.0")
    assert bad["state"] == "error"
    assert "unauthorized" in bad["errorReason"] and 'registry "wrong"' in bad["errorReason"], bad
    assert reg["id"] in bad["errorReason"]

    st, fixed = server.api("PATCH", f"/docker-registry/{reg['id']}", {"name": "wrong", "url": private.host, "username": USER, "password": SECRET})
    assert st == 200, fixed
    assert snapshot(server, "good-pw", f"{private.host}/team/app:1.0")["state"] == "active"

    # The SDK's UpdateDockerRegistry without a password: the stored one stays.
    st, renamed = server.api("PATCH", f"/docker-registry/{reg['id']}", {"name": "renamed", "url": private.host, "username": USER})
    assert st == 200 and renamed["name"] == "renamed", renamed
    assert renamed["createdAt"] == reg["createdAt"]
    assert snapshot(server, "kept-pw", f"{private.host}/team/app:1.0")["state"] == "active"

    assert server.api("DELETE", f"/docker-registry/{reg['id']}")[0] == 204
    assert server.api("GET", f"/docker-registry/{reg['id']}")[0] == 404
    assert server.api("DELETE", f"/docker-registry/{reg['id']}")[0] == 404
    gone = snapshot(server, "deleted-reg", f"{private.host}/team/app:1.0")
    assert gone["state"] == "error" and "no docker registry of this organization matches" in gone["errorReason"], gone
    assert_secret_not_on_disk(server)


def test_another_organization_gets_404_and_does_not_use_the_registry(cove, private):
    server = cove(extra=["--insecure-registry", private.host])
    st, reg = add(server, name="mine", url=private.host, username=USER, password=SECRET)
    assert st == 201
    st, org = server.api("POST", "/organizations", {"name": "other team"})
    assert st == 200, org
    other = org["apiKey"]["value"]
    assert server.api("GET", f"/docker-registry/{reg['id']}", key=other)[0] == 404
    assert server.api("PATCH", f"/docker-registry/{reg['id']}", {"name": "x", "url": "x.io", "username": "u"}, key=other)[0] == 404
    assert server.api("DELETE", f"/docker-registry/{reg['id']}", key=other)[0] == 404
    assert server.api("GET", "/docker-registry", key=other) == (200, [])
    theirs = snapshot(server, "theirs", f"{private.host}/team/app:1.0", key=other)
    assert theirs["state"] == "error" and "unauthorized" in theirs["errorReason"], theirs
    assert server.api("GET", f"/docker-registry/{reg['id']}")[0] == 200


def test_the_list_is_newest_first_and_each_provider_has_its_rules(server):
    ok = [
        ({"name": "gen", "url": "https://quay.io/acme", "username": "u", "password": "p"}, "quay.io/acme", "u"),
        ({"type": "github", "name": "gh", "username": "octo", "password": "ghp_x"}, "ghcr.io", "octo"),
        (
            {"type": "google", "name": "gar", "url": "https://us-docker.pkg.dev", "project": "my-proj",
             "password": json.dumps({"type": "service_account", "private_key": "k"})},
            "us-docker.pkg.dev", "_json_key",
        ),
        (
            {"type": "ecr", "name": "ecr", "url": ECR_HOST, "roleArn": f"arn:aws:iam::{ECR_ACCOUNT}:role/pull"},
            ECR_HOST, "AWS",
        ),
    ]
    ids = []
    for body, url, user in ok:
        st, r = add(server, **body)
        assert st == 201, (body, r)
        assert r["url"] == url and r["username"] == user and r["registryType"] == "organization", r
        assert r["provider"] == body.get("type", "generic")
        assert "password" not in r and "private_key" not in json.dumps(r)
        ids.append(r["id"])
    st, listed = server.api("GET", "/docker-registry")
    assert [r["id"] for r in listed] == ids[::-1]
    assert listed[0]["roleArn"] == f"arn:aws:iam::{ECR_ACCOUNT}:role/pull"
    assert listed[1]["project"] == "my-proj" and listed[1]["provider"] == "google"

    bad = [
        ({"name": "a", "url": "x.io", "username": "u"}, "password is required"),
        ({"name": "a", "url": "ftp://x.io", "username": "u", "password": "p"}, "invalid registry URL"),
        ({"name": "a", "url": "u:p@x.io", "username": "u", "password": "p"}, "invalid registry URL"),
        ({"type": "ecr", "name": "a", "url": ECR_HOST}, "roleArn is required"),
        ({"type": "ecr", "name": "a", "url": "x.io", "roleArn": f"arn:aws:iam::{ECR_ACCOUNT}:role/r"}, "dkr.ecr"),
        ({"type": "dockerhub", "name": "a", "url": "quay.io", "username": "u", "password": "p"}, "always docker.io"),
        ({"type": "google", "name": "a", "url": "us-docker.pkg.dev", "password": "{}"}, "project"),
        ({"type": "google", "name": "a", "url": "us-docker.pkg.dev", "project": "p", "password": "nope"}, "JSON key"),
        ({"type": "quay", "name": "a", "url": "x.io", "username": "u", "password": "p"}, "unknown registry type"),
        ({"name": "a", "url": "x.io", "username": "u", "password": "p", "roleArn": "arn:aws:iam::1:role/r"}, "only to ecr"),
        ({"url": "x.io", "username": "u", "password": "p"}, "name"),
    ]
    for body, words in bad:
        st, err = add(server, **body)
        assert st == 400 and words in err["message"], (body, err)
    st, err = server.api("PATCH", f"/docker-registry/{ids[0]}", {"type": "ecr"})
    assert st == 400 and "cannot be changed" in err["message"], err
    assert server.api("GET", "/docker-registry/no-such-id")[0] == 404


# --- ECR through moto ----------------------------------------------------------------------


# `moto` (the emulator, its IAM user and the role to assume) is in tests/conftest.py.


def assumed_roles(moto_url):
    with urllib.request.urlopen(moto_url + "/moto-api/data.json", timeout=5) as r:
        return json.load(r)["sts"]["AssumedRole"]


def test_an_ecr_registry_assumes_the_role_with_the_org_as_external_id_and_pulls_with_the_token(cove, private, moto, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto["secret"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # The ECR host is mirrored to the htpasswd fixture, which knows moto's token password.
    server = cove(
        extra=[
            "--sts-endpoint", moto["url"], "--ecr-endpoint", moto["url"],
            "--registry-mirror", f"{ECR_HOST}={private.url}",
        ],
    )
    st, org = server.api("POST", "/organizations", {"name": "ecr team"})
    assert st == 200, org
    key, org_id = org["apiKey"]["value"], org["id"]
    st, reg = add(server, key=key, type="ecr", name="prod-ecr", url=f"https://{ECR_HOST}", roleArn=moto["role"])
    assert st == 201, reg
    assert reg["roleArn"] == moto["role"] and reg["username"] == "AWS" and reg["url"] == ECR_HOST

    snap = snapshot(server, "from-ecr", f"{ECR_HOST}/team/app:1.0", key=key)
    assert snap["state"] == "active", snap
    roles = assumed_roles(moto["url"])
    assert roles, "the server assumed the role"
    assert all(r["role_arn"] == moto["role"] for r in roles)
    assert {r["external_id"] for r in roles} == {org_id}
    assert {r["session_name"] for r in roles} == {f"cove-{org_id}-pull"}
    log = server.log_path.read_text()
    assert moto["secret"] not in log and ECR_PASSWORD not in log


def test_an_ecr_pull_without_server_aws_credentials_says_what_is_missing(cove, private, moto, monkeypatch):
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    server = cove(extra=["--sts-endpoint", moto["url"], "--ecr-endpoint", moto["url"]])
    st, reg = add(server, type="ecr", name="no-aws", url=ECR_HOST, roleArn=moto["role"])
    assert st == 201, reg
    snap = snapshot(server, "ecr-no-aws", f"{ECR_HOST}/team/app:1.0")
    assert snap["state"] == "error"
    assert 'registry "no-aws"' in snap["errorReason"] and "AWS_ACCESS_KEY_ID" in snap["errorReason"], snap


def test_an_ecr_pull_signed_with_a_wrong_server_secret_is_refused_by_sts(cove, private, moto, monkeypatch):
    # The emulator checks signatures, so the passing ECR test above really verified SigV4.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + moto["secret"])
    server = cove(extra=["--sts-endpoint", moto["url"], "--ecr-endpoint", moto["url"]])
    st, reg = add(server, type="ecr", name="bad-sig", url=ECR_HOST, roleArn=moto["role"])
    assert st == 201, reg
    snap = snapshot(server, "ecr-bad-sig", f"{ECR_HOST}/team/app:1.0")
    assert snap["state"] == "error"
    assert "sts:AssumeRole" in snap["errorReason"] and "SignatureDoesNotMatch" in snap["errorReason"], snap
    assert moto["secret"] not in server.log_path.read_text()


def test_the_ecr_broker_endpoint_answers_the_servers_aws_identity_and_the_callers_org_as_external_id(cove, moto, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto["secret"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    server = cove(extra=["--sts-endpoint", moto["url"], "--ecr-endpoint", moto["url"]])
    st, org = server.api("POST", "/organizations", {"name": "broker team"})
    assert st == 200, org
    key, org_id = org["apiKey"]["value"], org["id"]
    sts = boto3.client("sts", endpoint_url=moto["url"], region_name="us-east-1",
                       aws_access_key_id=moto["key_id"], aws_secret_access_key=moto["secret"])
    caller = sts.get_caller_identity()
    assert caller["Arn"] == f"arn:aws:iam::{ECR_ACCOUNT}:user/cove-server", caller

    st, broker = server.api("GET", "/docker-registry/ecr-broker", key=key)
    assert st == 200, broker
    assert broker == {"principalArn": caller["Arn"], "account": ECR_ACCOUNT,
                      "externalId": org_id, "sessionName": f"cove-{org_id}-pull"}
    st, other = server.api("GET", "/docker-registry/ecr-broker")
    assert st == 200 and other["principalArn"] == caller["Arn"] and other["externalId"] != org_id, other
    assert server.api("GET", "/docker-registry/ecr-broker", key="not-a-key")[0] == 401
    assert moto["secret"] not in server.log_path.read_text()


def test_the_ecr_broker_endpoint_without_server_aws_credentials_says_which_variables_to_set(cove, monkeypatch):
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    server = cove()
    st, err = server.api("GET", "/docker-registry/ecr-broker")
    assert st == 400, err
    assert "no AWS credentials" in err["message"] and "AWS_ACCESS_KEY_ID" in err["message"], err
    assert "AWS_SECRET_ACCESS_KEY" in err["message"], err
