// PTY sessions, session command input and the entrypoint session through the official
// TypeScript SDK, unmodified. Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does and
// prints one JSON line of results for tests/e2e/test_pty_sessions.py to check.
import { Daytona } from '@daytona/sdk'
import { setTimeout as sleep } from 'timers/promises'

const daytona = new Daytona()
const decoder = new TextDecoder()

// Waits until `screen.text` contains `want` (the handle's onData appends to it).
async function until(screen, want, ms = 15000) {
  const deadline = Date.now() + ms
  while (!screen.text.includes(want)) {
    if (Date.now() > deadline) throw new Error(`${JSON.stringify(want)} never appeared in ${JSON.stringify(screen.text)}`)
    await sleep(50)
  }
  return screen.text
}

const errorText = async (p) => p.then(() => 'no error', (e) => (/not found/i.test(String(e?.message)) ? 'not found' : String(e?.message)))

const sandbox = await daytona.create()
const r = {}

// A terminal with a size, cwd and env; a resize; an interactive read; an exit code.
const screen = { text: '' }
const pty = await sandbox.process.createPty({
  id: 'ts-term',
  cwd: '/tmp',
  envs: { GREETING: 'hi ts' },
  cols: 100,
  rows: 30,
  onData: (data) => (screen.text += decoder.decode(data, { stream: true })),
})
await pty.sendInput('stty size; pwd; echo "[$GREETING|$TERM]"\n')
r.first = await until(screen, '[hi ts|xterm-256color]')
const info = await sandbox.process.getPtySessionInfo('ts-term')
r.info = { id: info.id, cols: info.cols, rows: info.rows, cwd: info.cwd, active: info.active, lazyStart: info.lazyStart, envs: info.envs }
const resized = await pty.resize(120, 40)
r.resized = [resized.cols, resized.rows]
await pty.sendInput('stty size\n')
r.sawResize = (await until(screen, '40 120\r\n')).includes('40 120')
await pty.sendInput('read x; echo got:$x\n')
await pty.sendInput(new TextEncoder().encode('from ts\n'))
r.sawRead = (await until(screen, 'got:from ts')).includes('got:from ts')
r.listed = (await sandbox.process.listPtySessions()).map((s) => s.id)
await pty.sendInput('exit 5\n')
r.exit = await pty.wait()
r.afterExit = await errorText(sandbox.process.getPtySessionInfo('ts-term'))

// A second client on a running terminal; a duplicate id is refused; a kill ends both clients.
const first = await sandbox.process.createPty({ id: 'ts-shared', onData: () => {} })
r.conflict = (await errorText(sandbox.process.createPty({ id: 'ts-shared', onData: () => {} }))) !== 'no error'
const seen = { text: '' }
const second = await sandbox.process.connectPty('ts-shared', { onData: (d) => (seen.text += decoder.decode(d, { stream: true })) })
await first.sendInput('echo both-see-this\n')
await until(seen, 'both-see-this\r\n')
await sandbox.process.killPtySession('ts-shared')
r.killed = [await first.wait(), await second.wait()]
r.listAfterKill = await sandbox.process.listPtySessions()

// A session command waiting in `read` gets input sent without a newline.
await sandbox.process.createSession('ask')
const cmd = await sandbox.process.executeSessionCommand('ask', {
  command: 'read first; read second; echo "got $first and $second"',
  runAsync: true,
})
await sandbox.process.sendSessionCommandInput('ask', cmd.cmdId, 'one')
await sandbox.process.sendSessionCommandInput('ask', cmd.cmdId, 'two\n')
for (let i = 0; i < 100 && (await sandbox.process.getSessionCommand('ask', cmd.cmdId)).exitCode !== 0; i++) await sleep(100)
r.inputOut = (await sandbox.process.getSessionCommandLogs('ask', cmd.cmdId)).stdout
await sandbox.delete()

// The entrypoint session: followed logs end when the entrypoint does.
const ep = await daytona.create({ snapshot: 'ep-snap' })
const streamed = { out: '', err: '' }
await ep.process.getEntrypointLogs((c) => (streamed.out += c), (c) => (streamed.err += c))
const session = await ep.process.getEntrypointSession()
const logs = await ep.process.getEntrypointLogs()
r.entrypoint = {
  sessionId: session.sessionId,
  command: session.commands[0].command,
  exitCode: session.commands[0].exitCode,
  stdout: logs.stdout,
  stderr: logs.stderr,
  streamedOut: streamed.out,
  streamedErr: streamed.err,
}
await ep.delete()

// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ ...r, lastCallDoneAt: Date.now() }))
