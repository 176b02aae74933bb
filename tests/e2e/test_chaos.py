"""Chaos (issue 13): rounds of a random `kill -9` of the server during a random mix of pulls,
Dockerfile builds, sandbox creates, file uploads, pushes to the built-in registry, deletes
and GC (snapshot deletes), then one more restart and the invariants a crash must never
break:

- after one minute nothing is in a transitional state (sandboxes creating/starting/stopping/
  destroying/archiving/restoring/pulling_snapshot; snapshots pending/pulling/building/removing);
- every blob in the content store hashes to its name (sha256 and sha512);
- every `started` sandbox answers exec;
- no mount, loop device, netns, veth, cgroup, runc container or bundle directory is left that
  the remaining sandboxes do not account for (the last start runs without a warm pool, so
  only `started` sandboxes may hold any);
- every `active` snapshot's unpacked tree has every path of its image (fixture images with
  a known file list; a 3,000-file one so that GC's removal takes long enough to be hit);
- a sandbox whose create answered `started` (the keeper, made before the first kill, among
  them) is still `started` unless the test deleted it: sandboxes outlive the server.

The RNG is seeded; the seed is printed, and `COVE_CHAOS_SEED=<seed>` replays the same choices
(timings on a loaded machine still differ). `COVE_CHAOS_ROUNDS` changes the number of rounds;
the server's log is copied to `/tmp/cove-chaos-<seed>.log` on a failure (always with
`COVE_CHAOS_KEEP_LOG=1`). About a minute on a 2-core machine, bounded to a few."""

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import mkimage
from containers import list_containers
from harness import API_KEY, BUSYBOX, FIXTURES
from v2client import V2

ROUNDS = int(os.environ.get("COVE_CHAOS_ROUNDS", "12"))
SETTLE_S = 60
SANDBOX_TRANSITIONAL = {"creating", "starting", "stopping", "destroying", "archiving", "restoring", "pulling_snapshot"}
SNAPSHOT_TRANSITIONAL = {"pending", "pulling", "building", "removing"}
MANY = f"{FIXTURES}/chaos-many:1"
MANY_FILES = 3000
# 1 GiB disks: a few sandboxes, the warm pool and build steps fit beside other tests' servers.
SMALL = {"disk": 1}


# --- the images and the paths each one must have ---------------------------------------------


def image_paths(blobs):
    """Every path (relative, no leading slash) an image's layers leave, whiteouts applied."""
    paths = set()
    for blob in blobs[:-1]:  # the last blob is the config
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as t:
            for m in t.getmembers():
                name = m.name.lstrip("./").rstrip("/")
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    paths = {p for p in paths if not p.startswith(parent + "/")}
                elif base.startswith(".wh."):
                    gone = (parent + "/" if parent else "") + base[4:]
                    paths = {p for p in paths if p != gone and not p.startswith(gone + "/")}
                else:
                    parts = name.split("/")
                    paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def tree_paths(root: Path):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(n if rel == "." else f"{rel}/{n}")
    return out


@pytest.fixture(scope="module")
def images(registry):
    """(busybox:1's paths, chaos-many's blobs and manifest, chaos-many's paths)."""
    bb_blobs, _ = mkimage.build()  # what conftest pushed as busybox:1 (seed "cove")
    files = [(f"many/d{i // 300:02d}/f{i:04d}", f"{i}\n".encode(), 0o644) for i in range(MANY_FILES)]
    many_blobs, many_manifest = mkimage.build(seed="chaos-many", files=files)
    mkimage.push_image(registry.url, "chaos-many", ["1"], seed="chaos-many", files=files)
    many = image_paths(many_blobs)
    assert len([p for p in many if p.startswith("many/d") and "/f" in p]) == MANY_FILES
    return image_paths(bb_blobs), (many_blobs, many_manifest), many


# --- the operations --------------------------------------------------------------------------


class World:
    """The server, what the test asked for, and a log of what each operation got."""

    def __init__(self, server, rng, images):
        self.server, self.rng = server, rng
        self.busybox_paths, (self.many_blobs, self.many_manifest), self.many_paths = images
        self.expected = {"base": self.busybox_paths}  # snapshot name → paths its tree must have
        self.log = []
        self.lock = threading.Lock()
        self.org = None
        self.seen_ids = set()  # every sandbox id a list showed: whose host names are ours
        self.created = {}  # id → round tag, of sandboxes whose create answered `started`
        self.deleting = set()  # ids the test asked to delete

    def note(self, what):
        with self.lock:
            self.log.append(what)

    def api(self, method, path, body=None, timeout=20, base=None):
        """(status, body), or (None, error text) when the server went away mid-call. `base`:
        the server's root URL instead of `/api` (the toolbox)."""
        s = self.server
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request((base or s.api_url) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()[:300]
        except (OSError, ValueError) as e:
            return None, repr(e)[:200]

    def sandboxes(self):
        st, body = self.api("GET", "/sandbox?limit=200")
        assert st == 200, body
        items = body["items"] if isinstance(body, dict) else body
        self.seen_ids.update(s["id"] for s in items)
        return items

    def snapshots(self):
        st, body = self.api("GET", "/snapshots?limit=200")
        assert st == 200, body
        return body["items"] if isinstance(body, dict) else body

    # Each operation picks its arguments in the main thread (from the seeded RNG, so a seed
    # replays the same choices) and returns the call to run in a thread.

    def pull(self, tag):
        name = f"pull-{tag}"
        image, paths = self.rng.choice([(BUSYBOX, self.busybox_paths), (MANY, self.many_paths)])
        self.expected[name] = paths
        return lambda: self.note(("pull", name, image, self.api("POST", "/snapshots", {"name": name, "imageName": image, **SMALL})[0]))

    def build(self, tag):
        name = f"build-{tag}"
        # Half of them share the Dockerfile (the build-refs reuse path), half are new.
        marker = self.rng.choice(["shared", tag])
        df = f"FROM {BUSYBOX}\nRUN echo {marker} > /chaos-built\n"
        self.expected[name] = self.busybox_paths | {"chaos-built"}
        body = {"name": name, "buildInfo": {"dockerfileContent": df, "contextHashes": []}, **SMALL}
        return lambda: self.note(("build", name, self.api("POST", "/snapshots", body)[0]))

    def create(self, tag, snapshots):
        snap = self.rng.choice(["base", "base", *snapshots])  # sometimes one still pulling or building
        def run():
            st, body = self.api("POST", "/sandbox", {"snapshot": snap, "labels": {"chaos": tag}}, timeout=60)
            if isinstance(body, dict) and "id" in body:
                self.seen_ids.add(body["id"])
                if body.get("state") == "started":
                    self.created[body["id"]] = tag
            self.note(("create", snap, st))

        return run

    def upload(self, tag, started):
        if not started:
            return None
        sb = self.rng.choice(started)
        payload = self.rng.randbytes(self.rng.randint(1, 4) << 20)

        def run():
            boundary = "----chaos"
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files[0].path"\r\n\r\n/tmp/up-{tag}\r\n'
                    f'--{boundary}\r\nContent-Disposition: form-data; name="files[0].file"; filename="f"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
            req = urllib.request.Request(f"{self.server.url}/toolbox/{sb}/files/bulk-upload", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {API_KEY}",
                                                  "Content-Type": f"multipart/form-data; boundary={boundary}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    st = r.status
            except urllib.error.HTTPError as e:
                st = e.code
            except OSError as e:
                st = repr(e)[:80]
            self.note(("upload", sb, st))

        return run

    def push(self, tag):
        """The 3,000-file image pushed to the built-in registry (the same digest every time, as
        a re-push of an image GC may be removing), then a snapshot of it."""
        name = f"push-{tag}"
        self.expected[name] = self.many_paths
        host = f"127.0.0.1:{self.server.port}"
        repo = f"{self.org}/chaos"

        def run():
            v2 = V2(self.server)
            try:
                for b in self.many_blobs:
                    v2.push_blob(repo, b)
                st, _, b = v2.push_manifest(repo, tag, self.many_manifest)
                assert st == 201, (st, b)
            except (AssertionError, OSError) as e:
                return self.note(("push", name, repr(e)[:80]))
            self.note(("push", name, self.api("POST", "/snapshots", {"name": name, "imageName": f"{host}/{repo}:{tag}", **SMALL})[0]))

        return run

    def delete_sandbox(self, tag, sandboxes):
        if not sandboxes:
            return None
        sb = self.rng.choice(sandboxes)
        self.deleting.add(sb)
        return lambda: self.note(("delete sandbox", sb, self.api("DELETE", f"/sandbox/{sb}", timeout=60)[0]))

    def delete_snapshot(self, tag, snapshots):
        """A snapshot delete: the GC that follows removes its image when nothing else uses it."""
        if not snapshots:
            return None
        name = self.rng.choice(snapshots)
        return lambda: self.note(("delete snapshot (gc)", name, self.api("DELETE", f"/snapshots/{name}")[0]))

    def round(self, r):
        # The keeper is never deleted: it shows that a running sandbox outlives every kill.
        sandboxes = [s for s in self.sandboxes() if s.get("labels", {}).get("chaos") not in (None, "keeper")]
        started = sorted(s["id"] for s in self.sandboxes() if s["state"] == "started")
        snaps = sorted(s["name"] for s in self.snapshots() if s["name"] != "base")
        calls = []
        for i in range(self.rng.randint(3, 5)):
            tag = f"r{r}o{i}"
            kind = self.rng.choice(["pull", "build", "create", "create", "upload", "push", "delete sandbox", "gc"])
            call = {
                "pull": lambda: self.pull(tag),
                "build": lambda: self.build(tag),
                "create": lambda: self.create(tag, snaps),
                "upload": lambda: self.upload(tag, started),
                "push": lambda: self.push(tag),
                # At most a few sandboxes live: deletes come more often once there are some.
                "delete sandbox": lambda: self.delete_sandbox(tag, sorted(s["id"] for s in sandboxes)),
                "gc": lambda: self.delete_snapshot(tag, snaps),
            }[kind]()
            if call is None and len(sandboxes) > 3:
                call = self.delete_sandbox(tag, sorted(s["id"] for s in sandboxes))
            if call is not None:
                calls.append(call)
        delay = round(self.rng.uniform(0.05, 2.0), 2)
        print(f"round {r}: {len(calls)} operations, kill -9 after {delay}s", flush=True)
        threads = [threading.Thread(target=c, daemon=True) for c in calls]
        for t in threads:
            t.start()
        time.sleep(delay)
        self.server.kill()
        for t in threads:
            t.join(90)
        self.restart()

    def restart(self):
        try:
            self.server.start()
        except AssertionError as e:
            tail = self.server.log_path.read_text()[-4000:]
            raise AssertionError(f"the server did not come back after a kill -9: {e}\nlog tail:\n{tail}") from None


# --- the invariants --------------------------------------------------------------------------


def hash_blobs(data_dir: Path):
    bad, n = [], 0
    for alg in ("sha256", "sha512"):
        d = data_dir / "blobs" / alg
        if not d.is_dir():
            continue
        for f in d.iterdir():
            n += 1
            h = hashlib.new(alg)
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != f.name:
                bad.append(f"{alg}/{f.name} hashes to {h.hexdigest()}")
    return n, bad


def short_id(sid, n=8):
    return "".join(c for c in sid if c.isalnum())[:n].lower()


def leaks(server, started: set, all_ids: set, seen_ids: set):
    """(what the host holds for this server that `started` sandboxes do not account for, how
    many of each kind the started sandboxes hold: proof that the check sees them)."""
    data, prefix = str(server.data_dir), server.net["prefix"]
    own = lambda p: any(p == f"{data}/sandboxes/{i}" or p.startswith(f"{data}/sandboxes/{i}/") for i in started)  # noqa: E731
    out = {}
    mounts, owned = [], 0
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        if mp.startswith(data + "/"):
            if own(mp):
                owned += 1
            else:
                mounts.append(mp)
    out["mounts"] = mounts
    loops = json.loads(subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True).stdout or '{"loopdevices":[]}')
    out["loop devices"] = [f"{l['name']} {l['back-file']}" for l in loops.get("loopdevices", [])
                           if (l.get("back-file") or "").startswith(data + "/") and not own(l["back-file"].removesuffix(" (deleted)"))]
    # Sandboxes' veths and netns are named <prefix><8 of the id>; the prefix alone is not
    # unique across test sessions, so a name is this server's when it names one of its
    # sandboxes, or when the link is a port of its bridge (build steps' too).
    names = {prefix + short_id(i) for i in started}
    ours = {prefix + short_id(i) for i in seen_ids | all_ids}
    netns = [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if l.split()]
    out["netns"] = [n for n in netns if n in ours and n not in names]
    ip_links = lambda *a: [l.split(":")[1].strip().split("@")[0] for l in subprocess.run(["ip", "-o", "link", "show", *a], capture_output=True, text=True).stdout.splitlines()]  # noqa: E731
    links, ports = ip_links(), ip_links("master", server.net["bridge"])
    out["veth"] = sorted({n for n in links if n in ours and n not in names} | {n for n in ports if n not in names})
    cgroups = []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        parent = ctrl / server.net["cgroup"].lstrip("/")
        if parent.is_dir():
            cgroups += [f"{ctrl.name}/{c.name}" for c in parent.iterdir() if c.is_dir() and c.name not in started]
    out["cgroups"] = cgroups
    containers = list_containers(server.net["runc_root"])
    out["containers"] = [f"{c['id']} {c['status']}" for c in containers if c["id"] not in started or c["status"] != "running"]
    sandboxes = server.data_dir / "sandboxes"
    out["bundle dirs of no sandbox"] = [d.name for d in sandboxes.iterdir() if not d.name.startswith(".") and d.name not in all_ids] if sandboxes.is_dir() else []
    seen = {
        "mounts": owned,
        "veth": len(names & set(ports)),
        "containers": len([c for c in containers if c["id"] in started and c["status"] == "running"]),
    }
    return {k: v for k, v in out.items() if v}, seen


def test_random_kills_during_a_mix_of_work_break_no_invariant(cove, images):
    seed = int(os.environ.get("COVE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nCOVE_CHAOS_SEED={seed} (replay: COVE_CHAOS_SEED={seed} pytest tests/e2e/test_chaos.py)", flush=True)
    rng = random.Random(seed)
    started_at = time.monotonic()
    server = cove()
    world = World(server, rng, images)
    st, access = server.api("GET", "/docker-registry/registry-push-access")
    assert st == 200, access
    world.org = access["project"]
    st, base = server.api("POST", "/snapshots", {"name": "base", "imageName": BUSYBOX, **SMALL})
    assert st == 200, base
    assert server.wait_state("base")["state"] == "active"
    st, sb = server.api("POST", "/sandbox", {"snapshot": "base", "labels": {"chaos": "keeper"}})
    assert st == 200 and sb["state"] == "started", sb

    for r in range(ROUNDS):
        world.round(r)
    # The last start without a warm pool: then only started sandboxes may hold anything.
    server.kill()
    server.extra += ["--warm-pool-size", "0"]
    world.restart()
    print("operations and what they got:", *world.log, sep="\n  ", flush=True)

    failures = []
    # 1. Nothing stays in a transitional state.
    def settled():
        busy = [f"sandbox {s['id']} {s['state']}" for s in world.sandboxes() if s["state"] in SANDBOX_TRANSITIONAL]
        busy += [f"snapshot {s['name']} {s['state']}" for s in world.snapshots() if s["state"] in SNAPSHOT_TRANSITIONAL]
        return busy

    deadline = time.monotonic() + SETTLE_S
    while (busy := settled()) and time.monotonic() < deadline:
        time.sleep(1)
    if busy:
        failures.append(f"transitional after {SETTLE_S}s: {busy}")
    sandboxes, snapshots = world.sandboxes(), world.snapshots()
    print("sandboxes:", sorted((s["id"][:8], s["state"], s.get("errorReason")) for s in sandboxes), flush=True)
    print("snapshots:", sorted((s["name"], s["state"], s.get("errorReason")) for s in snapshots), flush=True)

    # 2. Every blob hashes to its name.
    n, bad = hash_blobs(server.data_dir)
    if bad:
        failures.append(f"{len(bad)} of {n} blobs do not hash to their name: {bad[:5]}")

    # 3. Every started sandbox answers exec.
    started = {s["id"] for s in sandboxes if s["state"] == "started"}
    for sid in sorted(started):
        st, out = world.api("POST", f"/toolbox/{sid}/process/execute", {"command": "echo chaos-ok"}, timeout=30, base=server.url)
        if st != 200 or "chaos-ok" not in str(out.get("result") if isinstance(out, dict) else out):
            sb = next(s for s in sandboxes if s["id"] == sid)
            snap = next((x for x in snapshots if x["name"] == sb.get("snapshot") or x["id"] == sb.get("snapshot")), None)
            image = server.data_dir / "images" / snap["ref"].split(":", 1)[1] if snap and snap.get("ref") else None
            failures.append(f"started sandbox {sid} (snapshot {sb.get('snapshot')}: "
                            f"{'row gone' if snap is None else snap['state']}, image dir "
                            f"{'unknown' if image is None else ('present' if image.exists() else 'gone')}) "
                            f"does not answer exec: {st} {out}")

    # 4. Nothing leaked.
    left, seen = leaks(server, started, {s["id"] for s in sandboxes}, world.seen_ids)
    # A sandbox whose create answered `started` runs on through every later kill.
    for sid, tag in sorted(world.created.items()):
        now = next((s for s in sandboxes if s["id"] == sid), None)
        if sid not in world.deleting and (not now or now["state"] != "started"):
            failures.append(f"sandbox {sid} (created started in {tag}, never stopped or deleted) is "
                            f"{now and (now['state'], now.get('errorReason'))}")
    keeper = next((s for s in sandboxes if s["id"] == sb["id"]), None)
    if not keeper or keeper["state"] != "started":
        failures.append(f"the keeper sandbox {sb['id']} (started before the first kill, never touched) is "
                        f"{keeper and (keeper['state'], keeper.get('errorReason'))}, not started")
    assert not started or all(seen.values()), f"the leak check does not see the started sandboxes' own resources: {seen}"
    if left:
        failures.append(f"leaked (started sandboxes: {sorted(started)}): {left}")

    # 5. Every active snapshot's tree is complete.
    for s in snapshots:
        if s["state"] != "active":
            continue
        tree = server.data_dir / "images" / s["ref"].split(":", 1)[1]
        want = world.expected.get(s["name"])
        if want is None:
            continue
        if not (tree / ".complete").exists():
            failures.append(f"active snapshot {s['name']}: {tree} has no .complete")
            continue
        missing = want - tree_paths(tree / "rootfs")
        if missing:
            failures.append(f"active snapshot {s['name']} ({s['ref']}): {len(missing)} of {len(want)} paths missing, e.g. {sorted(missing)[:5]}")

    print(f"chaos: {ROUNDS} rounds in {time.monotonic() - started_at:.0f}s, seed {seed}", flush=True)
    if failures or os.environ.get("COVE_CHAOS_KEEP_LOG"):
        kept = Path(f"/tmp/cove-chaos-{seed}.log")
        kept.write_text(server.log_path.read_text())
        print(f"server log: {kept}", flush=True)
        if failures:
            failures.append(f"server log: {kept}")
    assert not failures, f"COVE_CHAOS_SEED={seed}:\n" + "\n".join(failures)
