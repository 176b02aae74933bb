"""Cove's puller resumes a layer whose download broke off: a proxy in front of Debian's
docker-registry (which honours `Range`) cuts the connection once in the middle of the
largest layer; the pull asks for the rest with a `Range` request and the snapshot becomes
active. With a proxy that drops `Range` (so the registry answers 200), the layer is fetched
whole again and the snapshot is still right."""

import http.server
import json
import socket
import threading
import urllib.error
import urllib.request

import mkimage
from harness import free_port

CUT_AFTER = 2 << 20


class CuttingProxy:
    """Forwards GET/HEAD to `upstream`; the first GET of blob `digest` gets its headers and
    only `CUT_AFTER` bytes of body, then the connection is shut. Records every blob request's
    `Range` header as (digest, range or None)."""

    def __init__(self, upstream: str, digest: str, forward_range=True):
        proxy = self
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = []
        self.cut = False

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                is_blob = "/blobs/" in self.path
                if is_blob:
                    proxy.requests.append((self.path.rsplit("/", 1)[-1], self.headers.get("Range")))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
                if forward_range and self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                req = urllib.request.Request(proxy.upstream + self.path, method=self.command, headers=headers)
                try:
                    r = urllib.request.urlopen(req, timeout=30)
                except urllib.error.HTTPError as e:
                    r = e
                with r:
                    self.send_response(r.status)
                    for k, v in r.headers.items():
                        if k.lower() in ("content-type", "content-length", "content-range", "docker-content-digest"):
                            self.send_header(k, v)
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    cut = is_blob and self.path.endswith(digest) and not proxy.cut
                    sent = 0
                    while chunk := r.read(256 << 10):
                        if cut and sent + len(chunk) > CUT_AFTER:
                            self.wfile.write(chunk[: CUT_AFTER - sent])
                            self.wfile.flush()
                            proxy.cut = True
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)

            do_HEAD = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def largest_layer(registry_url, repo, tag):
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        layers = json.loads(r.read())["layers"]
    return max(layers, key=lambda l: l["size"])


def pull_through(cove, registry, name, forward_range):
    mkimage.push_image(registry.url, "resume", ["1"], random_mb=8, seed="resume")
    layer = largest_layer(registry.url, "resume", "1")
    assert layer["size"] > 4 * CUT_AFTER
    proxy = CuttingProxy(registry.url, layer["digest"], forward_range=forward_range)
    try:
        server = cove(extra=["--registry-mirror", f"resume.cove.test={proxy.url}"])
        st, snap = server.api("POST", "/snapshots", {"name": name, "imageName": "resume.cove.test/resume:1"})
        assert st == 200, snap
        done = server.wait_state(name, timeout=180)
        assert done["state"] == "active", done.get("errorReason")
        assert proxy.cut, "the proxy cut the layer's download"
        return server, layer, [rng for d, rng in proxy.requests if d == layer["digest"]]
    finally:
        proxy.stop()


def test_a_layer_download_cut_midway_resumes_with_a_range_request(cove, registry):
    server, layer, ranges = pull_through(cove, registry, "resumed", forward_range=True)
    assert ranges[0] is None and len(ranges) == 2, ranges
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= CUT_AFTER, ranges
    assert "download resumed" in server.log_path.read_text(errors="replace")


def test_a_registry_answering_200_to_the_range_request_gets_the_whole_layer_fetched_again(cove, registry):
    server, layer, ranges = pull_through(cove, registry, "restarted", forward_range=False)
    assert ranges[0] is None and ranges[1] is not None, ranges
    assert "did not resume the download" in server.log_path.read_text(errors="replace")
