// A sandbox from the server's default snapshot (cove-small, of the image `cove image
// bootstrap` built) through the official TypeScript SDK: codeRun and who runs it.
// Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does; prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.create()
let out
try {
  const run = await sandbox.process.codeRun('print(1+1)')
  const who = await sandbox.process.executeCommand('whoami; echo $HOME')
  out = { exitCode: run.exitCode, result: run.result, who: who.result }
} finally {
  await sandbox.delete()
}
// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ ...out, lastCallDoneAt: Date.now() }))
