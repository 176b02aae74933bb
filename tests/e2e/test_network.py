"""Sandbox networking for real (issue 10): egress through NAT and the server's DNS forwarder,
the CA bundle a TLS-intercepting proxy needs, builds that install packages, per-sandbox
policies through both official SDKs, and linked sandboxes.

The only outside address contacted is the package index the host's pip is configured with
(PyPI, through this machine's proxy); everything else is on this machine."""

import ast
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    Image,
)

from harness import API_KEY, BUSYBOX_PYTHON, COVE_BIN
from tsrun import run_ts
from netprobe import gateway, probe, probe_outside, resolve, serve

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def index_address():
    """The package index's address as the host resolves it (the one outside peer tests use)."""
    return socket.gethostbyname("pypi.org")


def index_addresses():
    """All of the index's IPv4 addresses as the host resolves them (a CDN name has several;
    this machine's proxy answers with one)."""
    return {a[4][0] for a in socket.getaddrinfo("pypi.org", 443, socket.AF_INET)}


def resolves_to_the_index(sandbox):
    """The sandbox's IPv4 answers for pypi.org, checked to be real ones: at least one, each
    an address the host resolves the name to too (the host asked twice, for CDN rotation)."""
    out = resolve(sandbox, "pypi.org")
    assert out.startswith("["), f"the sandbox cannot resolve pypi.org: {out}"
    answers = ast.literal_eval(out)
    host = index_addresses() | index_addresses()
    assert answers and set(answers) <= host, f"sandbox answers {answers}, the host's {sorted(host)}"
    return answers


@pytest.fixture
def net(cove, registry_with_python, debian_image):
    """A server that hands the host's CA bundle to sandboxes, with a snapshot of the python
    fixture image (`py`) and of the real Debian image (`deb`)."""
    server = cove(extra=["--sandbox-ca-bundle", HOST_CA])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    daytona.snapshot.create(CreateSnapshotParams(name="deb", image=debian_image["image"]))
    return server, daytona


def pip_install(sandbox, pkg="six"):
    return sandbox.process.exec(
        f"python -m pip install --no-cache-dir --disable-pip-version-check --quiet {pkg} 2>&1 && "
        f"python -c 'import {pkg}; print(\"imported\", {pkg}.__name__)'",
        timeout=180,
    )


def test_a_debian_sandbox_installs_a_package_with_pip_through_nat_dns_and_the_ca_bundle(net, tmp_path):
    server, daytona = net
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="deb", name="egress"))
    gw = gateway(server)
    assert sandbox.process.exec("cat /etc/resolv.conf").result.split("\n")[0:3].count(f"nameserver {gw}") == 1
    hosts = sandbox.process.exec("cat /etc/hosts").result
    assert "egress" in hosts, hosts
    env = sandbox.process.exec("echo $SSL_CERT_FILE $PIP_CERT").result.split()
    assert env == ["/etc/cove/ca-certificates.crt"] * 2, env
    bundle = sandbox.process.exec("grep -c 'BEGIN CERTIFICATE' /etc/cove/ca-certificates.crt").result.strip()
    assert int(bundle) >= Path(HOST_CA).read_text().count("BEGIN CERTIFICATE"), "the host's CAs are all there"
    # The image's own trust store has them too (as a regular file, no mount), for tools that
    # read only the system path: Python's default context without SSL_CERT_FILE reaches the
    # index through this machine's TLS-intercepting proxy.
    system = sandbox.fs.download_file("/etc/ssl/certs/ca-certificates.crt").decode()
    host_certs = [
        "".join(c.split("-----END CERTIFICATE-----")[0].split())
        for c in Path(HOST_CA).read_text().split("-----BEGIN CERTIFICATE-----")[1:]
    ]
    flat = "".join(system.split())
    assert all(c in flat for c in host_certs), "every certificate of the bundle is in the image's own"
    local = sandbox.process.exec("test -f /etc/ssl/certs/ca-certificates.crt && ls /usr/local/share/ca-certificates")
    assert local.exit_code == 0 and "cove-0.crt" in local.result.split(), local.result
    plain = sandbox.process.exec(
        "env -u SSL_CERT_FILE -u REQUESTS_CA_BUNDLE -u PIP_CERT -u CURL_CA_BUNDLE python -c "
        "\"import urllib.request; print(urllib.request.urlopen('https://pypi.org/simple/six/', timeout=60).status)\"",
        timeout=120,
    )
    assert plain.result.strip().endswith("200"), plain.result
    resolves_to_the_index(sandbox)  # DNS through the server's forwarder
    r = pip_install(sandbox)
    assert r.exit_code == 0 and "imported six" in r.result, r.result
    info = server.api("GET", f"/sandbox/{sandbox.id}")[1]
    assert info["ip"].startswith(server.net["cidr"].rsplit(".", 1)[0] + "."), info
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "DAYTONA_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    login = subprocess.run([str(COVE_BIN), "login", "--api-url", server.url, "--api-key", API_KEY], env=env,
                           capture_output=True, text=True)
    assert login.returncode == 0, login.stderr
    out = subprocess.run([str(COVE_BIN), "sandbox", "get", "egress"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert f"IP:             {info['ip']}" in out.stdout and "Egress:         unrestricted" in out.stdout, out.stdout
    sandbox.delete()


def test_an_image_with_pip_install_builds_with_egress_and_network_none_fails_with_a_message(net, debian_image):
    server, daytona = net
    image = (
        Image.base(debian_image["image"])
        .env({"GREETING": "from-the-image"})
        .pip_install(["six"])
        .run_commands("python -c 'import six' && echo built > /built")
    )
    sandbox = daytona.create(CreateSandboxFromImageParams(image=image), timeout=600)
    r = sandbox.process.exec("python -c 'import six; print(six.__name__)'; cat /built; echo $GREETING")
    assert r.result.split() == ["six", "built", "from-the-image"], r.result
    sandbox.delete()

    offline = Image.base(debian_image["image"]).dockerfile_commands(
        ["RUN --network=none python -m pip install --no-cache-dir --disable-pip-version-check six"]
    )
    with pytest.raises(Exception) as e:
        daytona.snapshot.create(CreateSnapshotParams(name="offline", image=offline), on_logs=lambda _: None)
    logs = server.api("GET", "/snapshots/offline")[1]
    assert logs["state"] == "build_failed", logs
    assert "exit" in (logs.get("errorReason") or "").lower() or "fail" in str(e.value).lower(), (logs, e.value)

    host = Image.base(debian_image["image"]).dockerfile_commands(["RUN --network=host true"])
    with pytest.raises(Exception) as e:
        daytona.snapshot.create(CreateSnapshotParams(name="hostnet", image=host), on_logs=lambda _: None)
    reason = server.api("GET", "/snapshots/hostnet")[1].get("errorReason") or str(e.value)
    assert "--network=host is not supported" in reason, reason


def test_apt_get_installs_a_package_in_a_build_step(net, debian_image):
    server, daytona = net
    image = Image.base(debian_image["image"]).run_commands(
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null && jq --version"
    )
    sandbox = daytona.create(CreateSandboxFromImageParams(image=image), timeout=600)
    assert sandbox.process.exec("echo '{\"a\": 7}' | jq .a").result.strip() == "7"
    sandbox.delete()


def test_block_all_allow_lists_and_live_updates_through_the_python_sdk(net):
    server, daytona = net
    index = index_address()
    blocked = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", network_block_all=True))
    assert blocked.network_block_all is True
    assert probe(blocked, index, 443).startswith("closed")
    assert "error" in resolve(blocked, "pypi.org"), "no DNS either"

    only_index = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", network_allow_list=f"{index}/32"))
    assert only_index.network_allow_list == f"{index}/32"
    assert probe_outside(only_index, index, 443) == "open"
    socket.create_connection((index, 80), timeout=5).close()  # control: the host reaches port 80 of it
    assert probe_outside(only_index, index, 80) == "open", "any port of an allowed address, not only 443"
    assert probe(only_index, "192.0.2.77", 443, timeout=2).startswith("closed"), "outside the list"

    open_one = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    assert probe_outside(open_one, index, 443) == "open"
    open_one.update_network_settings(network_block_all=True)
    assert open_one.network_block_all is True
    assert probe(open_one, index, 443).startswith("closed"), "applied live, no restart"
    open_one.update_network_settings(network_block_all=False)
    assert probe_outside(open_one, index, 443) == "open"
    open_one.update_network_settings(network_allow_list="192.0.2.0/24")
    assert probe(open_one, index, 443).startswith("closed")
    assert server.api("GET", f"/sandbox/{open_one.id}")[1]["networkAllowList"] == "192.0.2.0/24"

    # Entries the firewall always blocks would be stored and shown but never reached: refused,
    # naming the entry, why, and (for private networks) the server flag that allows them.
    for entry, private in (("192.168.1.0/24", True), ("10.0.0.0/8", True), ("169.254.0.0/16", False)):
        with pytest.raises(DaytonaError) as e:
            daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", network_allow_list=f"{index}/32,{entry}"))
        msg = str(e.value)
        assert entry in msg and "always blocked" in msg, msg
        assert ("--sandbox-allow-private" in msg) == private, msg
        with pytest.raises(DaytonaError) as e:
            open_one.update_network_settings(network_allow_list=entry)
        assert entry in str(e.value) and "always blocked" in str(e.value), e.value
    assert server.api("GET", f"/sandbox/{open_one.id}")[1]["networkAllowList"] == "192.0.2.0/24", "unchanged"

    status, body = server.api("POST", f"/sandbox/{open_one.id}/network-settings", {"networkAllowList": "10.0.0.0/33"})
    assert status == 400 and "10.0.0.0/33" in json.dumps(body), body
    status, body = server.api("POST", f"/sandbox/{open_one.id}/network-settings", {"networkBlockAl": True})
    assert status == 400 and "networkBlockAl" in json.dumps(body), "an unknown field is refused, never ignored"
    status, body = server.api("POST", "/sandbox", {"snapshot": "py", "outboundProxyUrl": "http://proxy:3128"})
    assert status == 400 and "outboundProxyUrl" in json.dumps(body), body
    for s in (blocked, only_index, open_one):
        s.delete()


def test_a_domain_allow_list_resolves_only_its_names_and_opens_only_their_addresses(net):
    server, daytona = net
    s = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", domain_allow_list="pypi.org"))
    assert s.domain_allow_list == "pypi.org"
    for index in sorted(index_addresses()):
        assert probe(s, index, 443, timeout=2).startswith("closed"), f"{index} open before the name was resolved"
    assert "error" in resolve(s, "example.com"), "names outside the list do not resolve"
    for index in resolves_to_the_index(s):
        assert probe_outside(s, index, 443) == "open", f"the resolved {index} is open for its TTL"
    s.delete()


def test_linked_sandboxes_reach_each_other_by_name_and_no_one_else_reaches_them(net):
    server, daytona = net
    db = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", name="db"))
    serve(db, 8000)
    app = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", name="app", linked_sandbox="db"))
    serve(app, 8001)
    other = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", name="other"))
    db_ip = server.api("GET", f"/sandbox/{db.id}")[1]["ip"]
    app_ip = server.api("GET", f"/sandbox/{app.id}")[1]["ip"]
    assert server.api("GET", f"/sandbox/{app.id}")[1]["linkedSandboxId"] == db.id
    time.sleep(1)
    assert probe(app, "db", 8000) == "open", "by name"
    assert probe(app, db_ip, 8000) == "open", "by address"
    assert probe(db, "app", 8001) == "open", "both ways"
    assert probe(other, db_ip, 8000).startswith("closed")
    assert probe(other, app_ip, 8001).startswith("closed")
    status, body = server.api("POST", "/sandbox", {"snapshot": "py", "linkedSandbox": "nope"})
    assert status == 400 and "nope" in json.dumps(body), body
    for s in (app, other, db):
        s.delete()


def test_the_typescript_sdk_blocks_allows_and_updates_the_network(net):
    server, daytona = net
    r = run_ts("network_policy.mjs", server, timeout=240, INDEX_ADDR=index_address())
    assert r["blockedFlag"] is True and r["blocked"].startswith("closed"), r
    assert r["allowList"] == f"{index_address()}/32" and r["allowed"] == "open", r
    assert r["afterUpdate"].startswith("closed") and r["restored"] == "open", r


def test_with_egress_off_sandboxes_resolve_names_but_nothing_leaves(cove, registry_with_python):
    server = cove(extra=["--sandbox-egress=false"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    s = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    index = resolves_to_the_index(s)[0]  # the forwarder still answers
    assert probe(s, index, 443).startswith("closed"), "no NAT, no forwarding"
    s.delete()
