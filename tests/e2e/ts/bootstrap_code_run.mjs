// A sandbox from the server's default snapshot (cove-small, of the image `cove image
// bootstrap` built) through the official TypeScript SDK: codeRun and who runs it.
// Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does; prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.create()
try {
  const run = await sandbox.process.codeRun('print(1+1)')
  const who = await sandbox.process.executeCommand('whoami; echo $HOME')
  console.log(JSON.stringify({ exitCode: run.exitCode, result: run.result, who: who.result }))
} finally {
  await sandbox.delete()
}
// The SDK's Socket.IO client keeps retrying in the background; nothing is left to wait for.
process.exit(0)
