"""Preview URLs through the official Daytona Python SDK (unmodified): a real sandbox serves
HTTP (`python3 -m http.server`) and a WebSocket echo on its ports, and the host reaches them
through the server's preview proxy, by host name (`{port}-{id}.localhost:{api port}`, sent
as a Host header to 127.0.0.1) and by path (`/preview/{id}/{port}/…`)."""

import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import time
import urllib.parse

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest

from harness import API_KEY, BUSYBOX_PYTHON, wait_until

WEB_PORT = 8000
WS_PORT = 8765
PAGE = "hello from inside the sandbox\n"

# A stdlib-only WebSocket echo server. Its 101 answer carries the request headers it saw (as
# base64 JSON in X-Seen-Headers), so the test can check what the proxy forwards.
WS_SERVER = r'''
import base64, hashlib, json, socket, struct, sys, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def serve(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return
        data += chunk
    head, buf = data.split(b"\r\n\r\n", 1)
    headers = {}
    for line in head.decode().split("\r\n")[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
    seen = base64.b64encode(json.dumps(headers).encode()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\nX-Seen-Headers: %s\r\n\r\n" % (accept, seen)).encode())
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = c.recv(4096)
            if not chunk:
                raise EOFError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out
    while True:
        b0, b1 = need(2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", need(8))[0]
        mask = need(4) if b1 & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(need(n)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return
        size = bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
        c.sendall(bytes([0x80 | op]) + size + payload)

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    conn, _ = s.accept()
    threading.Thread(target=lambda c=conn: (serve(c), c.close()), daemon=True).start()
'''


@pytest.fixture
def web(cove, registry_with_python):
    """A server, an SDK client, and a started sandbox serving /tmp/www on WEB_PORT and a
    WebSocket echo on WS_PORT."""
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    sandbox.fs.upload_file(PAGE.encode(), "/tmp/www/index.txt")
    sandbox.fs.upload_file(WS_SERVER.encode(), "/tmp/ws_echo.py")
    # One session each: a session runs its commands one after the other.
    for name, cmd in (("web", f"python3 -m http.server {WEB_PORT} --directory /tmp/www"), ("ws", f"python3 /tmp/ws_echo.py {WS_PORT}")):
        sandbox.process.create_session(name)
        sandbox.process.execute_session_command(name, SessionExecuteRequest(command=cmd, run_async=True))
    yield server, daytona, sandbox
    try:
        sandbox.delete()
    except Exception:  # noqa: BLE001 - a test may have deleted it
        pass


def request(server, url, headers=None, method="GET"):
    """(status, headers, body) of `url` (a preview URL or a path on the API listener), sent to
    the server's loopback port with the URL's host as the Host header: *.localhost names
    need no DNS this way."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    conn.request(method, path, headers={"Host": u.netloc, **(headers or {})})
    r = conn.getresponse()
    body = r.read().decode(errors="replace")
    conn.close()
    return r.status, r.headers, body


def wait_served(server, url, headers):
    def up():
        st, _, body = request(server, url, headers)
        return body if st == 200 else None

    return wait_until(up, 30, interval=0.2, what=f"{url} to be served")


def test_a_private_preview_needs_its_token_or_an_api_key_and_a_public_one_needs_nothing(web):
    server, daytona, sandbox = web
    link = sandbox.get_preview_link(WEB_PORT)
    assert link.sandbox_id == sandbox.id
    assert link.url == f"http://{WEB_PORT}-{sandbox.id}.localhost:{server.port}", link.url
    assert len(link.token) >= 32
    url = link.url + "/index.txt"
    assert wait_served(server, url, {"X-Daytona-Preview-Token": link.token}) == PAGE

    st, _, body = request(server, url)
    assert st == 401 and "X-Daytona-Preview-Token" in body, body
    st, _, body = request(server, url, {"X-Daytona-Preview-Token": "0" * 64})
    assert st == 401, "a wrong token is no token"
    st, _, body = request(server, url, {"Authorization": f"Bearer {API_KEY}"})
    assert (st, body) == (200, PAGE), "an API key of the sandbox's organization opens it too"
    st, _, body = request(server, f"{link.url}/index.txt?DAYTONA_SANDBOX_AUTH_KEY={link.token}")
    assert (st, body) == (200, PAGE), "the TypeScript SDK's browser form: the token as a query parameter"
    # /api/... on a preview host is the sandbox's, not Cove's API.
    st, _, body = request(server, link.url + "/api/sandbox", {"X-Daytona-Preview-Token": link.token})
    assert st == 404 and "COVE_API" not in body, body

    sandbox.set_public(True)
    assert daytona.get(sandbox.id).public is True
    st, _, body = request(server, url)
    assert (st, body) == (200, PAGE), "a public sandbox is served without credentials"
    sandbox.set_public(False)
    assert request(server, url)[0] == 401

    # The path form, for clients without wildcard names.
    path_url = f"{server.url}/preview/{sandbox.id}/{WEB_PORT}/index.txt"
    assert request(server, path_url)[0] == 401
    st, _, body = request(server, path_url, {"X-Daytona-Preview-Token": link.token})
    assert (st, body) == (200, PAGE)

    # Ports are checked; a port nothing listens on is a 502 naming it.
    st, _, body = request(server, f"http://70000-{sandbox.id}.localhost:{server.port}/")
    assert st == 400 and "port" in body, body
    st, _, body = request(server, f"http://9-{sandbox.id}.localhost:{server.port}/", {"X-Daytona-Preview-Token": link.token})
    assert st == 502 and "port 9" in body, body
    assert server.api("GET", f"/sandbox/{sandbox.id}/ports/0/preview-url")[0] == 400

    sandbox.stop()
    st, _, body = request(server, url, {"X-Daytona-Preview-Token": link.token})
    assert st == 503 and "stopped" in body, body


def test_a_signed_url_works_without_headers_until_it_is_expired(web):
    server, _, sandbox = web
    token = sandbox.get_preview_link(WEB_PORT).token
    wait_served(server, sandbox.get_preview_link(WEB_PORT).url + "/index.txt", {"X-Daytona-Preview-Token": token})
    signed = sandbox.create_signed_preview_url(WEB_PORT, expires_in_seconds=120)
    assert signed.port == WEB_PORT and signed.sandbox_id == sandbox.id
    assert len(signed.token) >= 32 and signed.token.isalnum() and signed.token == signed.token.lower()
    assert signed.url == f"http://{WEB_PORT}-{signed.token}.localhost:{server.port}", signed.url
    st, _, body = request(server, signed.url + "/index.txt")
    assert (st, body) == (200, PAGE)
    st, _, body = request(server, f"{server.url}/preview/signed/{signed.token}/index.txt")
    assert (st, body) == (200, PAGE), "the path form of a signed URL"
    other_port = signed.url.replace(f"http://{WEB_PORT}-", f"http://{WS_PORT}-")
    assert request(server, other_port + "/")[0] == 401, "a signed URL opens its own port only"

    sandbox.expire_signed_preview_url(WEB_PORT, signed.token)
    assert request(server, signed.url + "/index.txt")[0] in (401, 404)
    assert server.api("POST", f"/sandbox/{sandbox.id}/ports/{WEB_PORT}/signed-preview-url/{signed.token}/expire")[0] == 404

    short = sandbox.create_signed_preview_url(WEB_PORT, expires_in_seconds=1)
    assert request(server, short.url + "/index.txt")[0] == 200
    time.sleep(1.2)
    assert request(server, short.url + "/index.txt")[0] in (401, 404), "expired at its time"

    for bad in (0, 86401, -5):
        st, body = server.api("GET", f"/sandbox/{sandbox.id}/ports/{WEB_PORT}/signed-preview-url?expiresInSeconds={bad}")
        assert st == 400 and "expiresInSeconds" in body["message"], body
    default = server.api("GET", f"/sandbox/{sandbox.id}/ports/{WEB_PORT}/signed-preview-url")[1]
    assert request(server, default["url"] + "/index.txt")[0] == 200, "60 seconds by default"


def ws_echo(server, url, token, message):
    """Handshake through the proxy, one masked text frame, the echoed frame back; returns
    (echoed text, headers the sandbox's server saw)."""
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((
        f"GET /chat HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Daytona-Preview-Token: {token}\r\n"
        f"Authorization: Bearer {API_KEY}\r\n\r\n"
    ).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    payload = message.encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    while len(rest) < 2 + len(payload):
        chunk = s.recv(4096)
        assert chunk, rest
        rest += chunk
    assert rest[0] == 0x81 and rest[1] == len(payload), rest[:2]
    s.close()
    return rest[2:2 + len(payload)].decode(), json.loads(base64.b64decode(headers["x-seen-headers"]))


def test_a_websocket_is_proxied_and_credentials_never_reach_the_sandbox(web):
    server, _, sandbox = web
    link = sandbox.get_preview_link(WS_PORT)

    errors = []

    def echoed():
        try:
            return ws_echo(server, link.url, link.token, "hello through the proxy")
        except (AssertionError, OSError) as e:
            errors.append(repr(e))
            return None

    try:
        text, seen = wait_until(echoed, 30, interval=0.3, what="the WebSocket echo server")
    except AssertionError as e:
        raise AssertionError(f"{e}; last error: {errors[-1:]}") from None
    assert text == "hello through the proxy"
    assert "x-daytona-preview-token" not in seen and "authorization" not in seen, seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"{WS_PORT}-{sandbox.id}.localhost:{server.port}"
    assert seen["upgrade"].lower() == "websocket"


def test_another_organization_can_neither_get_the_link_nor_open_it(web):
    server, _, sandbox = web
    st, org = server.api("POST", "/organizations", {"name": "intruders"})
    assert st in (200, 201), org
    other = org["apiKey"]["value"]
    theirs = Daytona(DaytonaConfig(api_key=other, api_url=server.api_url))
    st, body = server.api("GET", f"/sandbox/{sandbox.id}/ports/{WEB_PORT}/preview-url", key=other)
    assert st == 404, body
    assert server.api("GET", f"/sandbox/{sandbox.id}/ports/{WEB_PORT}/signed-preview-url", key=other)[0] == 404
    assert server.api("POST", f"/sandbox/{sandbox.id}/public/true", key=other)[0] == 404
    with pytest.raises(Exception):
        theirs.get(sandbox.id)
    link = sandbox.get_preview_link(WEB_PORT)
    wait_served(server, link.url + "/index.txt", {"X-Daytona-Preview-Token": link.token})
    st, _, body = request(server, link.url + "/index.txt", {"Authorization": f"Bearer {other}"})
    assert st == 401 and "organization" in body, body
    # Deleting the sandbox takes its signed URLs with it.
    signed = sandbox.create_signed_preview_url(WEB_PORT, expires_in_seconds=600)
    sandbox.delete()
    assert request(server, signed.url + "/index.txt")[0] in (401, 404)
    assert request(server, link.url + "/index.txt", {"X-Daytona-Preview-Token": link.token})[0] == 404
