# The code interpreter's driver: one long-lived python3 per context, started by cove-agent as
# `python3 -u -c <this file>`. Protocol, one JSON object per line:
#   agent -> driver (fd 0): {"code": "...", "envs": {"K": "V"}}
#   driver -> agent (fd 1): {"type": "ready"} once, then per run any number of
#     {"type": "stdout"|"stderr", "text": "..."} and {"type": "error", "name", "value",
#     "traceback"}, ending with {"type": "done"}.
# The driver keeps private copies of fds 0 and 1 for the protocol and points fds 0/1/2 at
# /dev/null and two pipes it forwards, so what user code and its subprocesses print arrives as
# stdout/stderr events, never inside the protocol. SIGINT (the agent's timeout) interrupts a run.
import builtins
import codecs
import json
import linecache
import os
import select
import signal
import sys
import threading
import traceback

_ctl_in = os.fdopen(os.dup(0), "rb")
_ctl_out = os.fdopen(os.dup(1), "wb", buffering=0)
_lock = threading.Lock()


_pending = ["stdout", ""]  # output of sys.stdout/sys.stderr not yet sent: whole lines go out


def _write(obj):
    view = memoryview((json.dumps(obj) + "\n").encode())
    while view:
        view = view[_ctl_out.write(view) :]


def _flush_pending():
    if _pending[1]:
        _write({"type": _pending[0], "text": _pending[1]})
        _pending[1] = ""


def _send(obj):
    with _lock:
        _flush_pending()
        _write(obj)


def _print(kind, text):
    """Output of sys.stdout/sys.stderr, sent by whole lines (and at flush), in order: what
    subprocesses wrote to fds 1 and 2 before this is relayed first."""
    for f in _forwards:
        f.drain()
    with _lock:
        if _pending[0] != kind:
            _flush_pending()
            _pending[0] = kind
        _pending[1] += text
        cut = _pending[1].rfind("\n") + 1
        if cut:
            _write({"type": kind, "text": _pending[1][:cut]})
            _pending[1] = _pending[1][cut:]


class _Forward(threading.Thread):
    """Reads the pipe behind fd `fd` and sends what arrives as `kind` events. `sync` writes a
    marker into the pipe and waits until everything before it has been sent. Reads happen
    only under `relay` (the pipe is non-blocking), in this thread when the pipe is readable
    and in `drain` from writers of sys.stdout/sys.stderr, so bytes are never read but not yet
    sent while a later print goes out ahead of them."""

    MARK = b"\x00cove-sync\x00"

    def __init__(self, fd, kind):
        super().__init__(daemon=True)
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        os.set_blocking(r, False)
        self.fd, self.r, self.kind = fd, r, kind
        self.relay = threading.Lock()
        self.pending = b""
        self.seen = threading.Event()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def emit(self, data, final=False):
        text = self.decoder.decode(data, final)
        if text:
            _send({"type": self.kind, "text": text})

    def drain(self):
        """Sends everything the pipe holds now; False once every writer closed it."""
        with self.relay:
            while True:
                try:
                    chunk = os.read(self.r, 65536)
                except BlockingIOError:
                    return True
                if not chunk:
                    return False
                self.take(chunk)

    def take(self, chunk):
        pending = self.pending + chunk
        while self.MARK in pending:
            before, _, pending = pending.partition(self.MARK)
            self.emit(before, final=True)
            self.seen.set()
        # Keep a tail that may be the start of a marker split across reads.
        keep = 0
        for n in range(min(len(self.MARK) - 1, len(pending)), 0, -1):
            if self.MARK.startswith(pending[-n:]):
                keep = n
                break
        self.emit(pending[: len(pending) - keep])
        self.pending = pending[len(pending) - keep :]

    def run(self):
        while True:
            select.select([self.r], [], [])
            if not self.drain():
                return

    def sync(self):
        self.seen.clear()
        os.write(self.fd, self.MARK)
        self.seen.wait(2)


class _Stream:
    """sys.stdout / sys.stderr: each write is one event, in order with the other stream."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, kind, fd):
        self.kind, self._fd = kind, fd

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            _print(self.kind, s)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        with _lock:
            _flush_pending()

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def readable(self):
        return False

    def writable(self):
        return True


_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_forwards = [_Forward(1, "stdout"), _Forward(2, "stderr")]
for _f in _forwards:
    _f.start()
sys.stdin = open(os.devnull)
sys.stdout = _Stream("stdout", 1)
sys.stderr = _Stream("stderr", 2)
sys.argv = [""]

_globals = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
_runs = 0


def _error(exc):
    tb = exc.__traceback__
    # Drop the driver's own frames: the traceback starts in the user's code.
    while tb is not None and tb.tb_frame.f_code.co_filename != _filename:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    _send({"type": "error", "name": type(exc).__name__, "value": str(exc), "traceback": text})


def _run(code, envs):
    global _runs, _filename
    _runs += 1
    _filename = f"<cell-{_runs}>"
    linecache.cache[_filename] = (len(code), None, code.splitlines(True), _filename)
    saved = {k: os.environ.get(k) for k in envs}
    os.environ.update(envs)
    try:
        exec(compile(code, _filename, "exec"), _globals)
    except BaseException as e:  # noqa: B036 - SystemExit and KeyboardInterrupt end only the run
        _error(e)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout.flush()
        for f in _forwards:
            f.sync()


_filename = "<cell-0>"
_running = False


def _interrupt(signum, frame):
    # Only a run is interrupted; between runs the signal is ignored.
    if _running:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _interrupt)
_send({"type": "ready"})
for _line in _ctl_in:
    try:
        _req = json.loads(_line)
        _code, _envs = _req["code"], _req.get("envs") or {}
    except (ValueError, KeyError, TypeError) as _e:
        _send({"type": "error", "name": "ProtocolError", "value": str(_e), "traceback": ""})
        _send({"type": "done"})
        continue
    _running = True
    try:
        _run(_code, {str(k): str(v) for k, v in _envs.items()})
    except KeyboardInterrupt as _e:  # arrived after the user code, while cleaning up
        _error(_e)
    finally:
        _running = False
    _send({"type": "done"})
