// A snapshot built from the SDK's declarative Image through the official TypeScript SDK:
// a RUN step whose output streams to onLogs, and a local file uploaded as build context
// (AWS SDK v3 to the server's HTTPS S3 endpoint; Node trusts the CA via NODE_EXTRA_CA_CERTS).
// Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does, plus SNAPSHOT and CONTEXT_FILE;
// prints one JSON line of results.
import { Daytona, Image } from '@daytona/sdk'

const name = process.env.SNAPSHOT
const daytona = new Daytona()
// The test fixture registry's busybox (tests/fixtures/harness.py: BUSYBOX).
const image = Image.base('fixtures.cove.test/busybox:1')
  // The sleep keeps the build running past the SDK's first poll (1 s after the POST): the SDK
  // opens the log stream only once it has seen a state other than pending.
  .runCommands('echo hello-from-ts-build', 'sleep 3')
  .addLocalFile(process.env.CONTEXT_FILE, '/app/a.txt')

const started = Date.now()
const logs = []
const snapshot = await daytona.snapshot.create({ name, image }, { onLogs: (line) => logs.push({ ms: Date.now() - started, line }) })

const sandbox = await daytona.create({ snapshot: name })
const cat = await sandbox.process.executeCommand('cat /app/a.txt')
await sandbox.delete()

console.log(JSON.stringify({
  dockerfile: image.dockerfile,
  state: snapshot.state,
  snapshotName: snapshot.name,
  logs,
  exitCode: cat.exitCode,
  result: cat.result,
  totalMs: Date.now() - started,
  lastCallDoneAt: Date.now(),
}))
