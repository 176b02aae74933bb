"""The attack suite, network side (issue 10): what a sandbox must never reach or forge,
whatever its policy. Each test first proves that the target is really there (the host, or a
sandbox that is allowed, reaches it), then that the attacking sandbox does not.

Nothing outside this machine is contacted: the targets are the host's own addresses, other
sandboxes, a network namespace the test makes beyond the host's forwarding (holding the
metadata address and an RFC 1918 address, see `beyond_the_host`), the host's upstream
resolver (a private address on this machine's network, where it is not a loopback stub) and
the server's DNS forwarder."""

import fcntl
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest

from harness import API_KEY, BUSYBOX_PYTHON
from netprobe import gateway, probe, serve

# A DNS query for pypi.org (id 0x4242, A, IN).
QUERY = bytes.fromhex("424201000001000000000000") + b"\x04pypi\x03org\x00" + bytes.fromhex("00010001")

# Sends QUERY to the gateway's port 53 in a raw IPv4/UDP packet whose source is argv[1]:5353.
SPOOF = """import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
query = bytes.fromhex(sys.argv[3])
udp = struct.pack("!HHHH", 5353, 53, 8 + len(query), 0) + query
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(ip + udp, (dst, 0))
print("sent")
"""

# Waits for one UDP datagram on port 5353 (optionally after sending QUERY itself).
LISTEN = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
s.settimeout(float(sys.argv[1]))
if len(sys.argv) > 2:
    s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 53))
try:
    data, peer = s.recvfrom(4096)
    print("answer", peer[0], data[:2].hex())
except socket.timeout:
    print("nothing")
"""


@pytest.fixture
def net_env(cove, registry_with_python):
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="py", image=BUSYBOX_PYTHON))
    return server, daytona


class HostListener:
    """A TCP listener on the host's 0.0.0.0 that counts connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()


def host_addresses():
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [l.split()[3].split("/")[0] for l in out.splitlines() if " lo " not in l and "127." not in l.split()[3]]


METADATA = "169.254.169.254"
# An RFC 1918 address the host reaches only through the test's namespace (a /32 route).
PRIVATE = "172.31.254.254"
# Lets the listener in the namespace accept and count connections; prints each peer.
NS_LISTENER = """import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    print("from", peer[0], flush=True)
    c.close()
"""


class Beyond:
    """What `beyond_the_host` made: the namespace's own (unblocked) address, the port its
    listener serves on every address, and the peers that reached it so far."""

    def __init__(self, reachable, port, listener):
        self.reachable, self.port, self.listener = reachable, port, listener
        self.peers = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.listener.stdout:
            if line.startswith("from "):
                self.peers.append(line.split()[1])


@pytest.fixture
def beyond_the_host():
    """A network namespace the host reaches through its forwarding path, not its own stack:
    a veth pair (host side 198.18.N.1/30, namespace side 198.18.N.2/30, a benchmark range no
    rule blocks) and host routes to the metadata address and to an RFC 1918 address, both
    held by the namespace, with a TCP listener there. A sandbox's packet to them is forwarded
    by the host like any other outbound packet, so only the firewall's forward-path block of
    those ranges can stop it (an address on the host's own `lo` would hit the host-address
    drop of the input chain instead). A file lock serializes test runs sharing the machine
    (the /32 routes are host-wide); the namespace and its veth go in a finalizer."""
    lock = open("/tmp/cove-test-beyond-the-host.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"cvtb{tag}", f"cvtb{tag}h", f"cvtb{tag}n"
    n = os.getpid() % 250 + 1
    host_ip, ns_ip = f"198.18.{n}.1", f"198.18.{n}.2"
    listener = None

    def sh(*cmd):
        r = subprocess.run(list(cmd), capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot set up the namespace beyond the host: {' '.join(cmd)}: {r.stderr.strip()}")

    try:
        for target in (METADATA, PRIVATE):
            route = subprocess.run(["ip", "-o", "route", "show", f"{target}/32"], capture_output=True, text=True)
            if route.stdout.strip():
                pytest.fail(f"the host already has a route to {target} ({route.stdout.strip()}): the test "
                            "would not know where its packets go")
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        # Forwarding is decided per incoming interface: the namespace's replies to a
        # sandbox arrive on this one.
        sh("sysctl", "-q", "-w", f"net.ipv4.conf.{host_if}.forwarding=1")
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        for target in (METADATA, PRIVATE):
            sh("ip", "-n", ns, "addr", "add", f"{target}/32", "dev", "lo")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", host_ip)
        for target in (METADATA, PRIVATE):
            sh("ip", "route", "add", f"{target}/32", "via", ns_ip, "dev", host_if)
        port = 8780
        listener = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", NS_LISTENER, str(port)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = listener.stdout.readline()
        if first.strip() != "listening":
            pytest.fail(f"the listener in the namespace beyond the host did not start: {first}{listener.stdout.read()}")
        beyond = Beyond(ns_ip, port, listener)
        # Controls: the host reaches all three through the veth (its own stack's forwarding
        # path to them works), and nothing there is a host address.
        local = host_addresses()
        for target in (METADATA, PRIVATE, ns_ip):
            assert target not in local, f"{target} is a host address: the test would prove nothing"
            try:
                socket.create_connection((target, port), timeout=3).close()
            except OSError as e:
                pytest.fail(f"the host cannot reach {target}:{port} in the namespace beyond it: {e}")
        yield beyond
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        # Deleting the namespace deletes the veth pair and so the routes through it.
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def test_the_host_other_sandboxes_metadata_and_private_networks_are_unreachable(net_env, beyond_the_host):
    server, daytona = net_env
    listener = HostListener()
    try:
        a = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
        b = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
        serve(b, 8000)
        b_ip = server.api("GET", f"/sandbox/{b.id}")[1]["ip"]
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection((b_ip, 8000), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the host cannot reach sandbox b's server: the test proves nothing")
        checked = 0
        for addr in host_addresses():
            try:
                socket.create_connection((addr, listener.port), timeout=2).close()  # the host itself can
            except OSError:
                # Other servers on this machine add and remove their bridges' addresses.
                assert addr not in host_addresses(), f"the host cannot reach its own {addr}"
                continue
            checked += 1
            assert probe(a, addr, listener.port).startswith("closed"), f"host address {addr} reachable"
        assert listener.accepted == checked, "only the host's own connects arrived"
        assert probe(a, b_ip, 8000).startswith("closed"), "another sandbox reachable"

        # Beyond the host's forwarding: the sandbox reaches the namespace's own address (the
        # path works for it), but not the metadata or the private address behind the same veth.
        beyond = beyond_the_host
        assert probe(a, beyond.reachable, beyond.port) == "open", "control: the sandbox reaches the namespace"
        seen = len(beyond.peers)
        assert probe(a, METADATA, beyond.port).startswith("closed"), "cloud metadata reachable"
        assert probe(a, PRIVATE, beyond.port).startswith("closed"), f"private {PRIVATE} reachable"
        time.sleep(0.5)
        assert len(beyond.peers) == seen, f"a connection from the sandbox arrived: {beyond.peers[seen:]}"

        # A private network the host reaches on its own (its resolver, where not a loopback stub).
        upstream = next(
            (l.split()[1] for l in Path("/etc/resolv.conf").read_text().splitlines() if l.startswith("nameserver")),
            None,
        )
        if upstream and not upstream.startswith("127.") and ":" not in upstream:
            socket.create_connection((upstream, 53), timeout=3).close()
            assert probe(a, upstream, 53).startswith("closed"), f"private {upstream} reachable"
        a.delete()
        b.delete()
    finally:
        listener.sock.close()


@pytest.mark.parametrize("engine", [False, True], ids=["plain", "container-engine"])
def test_a_block_all_sandbox_cannot_forge_a_neighbours_address_to_get_dns_answers_out(net_env, engine):
    """Also from a container-engine sandbox, which may configure its own network namespace
    (CAP_NET_ADMIN there): the bridge still drops what does not carry its own address."""
    server, daytona = net_env
    victim = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py"))
    labels = {"dev.cove.container-engine": "true"} if engine else None
    attacker = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", network_block_all=True, labels=labels))
    victim_ip = server.api("GET", f"/sandbox/{victim.id}")[1]["ip"]
    for s in (victim, attacker):
        s.fs.upload_file(LISTEN.encode(), "/tmp/listen.py")
    attacker.fs.upload_file(SPOOF.encode(), "/tmp/spoof.py")
    # Control: the victim's own query from port 5353 gets an answer from the forwarder.
    own = victim.process.exec(f"python3 /tmp/listen.py 5 {gateway(server)} {QUERY.hex()}", timeout=30).result
    assert own.startswith(f"answer {gateway(server)} 4242"), own
    # The attack: the victim listens, the block_all attacker sends the query under its address.
    victim.process.create_session("listen")
    cmd = victim.process.execute_session_command(
        "listen", SessionExecuteRequest(command="python3 /tmp/listen.py 6", run_async=True)
    )
    time.sleep(1)
    sent = attacker.process.exec(f"python3 /tmp/spoof.py {victim_ip} {gateway(server)} {QUERY.hex()}", timeout=30)
    assert sent.result.strip() == "sent", f"raw sockets work in a sandbox (CAP_NET_RAW): {sent.result}"
    deadline = time.time() + 15
    heard = ""
    while time.time() < deadline and not heard.strip():
        heard = victim.process.get_session_command_logs("listen", cmd.cmd_id).output or ""
        time.sleep(0.5)
    assert heard.strip() == "nothing", f"a forged packet got through: {heard}"
    for s in (victim, attacker):
        s.delete()


def test_another_organization_cannot_link_to_a_sandbox_it_does_not_own_or_change_its_network(net_env):
    server, daytona = net_env
    victim = daytona.create(CreateSandboxFromSnapshotParams(snapshot="py", name="victim"))
    st, org = server.api("POST", "/organizations", {"name": "intruders"})
    assert st == 200, org
    other = org["apiKey"]["value"]
    st, snap = server.api("POST", "/snapshots", {"name": "py", "imageName": BUSYBOX_PYTHON}, key=other)
    assert st == 200, snap
    server.wait_state(snap["id"], key=other)
    for ref in ("victim", victim.id):
        st, body = server.api("POST", "/sandbox", {"snapshot": "py", "linkedSandbox": ref}, key=other)
        assert st == 400 and "not found" in body["message"], body
    st, body = server.api("POST", f"/sandbox/{victim.id}/network-settings", {"networkBlockAll": True}, key=other)
    assert st == 404, body
    assert server.api("GET", f"/sandbox/{victim.id}")[1]["networkBlockAll"] is False, "the victim's policy is untouched"
    victim.delete()
