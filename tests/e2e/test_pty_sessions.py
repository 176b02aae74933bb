"""PTY sessions, session command input and the entrypoint session through the official Python
SDK (unmodified), and the same contract through the TypeScript SDK (`ts/pty_sessions.mjs`):
a real terminal allocated by the agent inside a runc sandbox, over the server's toolbox proxy."""

import asyncio
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, SessionExecuteRequest
from daytona.common.errors import DaytonaBadRequestError, DaytonaConflictError, DaytonaError, DaytonaNotFoundError
from daytona.common.pty import PtySize

from harness import API_KEY, BUSYBOX, wait_until
from tsrun import run_ts

# An entrypoint that prints on both streams and ends, so its followed logs end too.
ENTRYPOINT = ["sh", "-c", "echo booted; echo warn >&2; sleep 1; echo ready"]


@pytest.fixture
def sdk(cove):
    server = cove(extra=["--default-snapshot", "term-snap"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="term-snap", image=BUSYBOX))
    return server, daytona


class Screen:
    """What a PTY handle has printed so far; `until` reads more until some text appears."""

    def __init__(self, handle):
        self.handle = handle
        self.text = ""

    def _take(self, data: bytes):
        self.text += data.decode("utf-8", "replace")

    def until(self, want: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while want not in self.text:
            assert time.monotonic() < deadline, f"{want!r} never appeared; the terminal shows {self.text!r}"
            self.handle.wait(on_data=self._take, timeout=0.3)
        return self.text


def test_a_terminal_has_the_requested_size_cwd_and_env_follows_a_resize_and_reports_its_exit(sdk):
    server, daytona = sdk
    sandbox = daytona.create()
    pty = sandbox.process.create_pty_session(
        id="term", cwd="/tmp", envs={"GREETING": "hello there"}, pty_size=PtySize(rows=30, cols=100)
    )
    screen = Screen(pty)
    pty.send_input('stty size; pwd; echo "[$GREETING|$TERM]"\n')
    out = screen.until("[hello there|xterm-256color]")
    assert "30 100\r\n" in out and "/tmp\r\n" in out, out

    info = sandbox.process.get_pty_session_info("term")
    assert (info.id, info.cols, info.rows, info.cwd, info.active, info.lazy_start) == ("term", 100, 30, "/tmp", True, False)
    assert info.envs == {"GREETING": "hello there", "TERM": "xterm-256color"}
    assert info.created_at.endswith("Z")

    resized = pty.resize(PtySize(rows=40, cols=120))
    assert (resized.cols, resized.rows) == (120, 40)
    pty.send_input("stty size\n")
    screen.until("40 120\r\n")

    pty.send_input("read x; echo got:$x\n")
    pty.send_input("typed by the client\n")
    screen.until("got:typed by the client")
    assert [s.id for s in sandbox.process.list_pty_sessions()] == ["term"]

    pty.send_input("exit 7\n")
    result = pty.wait(on_data=screen._take, timeout=15)
    assert (result.exit_code, result.error) == (7, "non-zero exit")
    assert not pty.is_connected()
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_pty_session_info("term")
    assert sandbox.process.list_pty_sessions() == []
    sandbox.delete()


def test_a_second_client_connects_to_a_running_terminal_and_a_kill_ends_both_with_137(sdk):
    server, daytona = sdk
    sandbox = daytona.create()
    first = sandbox.process.create_pty_session(id="shared")
    with pytest.raises(DaytonaConflictError):
        sandbox.process.create_pty_session(id="shared")
    with pytest.raises(DaytonaBadRequestError):
        sandbox.process.create_pty_session(id="huge", pty_size=PtySize(rows=24, cols=5000))

    second = sandbox.process.connect_pty_session("shared")
    second_screen = Screen(second)
    first.send_input("sleep 300 & echo job:$!\n")
    second_screen.until("job:")
    assert second.is_connected()

    first.kill()
    for handle in (first, second):
        r = handle.wait(timeout=15)
        assert (r.exit_code, r.error) == (137, "SIGKILL")
    assert sandbox.process.list_pty_sessions() == []
    # The background job went with the terminal.
    assert "sleep 300" not in sandbox.process.exec("ps").result
    with pytest.raises(DaytonaError, match="not found"):
        sandbox.process.connect_pty_session("shared")
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.kill_pty_session("shared")
    sandbox.delete()


def test_a_session_command_waiting_in_read_gets_input_sent_without_a_newline(sdk):
    server, daytona = sdk
    sandbox = daytona.create()
    sandbox.process.create_session("ask")
    cmd = sandbox.process.execute_session_command(
        "ask", SessionExecuteRequest(command="read first; read second; echo \"got $first and $second\"", run_async=True)
    )
    sandbox.process.send_session_command_input("ask", cmd.cmd_id, "one")
    sandbox.process.send_session_command_input("ask", cmd.cmd_id, "two\n")
    wait_until(lambda: sandbox.process.get_session_command("ask", cmd.cmd_id).exit_code == 0, 10, 0.1, "read to finish")
    logs = sandbox.process.get_session_command_logs("ask", cmd.cmd_id)
    assert logs.stdout.endswith("got one and two\n"), logs.stdout
    sandbox.delete()


def test_the_entrypoint_session_shows_its_command_and_logs_and_its_logs_can_be_followed(sdk):
    server, daytona = sdk
    daytona.snapshot.create(CreateSnapshotParams(name="ep-snap", image=BUSYBOX, entrypoint=ENTRYPOINT))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="ep-snap"))
    out, err = [], []
    asyncio.run(sandbox.process.get_entrypoint_logs_async(out.append, err.append))
    assert ("".join(out), "".join(err)) == ("booted\nready\n", "warn\n")
    session = sandbox.process.get_entrypoint_session()
    assert session.session_id == "entrypoint"
    assert [(c.command, c.exit_code) for c in session.commands] == [(" ".join(ENTRYPOINT), 0)]
    logs = sandbox.process.get_entrypoint_logs()
    assert (logs.stdout, logs.stderr) == ("booted\nready\n", "warn\n")
    sandbox.delete()


def test_an_interactive_program_in_a_terminal_flow(sdk):
    """In our own words: a user opens a terminal in a fresh sandbox, writes a small script that
    asks a question, answers it at the prompt, widens the window, checks what the program sees,
    and leaves the terminal with a clean exit."""
    server, daytona = sdk
    sandbox = daytona.create()
    sandbox.fs.upload_file(b'printf "name? "; read n; echo "welcome, $n"; [ "$n" = root ] && exit 0 || exit 4\n', "ask.sh")
    term = sandbox.process.create_pty_session(id="flow", pty_size=PtySize(rows=20, cols=60))
    screen = Screen(term)
    term.send_input("sh ask.sh; echo status=$?\n")
    screen.until("name? ")
    term.send_input("visitor\n")
    screen.until("status=4")
    assert "welcome, visitor" in screen.text
    term.resize(PtySize(rows=50, cols=200))
    term.send_input("stty size\n")
    screen.until("50 200")
    term.send_input("exit\n")
    assert term.wait(on_data=screen._take, timeout=15).exit_code == 0
    sandbox.delete()


def test_the_typescript_sdk_drives_terminals_session_input_and_the_entrypoint(sdk):
    server, daytona = sdk
    daytona.snapshot.create(CreateSnapshotParams(name="ep-snap", image=BUSYBOX, entrypoint=ENTRYPOINT))
    r = run_ts("pty_sessions.mjs", server)
    assert "30 100\r\n" in r["first"] and "/tmp\r\n" in r["first"] and "[hi ts|xterm-256color]" in r["first"]
    assert r["info"] == {
        "id": "ts-term", "cols": 100, "rows": 30, "cwd": "/tmp", "active": True, "lazyStart": False,
        "envs": {"GREETING": "hi ts", "TERM": "xterm-256color"},
    }
    assert r["resized"] == [120, 40] and r["sawResize"] and r["sawRead"]
    assert r["listed"] == ["ts-term"]
    assert r["exit"] == {"exitCode": 5, "error": "non-zero exit"}
    assert r["afterExit"] == "not found"
    assert r["conflict"] and r["killed"] == [{"exitCode": 137, "error": "SIGKILL"}] * 2
    assert r["listAfterKill"] == []
    assert r["inputOut"].endswith("got one and two\n"), r["inputOut"]
    assert r["entrypoint"] == {
        "sessionId": "entrypoint", "command": " ".join(ENTRYPOINT), "exitCode": 0,
        "stdout": "booted\nready\n", "stderr": "warn\n", "streamedOut": "booted\nready\n", "streamedErr": "warn\n",
    }
