"""The web dashboard (issue 16) in a real browser: Debian's chromium driven by playwright-core
(`tests/e2e/dashboard/flows.mjs`) against a real server, clicking through every flow of the
seed. Screenshots of each page go to the test's tmp dir (printed)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import API_KEY, BUSYBOX

DASH_DIR = Path(__file__).resolve().parent / "dashboard"
CHROMIUM = "/usr/bin/chromium"


def run_flows(server, shots, timeout=240, flow="every"):
    if not (DASH_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/e2e/dashboard/node_modules is missing: run scripts/setup.sh (make test does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (make test does)")
    env = dict(os.environ, COVE_URL=server.url, COVE_KEY=API_KEY, IMAGE=BUSYBOX, SHOTS=str(shots), FLOW=flow)
    out = subprocess.run([shutil.which("node") or "node", "flows.mjs"], cwd=DASH_DIR, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_every_dashboard_flow_of_the_seed_can_be_done_by_clicking_in_a_real_browser(cove, moto, tmp_path, monkeypatch):
    # The server's AWS identity (moto's IAM user) is the ECR tab's broker.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto["secret"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    server = cove(extra=["--sts-endpoint", moto["url"], "--ecr-endpoint", moto["url"]])
    org_id = server.api("GET", "/dashboard/whoami")[1]["organizationId"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    r, log = run_flows(server, shots)
    print(f"dashboard screenshots: {shots}")
    assert "error" not in r, f"{r.get('error')}\nsteps done: {r['steps']}\n{log[-3000:]}"

    assert "not accepted" in r["badKeyMessage"]
    assert r["keyInSession"] == {"session": True, "local": 0, "url": server.url + "/#/snapshots"} or \
        r["keyInSession"]["local"] == 0 and API_KEY not in r["keyInSession"]["url"]
    assert "latest" in r["latestMessage"], r["latestMessage"]
    assert r["firstItemWhenInactive"] == "Activate"
    assert "built-by-the-dashboard" in r["buildLog"]
    assert "cannot be undone" in r["deleteConfirm"]
    assert r["dockerHubVisibleFields"] == ["Username", "Personal Access Token"]
    assert r["urlVisibleOnDockerHub"] == 0
    assert "External ID" in r["ecrHelp"] and org_id in r["ecrHelp"]
    broker = "arn:aws:iam::123456789012:user/cove-server"
    assert r["ecrBroker"] == broker and broker in r["ecrHelp"], r["ecrHelp"]
    trust = json.loads(r["ecrTrust"])["Statement"][0]
    assert trust["Principal"] == {"AWS": broker} and trust["Condition"]["StringEquals"]["sts:ExternalId"] == org_id, trust
    assert "docker.io" in r["hubRow"]
    assert "s3cret-generic" not in r["registriesPage"] and "dckr_pat_x" not in r["registriesPage"], "secrets are write-only"
    assert any(line.strip() == "hi" for line in r["terminalText"].splitlines()), r["terminalText"]
    assert r["sttyAfterFit"] != "24 80", "the terminal was resized to its box"
    assert r["downloaded"] == "hello from the browser\n"
    assert r["searchPage1"] == [f"page-snap-{i:02}" for i in range(11, 1, -1)], r["searchPage1"]
    assert r["searchPage2"] == ["page-snap-01"], r["searchPage2"]
    assert r["nextDisabledOnLast"] and r["previousDisabledOnFirst"]
    assert r["searchWeb"] == ["web-snap"], r["searchWeb"]
    assert "no-such-snapshot" in r["searchNone"] and "No snapshots yet" not in r["searchNone"], r["searchNone"]
    assert r["stoppedButtons"] == ["Start", "Archive", "Delete"], r["stoppedButtons"]
    assert r["stoppedMenu"] == ["Open", "Start", "Archive", "Delete"], r["stoppedMenu"]
    assert "Archived" in r["archivedRow"], r["archivedRow"]
    assert r["archivedMenu"] == ["Open", "Start", "Delete"], r["archivedMenu"]
    assert "team=web" in r["sandboxRow"]
    assert r["revokedKeyStatus"] == 401
    assert "entries" in r["buildsPage"].lower()
    assert r["cacheEntriesBefore"] >= 1, r["buildsPage"]
    assert "cannot be undone" in r["pruneConfirm"]
    n = r["cacheEntriesBefore"]
    assert r["pruneToast"].startswith(f"Removed {n} {'entry' if n == 1 else 'entries'}, freed "), r["pruneToast"]
    assert r["cacheEntriesAfter"] == 0
    csp = [e for e in r["consoleErrors"] if "Content Security Policy" in e or "pageerror" in e]
    assert not csp, csp
    assert len(r["shots"]) >= 20


def test_the_ecr_tab_of_a_server_without_aws_credentials_says_which_variables_to_set(cove, tmp_path, monkeypatch):
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    server = cove()
    r, log = run_flows(server, tmp_path, timeout=60, flow="ecr-without-aws")
    assert "error" not in r, f"{r.get('error')}\nsteps done: {r['steps']}\n{log[-3000:]}"
    assert "AWS_ACCESS_KEY_ID" in r["ecrProblem"] and "no AWS credentials" in r["ecrProblem"], r["ecrProblem"]
    assert "External ID" in r["ecrHelp"] and "Broker identity" in r["ecrHelp"], r["ecrHelp"]
    assert json.loads(r["ecrTrust"])["Statement"][0]["Principal"]["AWS"].startswith("<the IAM identity")


def test_the_dashboard_page_and_its_assets_carry_the_security_headers(cove):
    import urllib.request

    server = cove()
    with urllib.request.urlopen(server.url + "/", timeout=10) as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self';" in csp and "unsafe" not in csp
    assert "<script>" not in html
    with urllib.request.urlopen(server.url + "/dashboard/assets/app.js", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    st, body = server.api("GET", "/snapshots")
    assert st == 200, "the API is unchanged next to the dashboard"
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/dashboard/assets/nope.js", timeout=10)
    assert e.value.code == 404
