"""Git through the official SDKs (`sandbox.git.*`, Python and TypeScript), against
repositories that live inside the sandbox: a bare repository reached by path, and the same
served over smart HTTP with basic auth (tests/fixtures/git_http.py wrapping `git
http-backend`, on 127.0.0.1 inside the sandbox), never the internet. The image is a real
Debian image with git and python3 (tests/fixtures/debimage.py, cached).

Credentials given to clone/push/pull must reach the remote and nothing else: not the
command line of any process in the sandbox while git runs (the HTTP server scans
/proc/*/cmdline at every request), not the repository's config, not a credential store."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Daytona, DaytonaConfig, DaytonaError

from harness import API_KEY, BUSYBOX, FIXTURES
from tsrun import run_ts

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "git_http.py"
PORT = 8418
USER, PASSWORD = "alice", "pw-7f3a-not-in-argv"
REMOTE = f"http://127.0.0.1:{PORT}/project.git"


@pytest.fixture(scope="session")
def git_image(registry):
    """`fixtures.cove.test/debian-git:bookworm`: the Debian test image plus git."""
    import debimage

    try:
        debimage.push_debian_image(registry.url, "debian-git", "bookworm", packages=debimage.DEFAULT_PACKAGES + ("git",))
    except debimage.BuildError as e:
        pytest.fail(str(e), pytrace=False)
    return f"{FIXTURES}/debian-git:bookworm"


def git_sandbox(server, image):
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="debian-git", image=image), timeout=300)
    return daytona, daytona.create(CreateSandboxFromSnapshotParams(snapshot="debian-git"), timeout=180)


def toolbox(server, method, path, body=None):
    """A raw toolbox call through the server's proxy: (status, parsed JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{server.url}/toolbox/{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def sh(sandbox, cmd):
    r = sandbox.process.exec(cmd, timeout=60)
    assert r.exit_code == 0, f"{cmd!r} exited {r.exit_code}: {r.result}"
    return r.result


def start_http_remote(sandbox):
    """The authenticated HTTP remote at REMOTE, serving /srv/repos (empty project.git)."""
    sh(sandbox, "mkdir -p /srv/repos /srv/state")
    sandbox.fs.upload_file(SERVER_SCRIPT.read_bytes(), "/srv/git_http.py")
    sandbox.fs.upload_file(f"{USER}:{PASSWORD}\n".encode(), "/srv/state/auth")
    sandbox.git.init("/srv/repos/project.git", bare=True, initial_branch="main")
    sandbox.process.create_session("git-http")
    from daytona import SessionExecuteRequest

    cmd = (
        f"python3 /srv/git_http.py /srv/repos {PORT} /srv/state/auth /srv/state/leaks /srv/state/seen"
        " > /srv/state/http.log 2>&1"
    )
    sandbox.process.execute_session_command("git-http", SessionExecuteRequest(command=cmd, run_async=True))
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)\""
    deadline = time.monotonic() + 20
    while sandbox.process.exec(probe, timeout=10).exit_code != 0:
        assert time.monotonic() < deadline, sh(sandbox, "cat /srv/state/http.log")
        time.sleep(0.2)


def assert_no_credential_leak(sandbox, *clones):
    seen = sh(sandbox, "cat /srv/state/seen 2>/dev/null || true")
    assert "remote-http" in seen, f"the cmdline scan never saw a git client process: {seen!r}"
    assert sh(sandbox, "cat /srv/state/leaks 2>/dev/null || true") == "", "a password was in a process's arguments"
    for repo in clones:
        config = sh(sandbox, f"cat {repo}/.git/config")
        assert PASSWORD not in config and USER not in config, config
    assert sh(sandbox, "cat ~/.git-credentials 2>/dev/null || echo none").strip() == "none"
    assert PASSWORD not in sh(sandbox, "cat ~/.gitconfig 2>/dev/null || true")


def test_an_example_flow_clones_branches_commits_pushes_and_pulls_over_authenticated_http(server, git_image):
    daytona, sandbox = git_sandbox(server, git_image)
    try:
        git, fs = sandbox.git, sandbox.fs
        start_http_remote(sandbox)

        # Start a project locally and publish it to the authenticated remote.
        git.init("work/first", initial_branch="main")
        fs.upload_file(b"# Project\n", "work/first/README.md")
        status = git.status("work/first")
        assert status.current_branch == "main"
        assert [(f.name, f.staging, f.worktree) for f in status.file_status] == [("README.md", "Untracked", "Untracked")]
        git.add("work/first", ["."])
        first = git.commit("work/first", "Start the project", "Ann Author", "ann@example.com")
        assert len(first.sha) == 40
        git.remote_add("work/first", "origin", REMOTE)
        assert git.remote_get("work/first", "origin") == REMOTE
        assert git.remote_get("work/first", "upstream") is None
        with pytest.raises(DaytonaError, match="terminal prompts disabled|could not read Username"):
            git.push("work/first")  # the remote wants credentials; git must not hang on a prompt
        git.push("work/first", username=USER, password=PASSWORD, set_upstream=True)
        status = git.status("work/first")
        assert (status.upstream, status.branch_published, status.ahead, status.behind) == ("origin/main", True, 0, 0)

        # A second clone, on a branch of its own.
        with pytest.raises(DaytonaError, match="Authentication failed|401"):
            git.clone(REMOTE, "work/second", username=USER, password="wrong")
        git.clone(REMOTE, "work/second", username=USER, password=PASSWORD)
        git.create_branch("work/second", "feature")
        assert git.branches("work/second").branches == ["feature", "main"]
        fs.upload_file(b"print('hello')\n", "work/second/hello.py")
        git.add("work/second", ["hello.py"])
        git.commit("work/second", "Add a greeting", "Bo Builder", "bo@example.com")
        git.push("work/second", username=USER, password=PASSWORD, set_upstream=True)
        git.checkout_branch("work/second", "main")
        fs.upload_file(b"# Project\n\nNow with a greeting.\n", "work/second/README.md")
        git.add("work/second", ["README.md"])
        git.commit("work/second", "Describe the greeting", "Bo Builder", "bo@example.com")
        git.push("work/second", username=USER, password=PASSWORD)
        git.delete_branch("work/second", "feature")
        assert git.branches("work/second").branches == ["main"]

        # The first clone catches up.
        git.pull("work/first", username=USER, password=PASSWORD)
        assert sh(sandbox, "cat work/first/README.md") == "# Project\n\nNow with a greeting.\n"
        # The feature branch has diverged from main: pull merges it (as configured here).
        git.configure_user("Ann Author", "ann@example.com")
        git.set_config("pull.rebase", "false", scope="local", path="work/first")
        git.pull("work/first", username=USER, password=PASSWORD, branch="feature")
        assert sh(sandbox, "cat work/first/hello.py") == "print('hello')\n"
        assert_no_credential_leak(sandbox, "work/first", "work/second")

        # Discard and unstage edits, then go back one commit.
        fs.upload_file(b"scratch\n", "work/first/README.md")
        git.restore("work/first", ["README.md"])
        assert sh(sandbox, "cat work/first/README.md") == "# Project\n\nNow with a greeting.\n"
        fs.upload_file(b"staged\n", "work/first/README.md")
        git.add("work/first", ["README.md"])
        git.restore("work/first", ["README.md"], staged=True)
        [f] = git.status("work/first").file_status
        assert (f.name, f.staging, f.worktree) == ("README.md", "Unmodified", "Modified")
        git.reset("work/first", mode="hard", target=first.sha)
        status = git.status("work/first")
        assert (status.file_status, status.ahead, status.behind) == ([], 0, 1)
        assert git.commit("work/first", "Empty on purpose", "Ann", "ann@example.com", allow_empty=True).sha != first.sha
        git.reset("work/first", mode="soft", target="HEAD~1")

        # Configuration, and a clone detached at a commit.
        assert git.get_config("user.name") == "Ann Author"
        git.set_config("core.autocrlf", "input", scope="local", path="work/first")
        assert git.get_config("core.autocrlf", scope="local", path="work/first") == "input"
        assert git.get_config("no.such-key") is None
        git.clone(REMOTE, "work/old", commit_id=first.sha, username=USER, password=PASSWORD)
        old = git.status("work/old")
        assert (old.current_branch, old.detached) == ("HEAD", True)
        # A clone of a branch other than the remote's default (the feature branch pushed above).
        git.clone(REMOTE, "work/feat", branch="feature", username=USER, password=PASSWORD)
        feat = git.status("work/feat")
        assert (feat.current_branch, feat.detached) == ("feature", False)
        assert sh(sandbox, "cat work/feat/hello.py") == "print('hello')\n"
        assert "hello.py" not in sh(sandbox, "ls work/second"), "hello.py is only on the feature branch"
        assert_no_credential_leak(sandbox, "work/first", "work/second", "work/old", "work/feat")

        # Stored credentials, on purpose: later calls need none.
        git.dangerously_authenticate(USER, PASSWORD, host=f"127.0.0.1:{PORT}", protocol="http")
        git.pull("work/second")
        assert sh(sandbox, "stat -c %a ~/.git-credentials").strip() == "600"
    finally:
        sandbox.delete()


def test_git_calls_refuse_bad_requests_with_a_message_naming_the_problem(server, git_image):
    daytona, sandbox = git_sandbox(server, git_image)
    try:
        git = sandbox.git
        with pytest.raises(DaytonaError, match="does not exist"):
            git.status("no/such/repo")
        with pytest.raises(DaytonaError, match="not a git repository"):
            git.status("/tmp")
        git.init("repo")
        with pytest.raises(DaytonaError, match="unknown mode"):
            git.reset("repo", mode="sideways")
        with pytest.raises(DaytonaError, match="must not start with '-'"):
            git.clone("--upload-pack=touch /tmp/pwned", "x")
        with pytest.raises(DaytonaError, match="without a password"):
            git.clone("/srv/nothing", "x", username="u")
        with pytest.raises(DaytonaError, match="path is required when scope is local"):
            git.get_config("user.name", scope="local")
        git.remote_add("repo", "origin", "/srv/a.git")
        with pytest.raises(DaytonaError, match="already exists"):
            git.remote_add("repo", "origin", "/srv/b.git")
        git.remote_add("repo", "origin", "/srv/b.git", overwrite=True)
        assert [(r.name, r.url) for r in git.remotes("repo").remotes] == [("origin", "/srv/b.git")]
        # Unknown fields are refused by name, not dropped.
        status, body = toolbox(server, "POST", f"{sandbox.id}/git/add", {"path": "repo", "files": ["."], "force": True})
        assert status == 400 and "force" in json.dumps(body), body
    finally:
        sandbox.delete()


def test_git_in_an_image_without_git_answers_400_naming_git_to_install(server):
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="bb", image=BUSYBOX))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot="bb"), timeout=120)
    try:
        with pytest.raises(DaytonaError, match="git is not installed") as e:
            sandbox.git.status("/")
        assert "apt-get install git" in str(e.value)
        status, body = toolbox(server, "GET", f"{sandbox.id}/git/status?path=/")
        assert status == 400, body
    finally:
        sandbox.delete()


def test_the_typescript_sdk_runs_the_git_flow_with_credentials(server, git_image):
    daytona, sandbox = git_sandbox(server, git_image)
    try:
        start_http_remote(sandbox)
        r = run_ts("git_flow.mjs", server, SANDBOX_ID=sandbox.id, GIT_REMOTE=REMOTE, GIT_USER=USER, GIT_PASSWORD=PASSWORD)
        assert r["unauthenticated"] is True and r["wrongPassword"] is True
        assert r["sha"] and len(r["sha"]) == 40
        assert r["branches"] == {"branches": ["feature", "main"], "current": "feature"}
        assert r["pulled"] == "from ts\n"
        assert r["status"]["currentBranch"] == "main"
        assert (r["status"]["ahead"], r["status"]["behind"], r["status"]["branchPublished"]) == (0, 0, True)
        assert r["dirty"] == [{"name": "notes.txt", "staging": "Unmodified", "worktree": "Modified", "extra": ""}]
        assert r["restored"] == "from ts\n"
        assert r["remotes"] == [{"name": "origin", "url": REMOTE}]
        assert r["config"] == "TS Tester"
        assert r["missingRemote"] is None
        assert r["topic"] == {"branch": "topic", "file": "only on topic\n", "onMain": False}
        assert_no_credential_leak(sandbox, "ts/one", "ts/two")
    finally:
        sandbox.delete()
