"""Attacks on API keys and on privileged sandboxes (issue 9, holes 6 and 1), each against a
real `cove server`: one test per attack, named after what must hold."""

import hashlib
import json
import sqlite3
import urllib.request


from harness import API_KEY, BUSYBOX

SECOND_ADMIN_KEY = "second-admin-test-key"  # another prefix than API_KEY
CAP_SYS_ADMIN = 21


def keys(server, key=API_KEY):
    st, body = server.api("GET", "/api-keys", key=key)
    assert st == 200, body
    return body


def key_id(server, value, key=API_KEY):
    """The id of the key whose value is `value` (matched by its prefix, as listed)."""
    (k,) = [k for k in keys(server, key=key) if k["prefix"] == value[:10]]
    return k["id"]


def new_org_key(server, name="team b"):
    st, org = server.api("POST", "/organizations", {"name": name})
    assert st == 200, org
    return org["apiKey"]["value"]


def member_key(server, name="member"):
    """A non-admin key in the admin key's own organization."""
    st, k = server.api("POST", "/api-keys", {"name": name})
    assert st == 200, k
    return k["value"]


def restart(server, env_key=API_KEY):
    server.kill()
    return server.start(env_key=env_key)


def works(server, key):
    return server.api("GET", "/snapshots", key=key)[0] == 200


# --- API keys (hole 6) ----------------------------------------------------------------------


def test_keys_of_another_organization_cannot_revoke_or_even_see_the_admin_key(server):
    admin_id = key_id(server, API_KEY)
    other = new_org_key(server)
    assert admin_id not in json.dumps(keys(server, key=other))
    st, body = server.api("DELETE", f"/api-keys/{admin_id}", key=other)
    assert st == 404, body
    assert body["message"] == f"api key {admin_id} not found", "indistinguishable from an absent key"
    assert works(server, API_KEY)
    restart(server)
    assert works(server, API_KEY) and works(server, other)


def test_a_member_key_of_the_admin_organization_cannot_revoke_the_admin_key(server):
    admin_id = key_id(server, API_KEY)
    member = member_key(server)
    st, body = server.api("DELETE", f"/api-keys/{admin_id}", key=member)
    assert st == 403, body
    assert "admin API key" in body["message"]
    assert works(server, API_KEY)
    restart(server)
    assert works(server, API_KEY) and works(server, member)


def test_the_last_admin_key_cannot_be_revoked_even_by_itself(server):
    admin_id = key_id(server, API_KEY)
    st, body = server.api("DELETE", f"/api-keys/{admin_id}")
    assert st == 400, body
    assert "last admin API key" in body["message"]
    assert works(server, API_KEY)
    # With a second admin key (a second COVE_API_KEY) one of them can go, never both.
    restart(server, env_key=SECOND_ADMIN_KEY)
    assert server.api("DELETE", f"/api-keys/{admin_id}", key=SECOND_ADMIN_KEY)[0] == 204
    assert not works(server, API_KEY)
    second_id = key_id(server, SECOND_ADMIN_KEY, key=SECOND_ADMIN_KEY)
    st, body = server.api("DELETE", f"/api-keys/{second_id}", key=SECOND_ADMIN_KEY)
    assert st == 400 and "last admin API key" in body["message"], body
    assert works(server, SECOND_ADMIN_KEY)


def test_a_revoked_bootstrap_key_is_re_enabled_by_the_next_start(server):
    admin_id = key_id(server, API_KEY)
    restart(server, env_key=SECOND_ADMIN_KEY)
    assert server.api("DELETE", f"/api-keys/{admin_id}", key=SECOND_ADMIN_KEY)[0] == 204
    assert not works(server, API_KEY)
    # The start that measured the hole failed with "api key already exists" here.
    restart(server, env_key=API_KEY)
    assert works(server, API_KEY)
    assert key_id(server, API_KEY) == admin_id, "the same key is re-enabled, not duplicated"
    # It is an admin key again: it may create organizations.
    assert server.api("POST", "/organizations", {"name": "after restart"})[0] == 200
    restart(server, env_key=API_KEY)
    assert works(server, API_KEY)
    assert [k["prefix"] for k in keys(server)].count(API_KEY[:10]) == 1, "restarts are idempotent"


def db_bytes(server):
    return b"".join(
        p.read_bytes() for p in (server.data_dir / "cove.db", server.data_dir / "cove.db-wal") if p.exists()
    )


def test_the_database_holds_no_bare_sha256_of_any_key(server):
    member = member_key(server)
    other = new_org_key(server)
    for k in (API_KEY, member, other):
        assert works(server, k)
    secret = server.data_dir / "api-keys.key"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.stat().st_size == 32
    for when in ("running", "stopped"):
        data = db_bytes(server)
        for k in (API_KEY, member, other):
            digest = hashlib.sha256(k.encode())
            assert digest.hexdigest().encode() not in data, f"sha256 hex of a key in cove.db ({when})"
            assert digest.digest() not in data, f"raw sha256 of a key in cove.db ({when})"
            assert k.encode() not in data
        server.kill()
    server.start()


def test_keys_stored_as_bare_sha256_by_an_older_server_still_work_and_are_rehashed(server):
    member = member_key(server)
    member_id = key_id(server, member)
    server.kill()
    # Rewrite the rows the way servers before the fix stored them.
    db = sqlite3.connect(server.data_dir / "cove.db")
    for value in (API_KEY, member):
        db.execute(
            "UPDATE api_keys SET key_hash = ?, hash_scheme = 'sha256' WHERE prefix = ?",
            (hashlib.sha256(value.encode()).hexdigest(), value[:10]),
        )
    db.commit()
    db.close()
    server.start()
    assert works(server, API_KEY), "the bootstrap key is re-hashed at start"
    assert works(server, member), "other keys are re-hashed at their first use"
    db = sqlite3.connect(server.data_dir / "cove.db")
    schemes = dict(db.execute("SELECT id, hash_scheme FROM api_keys").fetchall())
    db.close()
    assert schemes[member_id] == "hmac-sha256" and set(schemes.values()) == {"hmac-sha256"}
    data = db_bytes(server)
    for value in (API_KEY, member):
        assert hashlib.sha256(value.encode()).hexdigest().encode() not in data, "the old hash is gone"
    restart(server)
    assert works(server, API_KEY) and works(server, member)


# --- privileged sandboxes (hole 1) --------------------------------------------------------


def snapshot(server, key=API_KEY, name="priv"):
    st, body = server.api("POST", "/snapshots", {"name": name, "imageName": BUSYBOX}, key=key)
    assert st == 200, body
    assert server.wait_state(body["id"], key=key)["state"] == "active"
    return name


def create_sandbox(server, key=API_KEY, **extra):
    return server.api("POST", "/sandbox", {"snapshot": "priv", **extra}, key=key)


def cap_eff(server, sandbox_id):
    req = urllib.request.Request(
        f"{server.url}/toolbox/{sandbox_id}/process/execute",
        data=json.dumps({"command": "cat /proc/self/status"}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    assert out["exitCode"] == 0, out
    (line,) = [l for l in out["result"].splitlines() if l.startswith("CapEff:")]
    return int(line.split()[1], 16)


def assert_refused(st, body, needle, absent=None):
    assert st == 403, body
    assert body["message"].startswith("privileged sandboxes need"), body
    assert needle in body["message"], body
    if absent:
        assert absent not in body["message"], body


def test_a_member_key_asking_for_a_privileged_sandbox_is_refused_naming_allow_privileged(server):
    other = new_org_key(server)
    snapshot(server, key=other)
    st, body = create_sandbox(server, key=other, privileged=True)
    assert_refused(st, body, "--allow-privileged")
    # The build path (a sandbox from an Image) is refused the same way, before any build.
    st, body = server.api(
        "POST", "/sandbox", {"buildInfo": {"dockerfileContent": f"FROM {BUSYBOX}\n"}, "privileged": True}, key=other
    )
    assert_refused(st, body, "--allow-privileged")
    st, listed = server.api("GET", "/sandbox", key=other)
    assert st == 200 and listed["items"] == [], "nothing was created"


def test_an_admin_key_without_the_server_option_is_refused_naming_the_option(server):
    snapshot(server)
    st, body = create_sandbox(server, privileged=True)
    assert_refused(st, body, "the server option --allow-privileged", absent="admin API key")
    st, listed = server.api("GET", "/sandbox")
    assert st == 200 and listed["items"] == []


def test_with_allow_privileged_only_admin_keys_get_privileged_sandboxes(cove):
    server = cove(extra=["--allow-privileged"])
    snapshot(server)
    st, plain = create_sandbox(server)
    assert st == 200, plain
    assert not cap_eff(server, plain["id"]) & (1 << CAP_SYS_ADMIN), "an ordinary sandbox lacks CAP_SYS_ADMIN"
    st, priv = create_sandbox(server, privileged=True)
    assert st == 200 and priv["state"] == "started", priv
    assert cap_eff(server, priv["id"]) & (1 << CAP_SYS_ADMIN), "the privileged sandbox has CAP_SYS_ADMIN"
    # Keys that are not admin keys still get 403, naming what they lack.
    other = new_org_key(server)
    snapshot(server, key=other)
    for key in (other, member_key(server)):
        st, body = create_sandbox(server, key=key, privileged=True)
        assert_refused(st, body, "an admin API key", absent="--allow-privileged")
    for sb in (plain, priv):
        assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200
