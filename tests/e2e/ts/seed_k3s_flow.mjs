// The seed's k3s walk-through with harmless commands, through the official TypeScript SDK.
// Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does; prints one JSON line of results.
import { Daytona } from '@daytona/sdk'
import { setTimeout } from 'timers/promises'

const daytona = new Daytona()
const sandbox = await daytona.create()

const response = await sandbox.process.executeCommand('echo installing; echo warn >&2; exit 3')

const sessionName = 'k3s-server'
await sandbox.process.createSession(sessionName)
const started = Date.now()
const k3s = await sandbox.process.executeSessionCommand(sessionName, {
  command: 'for i in 1 2 3; do echo tick$i; sleep 0.3; done; sleep 30',
  async: true,
})
const asyncReturnedMs = Date.now() - started

let logs = { stdout: '' }
for (let i = 0; i < 50 && !logs.stdout.includes('tick3'); i++) {
  await setTimeout(200)
  logs = await sandbox.process.getSessionCommandLogs(sessionName, k3s.cmdId)
}

const streamed = { out: '', err: '' }
const cmd2 = await sandbox.process.executeSessionCommand('other', { command: 'true' }).catch(() => null)
await sandbox.process.createSession('stream')
const s2 = await sandbox.process.executeSessionCommand('stream', {
  command: 'echo out1; echo err1 >&2; sleep 0.3; echo out2',
  async: true,
})
await sandbox.process.getSessionCommandLogs('stream', s2.cmdId, (c) => (streamed.out += c), (c) => (streamed.err += c))

await sandbox.fs.uploadFile(Buffer.from('services: {}\n'), 'compose/docker-compose.yml')
const pods = await sandbox.process.executeCommand('cat compose/docker-compose.yml')

await sandbox.delete()
console.log(JSON.stringify({
  state: sandbox.state,
  exitCode: response.exitCode,
  result: response.result,
  asyncReturnedMs,
  cmdId: k3s.cmdId,
  logs: logs.stdout,
  streamed,
  unknownSession: cmd2 === null,
  pods: pods.result,
  lastCallDoneAt: Date.now(),
}))
