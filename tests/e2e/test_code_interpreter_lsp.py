"""The code interpreter, code_run's chart artifacts and the language servers, through both
official SDKs, in a real Debian image with python3, python3-matplotlib and python3-pylsp
(tests/fixtures/debimage.py, cached under /var/cache/cove-tests). One server and one sandbox
serve the contract tests of this module; the image without a language server is the busybox
python fixture. The TypeScript language server runs in a second Debian image with nodejs, on
which `typescript-language-server` and `typescript` (pinned, installed on this machine with
npm) are a layer of their own, laid out as `npm install -g` does."""

import base64
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    DaytonaTimeoutError,
    LspCompletionPosition,
)

import debimage
from harness import API_KEY, BUSYBOX_PYTHON, FIXTURES, Cove
from tsrun import run_ts

PACKAGES = debimage.DEFAULT_PACKAGES + ("python3-matplotlib", "python3-pylsp")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# typescript-language-server 5.x needs node 20; bookworm has 18.
TS_NPM = ("typescript-language-server@4.4.0", "typescript@5.6.3")
COUNTER_TS = b"""export class Counter {
  private count = 0

  increment(by: number): number {
    this.count += by
    return this.count
  }

  reset(): void {
    this.count = 0
  }
}

export function makeCounter(): Counter {
  return new Counter()
}
"""
MAIN_TS = b"import { makeCounter } from './counter'\n\nconst tally = makeCounter()\ntally.inc"


@pytest.fixture(scope="module")
def env(registry_with_python):
    """(server, daytona client, sandbox) shared by the module."""
    try:
        debimage.push_debian_image(registry_with_python.url, "debian-interp", "bookworm", packages=PACKAGES)
    except debimage.BuildError as e:
        pytest.fail(str(e), pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    d.chmod(0o711)
    server = Cove(d / "d0", registry_with_python.url).start()
    try:
        daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
        daytona.snapshot.create(CreateSnapshotParams(name="interp", image=f"{FIXTURES}/debian-interp:bookworm"), timeout=600)
        sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="interp"), timeout=300)
        yield server, daytona, sandbox
    finally:
        server.cleanup()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ts_sandbox(env, registry_with_python):
    """A sandbox, on the module's server, of bookworm with nodejs plus the npm layer of
    TS_NPM; skipped (with npm's words) only when the npm registry cannot be reached."""
    _, daytona, _ = env
    try:
        layer = debimage.npm_layer(TS_NPM)
    except debimage.NpmError as e:
        if e.unreachable:
            pytest.skip(f"the npm registry is unreachable, so typescript-language-server cannot be installed: {e}")
        pytest.fail(str(e), pytrace=False)
    try:
        debimage.push_debian_image(registry_with_python.url, "debian-node", "bookworm", packages=("nodejs",), layers=[layer])
    except debimage.BuildError as e:
        pytest.fail(str(e), pytrace=False)
    daytona.snapshot.create(CreateSnapshotParams(name="tslsp", image=f"{FIXTURES}/debian-node:bookworm"), timeout=600)
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="tslsp"), timeout=300)
    try:
        sandbox.fs.create_folder("/tmp/counter", "755")
        sandbox.fs.upload_file(COUNTER_TS, "/tmp/counter/counter.ts")
        sandbox.fs.upload_file(MAIN_TS, "/tmp/counter/main.ts")
        yield sandbox
    finally:
        sandbox.delete()


def test_typescript_language_server_completes_a_method_of_an_imported_class_and_lists_symbols(ts_sandbox):
    lsp = ts_sandbox.create_lsp_server("typescript", "/tmp/counter")
    lsp.start()
    try:
        lsp.did_open("/tmp/counter/main.ts")
        items = lsp.completions("/tmp/counter/main.ts", LspCompletionPosition(line=3, character=9)).items
        labels = [i.label for i in items]
        assert "increment" in labels and "reset" in labels, labels
        assert "makeCounter" not in labels, "completions of the scope, not of the Counter instance"
        symbols = lsp.document_symbols("/tmp/counter/counter.ts")
        assert {"Counter", "increment", "reset", "makeCounter"} <= {s.name for s in symbols}, [s.name for s in symbols]
        assert all(s.location.uri.endswith("/tmp/counter/counter.ts") for s in symbols)
        assert "makeCounter" in [s.name for s in lsp.sandbox_symbols("makeCoun")]
        lsp.did_close("/tmp/counter/main.ts")
    finally:
        lsp.stop()
    with pytest.raises(DaytonaError) as e:
        lsp.completions("/tmp/counter/main.ts", LspCompletionPosition(line=3, character=9))
    assert e.value.status_code == 404, "a stopped server answers nothing"


def test_the_typescript_sdk_gets_typescript_completions_and_symbols(env, ts_sandbox):
    server, _, _ = env
    r = run_ts("typescript_lsp.mjs", server, SANDBOX_ID=ts_sandbox.id)
    assert {"increment", "reset"} <= set(r["completions"]), r["completions"]
    assert {"Counter", "increment", "reset", "makeCounter"} <= set(r["symbols"]), r["symbols"]


def test_contexts_keep_variables_apart_and_stream_output_errors_and_timeouts(env):
    _, _, sandbox = env
    ci = sandbox.code_interpreter
    a, b = ci.create_context(), ci.create_context(cwd="/tmp")
    assert a.language == "python" and a.active and b.cwd == "/tmp"
    ci.run_code("counter = 1\nimport os", context=a)
    ci.run_code("counter = 'b'", context=b)
    r = ci.run_code("counter += 1\nprint(counter, os.getcwd())", context=a)
    assert r.error is None and r.stdout == f"2 {a.cwd}\n"
    assert ci.run_code("print(counter)", context=b).stdout == "b\n"
    assert ci.run_code("print(counter)").error.name == "NameError"  # the default context is another
    assert {c.id for c in ci.list_contexts()} == {a.id, b.id}

    chunks, errors = [], []
    code = "import sys, time\nfor i in range(3):\n    print(f'tick {i}')\n    time.sleep(0.3)\nsys.stderr.write('warned\\n')\nprint('done')"
    r = ci.run_code(
        code,
        context=a,
        on_stdout=lambda m: chunks.append(("out", m.output, time.monotonic())),
        on_stderr=lambda m: chunks.append(("err", m.output, time.monotonic())),
        on_error=errors.append,
    )
    assert [(k, t) for k, t, _ in chunks] == [("out", "tick 0\n"), ("out", "tick 1\n"), ("out", "tick 2\n"), ("err", "warned\n"), ("out", "done\n")]
    assert chunks[2][2] - chunks[0][2] > 0.4, "callbacks came all at once, not as the code printed"
    assert r.stdout == "tick 0\ntick 1\ntick 2\ndone\n" and r.stderr == "warned\n" and not errors

    r = ci.run_code("def boom():\n    raise KeyError('missing')\nboom()", context=a, on_error=errors.append)
    assert (r.error.name, r.error.value) == ("KeyError", "'missing'")
    assert "boom()" in r.error.traceback and errors == [r.error]
    assert ci.run_code("print(os.environ['ONLY_NOW'])", context=a, envs={"ONLY_NOW": "yes"}).stdout == "yes\n"

    with pytest.raises(DaytonaTimeoutError):
        ci.run_code("import time\ntime.sleep(30)", context=a, timeout=1)
    assert ci.run_code("print(counter)", context=a).stdout == "2\n", "an interrupted context keeps its state"

    ci.delete_context(a)
    assert [c.id for c in ci.list_contexts()] == [b.id]
    with pytest.raises(DaytonaError):
        ci.run_code("print(1)", context=a)
    ci.delete_context(b)


def test_code_run_returns_a_matplotlib_figure_as_a_chart(env):
    _, _, sandbox = env
    code = """
import matplotlib.pyplot as plt
print("plotting")
plt.figure()
plt.plot([0, 1, 2, 3], [0, 1, 4, 9], label="squares")
plt.title("Growth")
plt.xlabel("n")
plt.ylabel("n squared")
plt.show()
"""
    r = sandbox.process.code_run(code)
    assert r.exit_code == 0, r.result
    assert r.result == "plotting\n"
    (chart,) = r.artifacts.charts
    assert (chart.type, chart.title, chart.x_label, chart.y_label) == ("line", "Growth", "n", "n squared")
    assert chart.elements[0].label == "squares"
    assert chart.elements[0].points == [[0, 0], [1, 1], [2, 4], [3, 9]]
    assert base64.b64decode(chart.png).startswith(PNG_MAGIC)
    bars = sandbox.process.code_run("import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.title('Bars')")
    (chart,) = bars.artifacts.charts  # a figure left open is reported too
    assert chart.type == "bar" and [(e.label, e.value) for e in chart.elements] == [("a", "3.0"), ("b", "5.0")]
    assert sandbox.process.code_run("print(1)").artifacts.charts == []


def test_pylsp_completes_and_lists_symbols(env):
    _, _, sandbox = env
    sandbox.fs.create_folder("/tmp/proj", "755")
    sandbox.fs.upload_file(b"def area_of_circle(r):\n    return 3.14159 * r * r\n\n\ndef perimeter(r):\n    return 2 * 3.14159 * r\n", "/tmp/proj/geometry.py")
    sandbox.fs.upload_file(b"import geometry\n\ngeometry.are", "/tmp/proj/main.py")
    lsp = sandbox.create_lsp_server("python", "/tmp/proj")
    lsp.start()
    try:
        lsp.did_open("/tmp/proj/main.py")
        items = lsp.completions("/tmp/proj/main.py", LspCompletionPosition(line=2, character=12)).items
        assert any(i.label.startswith("area_of_circle") for i in items), [i.label for i in items]
        symbols = lsp.document_symbols("/tmp/proj/geometry.py")
        assert {"area_of_circle", "perimeter"} <= {s.name for s in symbols}
        assert all(s.location.uri.endswith("/tmp/proj/geometry.py") for s in symbols)
        assert [s.name for s in lsp.sandbox_symbols("perim")] == ["perimeter"]
        lsp.did_close("/tmp/proj/main.py")
    finally:
        lsp.stop()


def test_the_typescript_sdk_runs_contexts_streams_charts_and_lsp(env):
    server, _, sandbox = env
    started = time.monotonic()
    r = run_ts("code_interpreter_lsp.mjs", server, SANDBOX_ID=sandbox.id)
    assert r["persisted"] == "42\n" and r["otherContext"] == "NameError"
    assert r["streamed"] == [["out", "a\n"], ["err", "b\n"], ["out", "c\n"]]
    assert r["error"] == {"name": "ZeroDivisionError", "value": "division by zero"}
    assert r["timeout"] == "DaytonaTimeoutError"
    assert r["listedAfterDelete"] == 0
    assert r["chart"] == {"type": "line", "title": "TS", "png": True}
    assert r["completion"] is True and r["symbols"] == ["greet", "Greeter"]
    assert r["elapsedMs"] < (time.monotonic() - started) * 1000


def test_an_image_without_a_language_server_names_what_to_install(cove, registry_with_python):
    server = cove()
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="bbpy", image=BUSYBOX_PYTHON))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="bbpy"))
    try:
        with pytest.raises(DaytonaError) as e:
            sandbox.create_lsp_server("python", "/tmp").start()
        assert "python3-pylsp" in str(e.value)
        assert e.value.status_code == 400
        # The interpreter itself needs only python3, which this image has.
        assert sandbox.code_interpreter.run_code("print(6 * 7)").stdout == "42\n"
    finally:
        sandbox.delete()


def test_example_flow_a_notebook_like_session_with_a_chart_and_completions(env):
    """In our own words, the shape of Daytona's interpreter/LSP examples: keep data in a
    context across cells, plot it, then ask the language server about the project."""
    _, daytona, _ = env
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="interp"), timeout=300)
    try:
        notebook = sandbox.code_interpreter.create_context()
        sandbox.code_interpreter.run_code("temps = [12.5, 14.0, 13.2, 15.8]", context=notebook)
        mean = sandbox.code_interpreter.run_code("print(round(sum(temps) / len(temps), 2))", context=notebook)
        assert mean.stdout == "13.88\n"
        sandbox.code_interpreter.delete_context(notebook)

        plot = sandbox.process.code_run(
            "import matplotlib.pyplot as plt\nplt.scatter([1, 2, 3], [2, 4, 1])\nplt.title('Readings')\nplt.show()"
        )
        assert [(c.type, c.title) for c in plot.artifacts.charts] == [("scatter", "Readings")]

        home = sandbox.get_user_home_dir()
        sandbox.fs.create_folder(f"{home}/weather", "755")
        sandbox.fs.upload_file(b"class Station:\n    def reading(self):\n        return 1\n\ns = Station()\ns.rea", f"{home}/weather/app.py")
        lsp = sandbox.create_lsp_server("python", f"{home}/weather")
        lsp.start()
        lsp.did_open(f"{home}/weather/app.py")
        labels = [i.label for i in lsp.completions(f"{home}/weather/app.py", LspCompletionPosition(line=5, character=5)).items]
        assert "reading" in [label.split("(")[0] for label in labels], labels
        lsp.stop()
    finally:
        sandbox.delete()
