"""The official Python SDK's async client (`AsyncDaytona`), unmodified, through one flow in
the shape of Daytona's async examples (our own words): create from the default snapshot,
exec, a session command that reads input, files up and down, search, code_run, events
driving stop/start, listing with a label filter, and delete."""

import asyncio

from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaConfig,
    ListSandboxesQuery,
    SessionExecuteRequest,
)

from harness import API_KEY, BUSYBOX_PYTHON


def test_the_async_client_runs_a_whole_sandbox_flow(cove, registry_with_python):
    server = cove(extra=["--default-snapshot", "async-snap"])

    async def flow():
        async with AsyncDaytona(DaytonaConfig(api_key=API_KEY, api_url=server.api_url)) as daytona:
            await daytona.snapshot.create(CreateSnapshotParams(name="async-snap", image=BUSYBOX_PYTHON))
            sandbox = await daytona.create(CreateSandboxFromSnapshotParams(labels={"flow": "async"}))
            try:
                r = await sandbox.process.exec("echo hello-$((6*7))")
                assert (r.exit_code, r.result.strip()) == (0, "hello-42"), r

                await sandbox.process.create_session("ask")
                cmd = await sandbox.process.execute_session_command(
                    "ask", SessionExecuteRequest(command="read name; echo hi:$name", run_async=True)
                )
                await sandbox.process.send_session_command_input("ask", cmd.cmd_id, "cove")
                for _ in range(100):
                    done = await sandbox.process.get_session_command("ask", cmd.cmd_id)
                    if done.exit_code is not None:
                        break
                    await asyncio.sleep(0.1)
                logs = await sandbox.process.get_session_command_logs("ask", cmd.cmd_id)
                assert done.exit_code == 0 and "hi:cove" in logs.stdout, (done, logs)

                await sandbox.fs.create_folder("proj", "755")
                await sandbox.fs.upload_file(b"alpha\nneedle here\n", "proj/a.txt")
                assert await sandbox.fs.download_file("proj/a.txt") == b"alpha\nneedle here\n"
                found = await sandbox.fs.find_files("proj", "needle")
                assert [(m.file.rsplit("/", 1)[-1], m.line) for m in found] == [("a.txt", 2)], found

                run = await sandbox.process.code_run("import sys; print(sum(range(10)), sys.version_info[0])")
                assert run.result.strip() == "45 3", run.result

                await sandbox.stop()
                assert sandbox.state.value == "stopped"
                await sandbox.start()
                assert sandbox.state.value == "started"
                assert await sandbox.fs.download_file("proj/a.txt") == b"alpha\nneedle here\n", "kept across a restart"

                listed = [s.id async for s in daytona.list(ListSandboxesQuery(labels={"flow": "async"}))]
                assert listed == [sandbox.id], listed
            finally:
                await sandbox.delete()

    asyncio.run(flow())
