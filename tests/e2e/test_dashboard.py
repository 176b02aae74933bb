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


def run_flows(server, shots, timeout=240):
    if not (DASH_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("tests/e2e/dashboard/node_modules is missing: run scripts/setup.sh (make test does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (make test does)")
    env = dict(os.environ, COVE_URL=server.url, COVE_KEY=API_KEY, IMAGE=BUSYBOX, SHOTS=str(shots))
    out = subprocess.run([shutil.which("node") or "node", "flows.mjs"], cwd=DASH_DIR, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_every_dashboard_flow_of_the_seed_can_be_done_by_clicking_in_a_real_browser(cove, tmp_path):
    server = cove()
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
    assert "External ID" in r["ecrHelp"] and server.api("GET", "/dashboard/whoami")[1]["organizationId"] in r["ecrHelp"]
    assert "docker.io" in r["hubRow"]
    assert "s3cret-generic" not in r["registriesPage"] and "dckr_pat_x" not in r["registriesPage"], "secrets are write-only"
    assert any(line.strip() == "hi" for line in r["terminalText"].splitlines()), r["terminalText"]
    assert r["sttyAfterFit"] != "24 80", "the terminal was resized to its box"
    assert r["downloaded"] == "hello from the browser\n"
    assert "team=web" in r["sandboxRow"]
    assert r["revokedKeyStatus"] == 401
    assert "entries" in r["buildsPage"].lower()
    csp = [e for e in r["consoleErrors"] if "Content Security Policy" in e or "pageerror" in e]
    assert not csp, csp
    assert len(r["shots"]) >= 14


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
