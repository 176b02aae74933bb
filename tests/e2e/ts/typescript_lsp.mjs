// The TypeScript language server (typescript-language-server in the image) through the
// official TypeScript SDK, in the sandbox SANDBOX_ID whose /tmp/counter holds counter.ts and
// main.ts (written by the Python test). Prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const started = Date.now()
const daytona = new Daytona()
const sandbox = await daytona.get(process.env.SANDBOX_ID)
const r = {}

// A project of its own, so this server is not the Python test's.
await sandbox.fs.createFolder('/tmp/tscounter', '755')
await sandbox.fs.uploadFile(Buffer.from(await sandbox.fs.downloadFile('/tmp/counter/counter.ts')), '/tmp/tscounter/counter.ts')
await sandbox.fs.uploadFile(Buffer.from("import { Counter } from './counter'\n\nnew Counter()."), '/tmp/tscounter/use.ts')
const lsp = await sandbox.createLspServer('typescript', '/tmp/tscounter')
await lsp.start()
await lsp.didOpen('/tmp/tscounter/use.ts')
const completions = await lsp.completions('/tmp/tscounter/use.ts', { line: 2, character: 14 })
r.completions = completions.items.map((i) => i.label).sort()
r.symbols = (await lsp.documentSymbols('/tmp/tscounter/counter.ts')).map((s) => s.name).sort()
await lsp.didClose('/tmp/tscounter/use.ts')
await lsp.stop()
r.elapsedMs = Date.now() - started
// No process.exit: node ends on its own once the SDK is done.
console.log(JSON.stringify({ ...r, lastCallDoneAt: Date.now() }))
