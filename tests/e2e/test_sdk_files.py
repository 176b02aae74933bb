"""The file API through the official SDKs (Python `daytona` and TypeScript `@daytona/sdk`,
unmodified) against real runc sandboxes: downloads (one, many, streamed, a missing one among
several, a 300 MiB file with the agent's memory watched), content and name search, replace,
file info, move, permissions, folders and recursive delete, plus an example flow."""

import hashlib
from pathlib import Path

import pytest
from daytona import (
    CreateSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaError,
    DaytonaNotFoundError,
    FileDownloadRequest,
    FileUpload,
)

from harness import API_KEY, BUSYBOX
from tsrun import run_ts



@pytest.fixture
def files_env(cove):
    server = cove(extra=["--default-snapshot", "files-snap"])
    daytona = Daytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url))
    daytona.snapshot.create(CreateSnapshotParams(name="files-snap", image=BUSYBOX))
    return server, daytona


@pytest.fixture
def sandbox(files_env):
    _, daytona = files_env
    sb = daytona.create()
    yield sb
    sb.delete()


def agent_peak_rss_kib(sandbox) -> int:
    """VmHWM of the agent's server process (the child of PID 1 named cove-agent)."""
    script = (
        'for p in /proc/[0-9]*; do [ "${p#/proc/}" != 1 ] && [ "$(cat $p/comm 2>/dev/null)" = cove-agent ] '
        "&& grep VmHWM $p/status; done"
    )
    out = sandbox.process.exec(script).result.split()
    assert out and out[0] == "VmHWM:", out
    return int(out[1])


def test_downloads_of_one_many_and_streamed_files_through_the_python_sdk(sandbox, tmp_path):
    sandbox.fs.upload_files(
        [
            FileUpload(b"alpha\n", "dl/a.txt"),
            FileUpload(b"\x00\x01binary\xff", "dl/b.bin"),
            FileUpload("ünï cödé".encode(), "dl/ünï.txt"),
            FileUpload(b'quoted', 'dl/q "x".txt'),
        ]
    )
    assert sandbox.fs.download_file("dl/a.txt") == b"alpha\n"
    assert sandbox.fs.download_file("/root/dl/b.bin") == b"\x00\x01binary\xff"
    assert sandbox.fs.download_file("dl/ünï.txt") == "ünï cödé".encode()
    assert sandbox.fs.download_file('dl/q "x".txt') == b"quoted"

    local = tmp_path / "out" / "a.txt"
    assert sandbox.fs.download_file("dl/a.txt", str(local)) is None
    assert local.read_bytes() == b"alpha\n"

    results = sandbox.fs.download_files(
        [
            FileDownloadRequest(source="dl/a.txt"),
            FileDownloadRequest(source="dl/missing.txt"),
            FileDownloadRequest(source="dl/b.bin", destination=str(tmp_path / "b.bin")),
            FileDownloadRequest(source="dl"),
        ]
    )
    assert [r.source for r in results] == ["dl/a.txt", "dl/missing.txt", "dl/b.bin", "dl"]
    assert results[0].error is None and results[0].result == b"alpha\n"
    assert results[1].result is None and "missing.txt" in results[1].error
    assert results[1].error_details.status_code == 404 and results[1].error_details.code == "FILE_NOT_FOUND"
    assert results[2].error is None and results[2].result == str(tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01binary\xff"
    assert results[3].error_details.status_code == 400 and "directory" in results[3].error

    with pytest.raises(DaytonaNotFoundError):
        sandbox.fs.download_file("dl/missing.txt")
    assert b"".join(sandbox.fs.download_file_stream("dl/a.txt")) == b"alpha\n"
    with pytest.raises(DaytonaError) as e:
        b"".join(sandbox.fs.download_file_stream("dl/missing.txt"))
    assert "missing.txt" in str(e.value)


def test_a_300_mib_download_streams_intact_and_the_agent_memory_stays_bounded(sandbox, tmp_path):
    size = 300 * 1024 * 1024
    r = sandbox.process.exec(f"head -c {size} /dev/urandom > /root/big.bin && sha256sum /root/big.bin", timeout=120)
    assert r.exit_code == 0, r.result
    expected = r.result.split()[0]
    before = agent_peak_rss_kib(sandbox)

    local = tmp_path / "big.bin"
    sandbox.fs.download_file("big.bin", str(local), 300)
    assert local.stat().st_size == size
    h = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == expected
    local.unlink()

    h, seen = hashlib.sha256(), 0
    for chunk in sandbox.fs.download_file_stream("/root/big.bin", 300):
        h.update(chunk)
        seen += len(chunk)
    assert (seen, h.hexdigest()) == (size, expected)

    after = agent_peak_rss_kib(sandbox)
    print(f"agent VmHWM {before} KiB -> {after} KiB over two 300 MiB downloads")
    assert after - before < 48 * 1024, f"the agent's peak RSS grew from {before} KiB to {after} KiB"


def test_search_replace_info_move_permissions_folders_and_delete_through_the_python_sdk(sandbox):
    fs = sandbox.fs
    fs.create_folder("proj/src/pkg", "750")
    info = fs.get_file_info("proj/src/pkg")
    assert info.is_dir and info.permissions == "0750" and info.mode == "drwxr-x---"
    assert info.owner == "root" and info.group == "root" and info.modified_at and info.mod_time
    fs.upload_files(
        [
            FileUpload(b"import os\n# TODO: tidy\nprint('v1')\n", "proj/src/main.py"),
            FileUpload(b"# TODO: docs\nVERSION = 'v1'\n", "proj/src/pkg/util.py"),
            FileUpload(b"v1 notes\n", "proj/README.md"),
            FileUpload(b"\x00TODO: binary\n", "proj/blob.bin"),
        ]
    )
    sandbox.process.exec("ln -s /etc /root/proj/etc-link")

    matches = fs.find_files("proj", "TODO:")
    assert [(m.file, m.line, m.content) for m in matches] == [
        ("/root/proj/src/main.py", 2, "# TODO: tidy"),
        ("/root/proj/src/pkg/util.py", 1, "# TODO: docs"),
    ], "binary files and links out of the tree are skipped"
    assert fs.find_files("proj/README.md", "notes")[0].line == 1

    assert fs.search_files("proj", "*.md").files == ["/root/proj/README.md"]
    fs.create_folder("proj/src/legacy.py", "755")
    assert fs.search_files("proj", "*.py").files == [
        "/root/proj/src/legacy.py",
        "/root/proj/src/main.py",
        "/root/proj/src/pkg/util.py",
    ], "names match at any depth, directories included (the SDK's documented search_files)"
    assert fs.search_files("proj", "pkg").files == ["/root/proj/src/pkg"]
    assert fs.search_files("proj", "src/*.py").files == ["/root/proj/src/legacy.py", "/root/proj/src/main.py"]
    assert fs.search_files("proj", "passwd").files == [], "the link to /etc is not followed"
    assert fs.search_files("proj", "etc-link").files == ["/root/proj/etc-link"], "a link is matched by its own name"
    with pytest.raises(DaytonaError) as e:
        fs.search_files("proj", "src/[")
    assert "invalid glob" in str(e.value)

    results = fs.replace_in_files(["proj/src/main.py", "proj/src/pkg/util.py", "proj/nope.py"], "v1", "v2")
    assert [(r.file, r.success) for r in results] == [
        ("proj/src/main.py", True),
        ("proj/src/pkg/util.py", True),
        ("proj/nope.py", False),
    ]
    assert "nope.py" in results[2].error
    assert fs.download_file("proj/src/main.py") == b"import os\n# TODO: tidy\nprint('v2')\n"

    fs.set_file_permissions("proj/src/main.py", mode="755")
    assert fs.get_file_info("proj/src/main.py").permissions == "0755"
    fs.set_file_permissions("proj/src/main.py", owner="nobody", group="nogroup")
    info = fs.get_file_info("proj/src/main.py")
    assert (info.owner, info.group, info.permissions) == ("nobody", "nogroup", "0755")
    with pytest.raises(DaytonaError) as e:
        fs.set_file_permissions("proj/src/main.py", mode="9x")
    assert "invalid mode" in str(e.value)
    with pytest.raises(DaytonaNotFoundError):
        fs.set_file_permissions("proj/none", mode="644")

    fs.move_files("proj/README.md", "proj/docs.md")
    with pytest.raises(DaytonaError):
        fs.move_files("proj/docs.md", "proj/src/main.py")  # refuses to overwrite
    fs.upload_file(b"on tmpfs", "/dev/shm/x.txt")
    fs.move_files("/dev/shm/x.txt", "proj/from-shm.txt")  # across filesystems
    assert fs.download_file("proj/from-shm.txt") == b"on tmpfs"
    assert sorted(f.name for f in fs.list_files("proj")) == ["blob.bin", "docs.md", "etc-link", "from-shm.txt", "src"]

    with pytest.raises(DaytonaError):
        fs.delete_file("proj/src")  # a non-empty directory needs recursive
    fs.delete_file("proj/etc-link")
    assert sandbox.process.exec("test -f /etc/passwd").exit_code == 0, "deleting a link leaves its target"
    fs.delete_file("proj", recursive=True)
    with pytest.raises(DaytonaNotFoundError):
        fs.get_file_info("proj")


def test_an_example_flow_scaffolds_a_project_then_edits_searches_downloads_and_cleans_it_up(sandbox, tmp_path):
    """The shape of a typical file workflow, in our own words: seed a small app, look around,
    fix a setting everywhere, fetch the results, then remove the workspace."""
    fs = sandbox.fs
    fs.create_folder("app/config", "755")
    fs.upload_files(
        [
            FileUpload(b"PORT=8080\nHOST=localhost\n", "app/config/dev.env"),
            FileUpload(b"PORT=8080\nHOST=0.0.0.0\n", "app/config/prod.env"),
            FileUpload(b"def serve(port):\n    return port  # TODO: bind\n", "app/server.py"),
        ]
    )
    listing = {f.name: f for f in fs.list_files("app")}
    assert listing["config"].is_dir and listing["server.py"].size == 47
    env_files = fs.search_files("app", "*.env").files
    assert env_files == ["/root/app/config/dev.env", "/root/app/config/prod.env"]
    assert [m.line for m in fs.find_files("app", "PORT=8080")] == [1, 1]
    fs.replace_in_files(env_files, "PORT=8080", "PORT=9090")
    assert fs.find_files("app", "PORT=8080") == []
    got = fs.download_files([FileDownloadRequest(source=p, destination=str(tmp_path / Path(p).name)) for p in env_files])
    assert all(r.error is None for r in got)
    assert (tmp_path / "prod.env").read_text() == "PORT=9090\nHOST=0.0.0.0\n"
    fs.delete_file("app", recursive=True)
    assert "app" not in [f.name for f in fs.list_files(".")]


def test_the_typescript_sdk_drives_the_whole_file_api(files_env):
    server, _ = files_env
    r = run_ts("files.mjs", server, timeout=300)
    assert r["single"] == "alpha\n"
    assert r["many"] == [
        {"source": "dl/a.txt", "text": "alpha\n"},
        {"source": "dl/missing.txt", "error": True, "status": 404},
        {"source": "dl/ünï.txt", "text": "ünï"},
    ]
    assert r["toFile"] == "alpha\n"
    assert r["missingThrows"] is True
    assert r["big"] == {"size": 64 * 1024 * 1024, "sha": r["bigExpected"]}
    assert r["find"] == [["/root/proj/a.py", 2, "# TODO: ts"]]
    assert r["search"] == ["/root/proj/a.py", "/root/proj/lib.py", "/root/proj/sub/b.py"], "names at any depth, directories too"
    assert r["replace"] == [{"file": "proj/a.py", "success": True}, {"file": "proj/none.py", "success": False}]
    assert r["replaced"] == "x = 2\n# TODO: ts\n"
    assert r["info"] == {"isDir": False, "permissions": "0700", "owner": "nobody"}
    assert r["moved"] is True
    assert r["folder"] == {"isDir": True, "permissions": "0711"}
    assert r["deleted"] is True
