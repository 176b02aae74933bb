"""The dashboard's terminal tokens (`POST /api/dashboard/terminal-token/{id}`): a browser's
WebSocket cannot send the key, so a token stands in for it. It must open one sandbox's terminal,
once, and nothing of another sandbox or organization."""

import base64
import json
import os
import socket
import urllib.request

from daytona import CreateSandboxFromSnapshotParams

from harness import API_KEY


def upgrade(server, sandbox_id, session, token):
    """Status of a WebSocket upgrade to the dashboard terminal, offering `token`."""
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET /dashboard/terminal/{sandbox_id}/{session} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: cove-terminal.{token}, X-Daytona-Pty-Exit-Control\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(req.encode())
        head = s.recv(4096).decode(errors="replace")
    return int(head.split(" ", 2)[1]), head


def new_org_key(server):
    st, org = server.api("POST", "/organizations", {"name": "team b"})
    assert st == 200, org
    return org["apiKey"]["value"]


def new_pty(server, sandbox_id, session):
    req = urllib.request.Request(f"{server.url}/toolbox/{sandbox_id}/process/pty", method="POST",
                                 data=json.dumps({"id": session}).encode(),
                                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201


def mint(server, sandbox_id, key=None):
    kw = {"key": key} if key else {}
    return server.api("POST", f"/dashboard/terminal-token/{sandbox_id}", **kw)


def test_a_terminal_token_opens_only_its_own_sandbox_once_and_never_another_organizations(env):
    server, daytona = env
    a = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    b = daytona.create(CreateSandboxFromSnapshotParams(snapshot="small"))
    try:
        for sb in (a, b):
            new_pty(server, sb.id, "t1")
        # Another organization cannot mint for a sandbox that is not its own.
        other = new_org_key(server)
        st, body = mint(server, a.id, key=other)
        assert st == 404, body
        assert mint(server, a.id, key="not-a-key")[0] == 401

        st, t = mint(server, a.id)
        assert st == 200 and t["sandboxId"] == a.id and t["expiresInSecs"] == 60, t
        # The token does not open sandbox b, and a token tried on the wrong sandbox is spent.
        assert upgrade(server, b.id, "t1", t["token"])[0] == 401
        assert upgrade(server, a.id, "t1", t["token"])[0] == 401

        st, t = mint(server, a.id)
        status, head = upgrade(server, a.id, "t1", t["token"])
        assert status == 101, head
        assert "cove-terminal" not in head, "the token is not echoed back"
        assert upgrade(server, a.id, "t1", t["token"])[0] == 401, "a token works once"
        # No token, a made-up token: refused.
        assert upgrade(server, a.id, "t1", "0" * 64)[0] == 401
    finally:
        a.delete()
        b.delete()
