"""Socket.IO events at /api/socket.io/ (Daytona's notification gateway) as the official SDKs
use them: authenticated with the API key, scoped to the key's organization, sandbox state
changes as `sandbox.created` / `sandbox.state.updated`. A raw python-socketio client (the
Python SDK's own dependency) checks the wire; the Python SDK's subscription receives them;
a TypeScript SDK program exits promptly once it is done because its event socket connects."""

import threading
import time

import pytest
import socketio
from daytona import CreateSnapshotParams, Daytona, DaytonaConfig
from daytona import SandboxState as SdkSandboxState

from harness import API_KEY, BUSYBOX, wait_until
from tsrun import run_ts


def new_org_key(server, name):
    st, org = server.api("POST", "/organizations", {"name": name})
    assert st == 200, org
    return org["apiKey"]["value"]


class Listener:
    """A raw Socket.IO client that records every sandbox/snapshot event it receives."""

    EVENTS = ("sandbox.created", "sandbox.state.updated", "sandbox.desired-state.updated", "snapshot.created",
              "snapshot.state.updated", "snapshot.removed")

    def __init__(self, server, key, query=""):
        self.events = []
        self.lock = threading.Lock()
        self.sio = socketio.Client(reconnection=False)
        for name in self.EVENTS:
            self.sio.on(name, self._recorder(name))
        refusals = []
        self.sio.on("connect_error", lambda data: refusals.append(data))
        try:
            self.sio.connect(server.api_url.rsplit("/api", 1)[0] + query, socketio_path="/api/socket.io/",
                             auth={"token": key}, transports=["websocket"], wait_timeout=5)
        except socketio.exceptions.ConnectionError as e:
            raise socketio.exceptions.ConnectionError(f"{e}: {refusals}") from e

    def _recorder(self, name):
        def record(data):
            with self.lock:
                self.events.append((name, data))
        return record

    def about(self, sandbox_id):
        with self.lock:
            return [(n, d) for n, d in self.events if _id_of(d) == sandbox_id]

    def close(self):
        self.sio.disconnect()


def _id_of(data):
    """The resource id the SDKs read from a payload (a wrapper's nested object, else `id`)."""
    if isinstance(data, dict):
        for key in ("sandbox", "snapshot"):
            if isinstance(data.get(key), dict):
                return data[key].get("id")
        return data.get("id")
    return data


def _states(events):
    out = []
    for name, d in events:
        if name == "sandbox.created":
            out.append(d["state"])
        elif name == "sandbox.state.updated":
            assert d["sandbox"]["state"] == d["newState"], d
            out.append(d["newState"])
    return out


@pytest.fixture
def events_server(cove):
    server = cove(extra=["--default-snapshot", "ev-snap"])
    Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)).snapshot.create(
        CreateSnapshotParams(name="ev-snap", image=BUSYBOX)
    )
    return server


def test_a_socketio_client_sees_its_organizations_sandbox_start_and_nothing_of_another_organization(events_server):
    server = events_server
    other_key = new_org_key(server, "other team")
    mine, theirs = Listener(server, API_KEY), Listener(server, other_key)
    try:
        st, sb = server.api("POST", "/sandbox", {"snapshot": "ev-snap", "labels": {"who": "me"}})
        assert st == 200 and sb["state"] == "started", sb
        states = wait_until(lambda: (s := _states(mine.about(sb["id"]))) and s[-1] == "started" and s,
                            timeout=10, what="started event")
        assert states == ["creating", "started"], states
        created = [d for n, d in mine.about(sb["id"]) if n == "sandbox.created"][0]
        assert created["organizationId"] == sb["organizationId"] and created["labels"] == {"who": "me"}

        assert server.api("POST", f"/sandbox/{sb['id']}/stop")[0] == 200
        assert server.api("POST", f"/sandbox/{sb['id']}/start")[0] == 200
        wait_until(lambda: _states(mine.about(sb["id"]))[-1:] == ["started"] and len(_states(mine.about(sb["id"]))) == 6,
                   timeout=10, what="stop and start events")
        assert _states(mine.about(sb["id"])) == ["creating", "started", "stopping", "stopped", "starting", "started"]
        changed = [d for n, d in mine.about(sb["id"]) if n == "sandbox.state.updated"]
        assert [(d["oldState"], d["newState"]) for d in changed][1:3] == [("started", "stopping"), ("stopping", "stopped")]
        desired = [(d["oldDesiredState"], d["newDesiredState"]) for n, d in mine.about(sb["id"])
                   if n == "sandbox.desired-state.updated"]
        assert desired == [("started", "stopped"), ("stopped", "started")], desired

        assert server.api("DELETE", f"/sandbox/{sb['id']}")[0] == 200
        wait_until(lambda: _states(mine.about(sb["id"]))[-1:] == ["destroyed"], timeout=10, what="destroyed event")

        # The other organization's listener heard nothing of ours (it saw the whole flow's time).
        time.sleep(0.5)
        assert theirs.about(sb["id"]) == []
        assert all(_id_of(d) != sb["id"] for _, d in theirs.events), theirs.events

        # ...and its own sandbox is its own: we hear nothing about it, it hears it start.
        st, snap = server.api("POST", "/snapshots", {"name": "their-snap", "imageName": BUSYBOX}, key=other_key)
        assert st == 200, snap
        server.wait_state(snap["id"], key=other_key)
        st, their_sb = server.api("POST", "/sandbox", {"snapshot": "their-snap"}, key=other_key)
        assert st == 200, their_sb
        wait_until(lambda: _states(theirs.about(their_sb["id"]))[-1:] == ["started"], timeout=10, what="their event")
        snap_events = [n for n, d in theirs.events if _id_of(d) == snap["id"]]
        assert snap_events[0] == "snapshot.created" and "snapshot.state.updated" in snap_events, snap_events
        time.sleep(0.5)
        assert mine.about(their_sb["id"]) == [] and mine.about(snap["id"]) == []
        server.api("DELETE", f"/sandbox/{their_sb['id']}", key=other_key)
    finally:
        mine.close()
        theirs.close()


def test_a_bad_key_or_another_organizations_id_is_refused(events_server):
    server = events_server
    for key, query, why in [
        ("not-a-key", "", "authenticate"),
        ("", "", "auth.token"),
        (API_KEY, "?organizationId=someone-else", "organizationId someone-else is not the API key's organization"),
    ]:
        with pytest.raises(socketio.exceptions.ConnectionError) as e:
            Listener(server, key, query)
        assert why in str(e.value), (key, query, str(e.value))
    # The key's own organization id is accepted, as the SDK sends it when configured.
    st, sb = server.api("POST", "/sandbox", {"snapshot": "ev-snap"})
    ok = Listener(server, API_KEY, f"?organizationId={sb['organizationId']}")
    ok.close()
    server.api("DELETE", f"/sandbox/{sb['id']}")


def test_the_python_sdk_receives_state_events_and_its_sandbox_follows_them(events_server):
    server = events_server
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    sandbox = daytona.create()
    assert sandbox.state == SdkSandboxState.STARTED
    dispatcher = daytona._event_dispatcher
    wait_until(lambda: dispatcher.is_connected, timeout=5, what="the SDK's event socket")
    assert not dispatcher.is_failed, dispatcher.fail_error

    heard = []
    daytona._subscription_manager.subscribe(sandbox.id, lambda name, data: heard.append((name, data)),
                                            events=["sandbox.state.updated"])
    sandbox.stop()
    sandbox.start()
    # The create's own creating -> started may reach the socket after the subscription (the
    # relay is asynchronous; seen in CI): it is an earlier change, not one of these. The SDK
    # hands a subscriber every event of the sandbox it listens for, whatever `events` says
    # (the sandbox object itself listens for desired-state changes too; seen in CI).
    def after():
        return [d["newState"] for name, d in heard if name == "sandbox.state.updated" and d.get("oldState") != "creating"]

    wait_until(lambda: after()[-1:] == ["started"], timeout=10, what="SDK events")
    assert after() == ["stopping", "stopped", "starting", "started"], heard

    # A stop made elsewhere (the REST API, another client) reaches this Sandbox object by its
    # event subscription alone: no refresh_data().
    assert server.api("POST", f"/sandbox/{sandbox.id}/stop")[0] == 200
    wait_until(lambda: sandbox.state == SdkSandboxState.STOPPED, timeout=5, what="state by event")
    sandbox.start()
    assert sandbox.process.exec("echo hi").result == "hi\n"
    sandbox.delete()


def test_a_typescript_program_exits_within_seconds_of_its_last_call(events_server):
    server = events_server
    r = run_ts("events_exit.mjs", server, timeout=120)
    assert "lastCallDoneAt" in r, "run_ts measures how long node lingered after that time"
    assert r["hello"] == "hello\n" and r["states"] == ["started", "stopped", "started"], r
    assert r["connected"] is True, "the SDK's event socket connected"
    assert server.api("GET", "/sandbox")[1]["items"] == []
