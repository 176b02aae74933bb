// The code interpreter, codeRun charts and the Python language server through the official
// TypeScript SDK, in the sandbox SANDBOX_ID (an image with python3, matplotlib and pylsp).
// Reads DAYTONA_API_URL / DAYTONA_API_KEY like the SDK does; prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const started = Date.now()
const daytona = new Daytona()
const sandbox = await daytona.get(process.env.SANDBOX_ID)
const ci = sandbox.codeInterpreter
const r = {}

const a = await ci.createContext()
const b = await ci.createContext()
await ci.runCode('value = 41', { context: a })
r.persisted = (await ci.runCode('value += 1\nprint(value)', { context: a })).stdout
r.otherContext = (await ci.runCode('print(value)', { context: b })).error?.name

r.streamed = []
await ci.runCode("import sys\nprint('a')\nsys.stderr.write('b\\n')\nprint('c')", {
  context: a,
  onStdout: (m) => r.streamed.push(['out', m.output]),
  onStderr: (m) => r.streamed.push(['err', m.output]),
})
const failed = await ci.runCode('1 / 0', { context: a })
r.error = { name: failed.error?.name, value: failed.error?.value }
try {
  await ci.runCode('import time\ntime.sleep(30)', { context: a, timeout: 1 })
  r.timeout = 'none'
} catch (e) {
  r.timeout = e.constructor.name
}
await ci.deleteContext(a)
await ci.deleteContext(b)
r.listedAfterDelete = (await ci.listContexts()).filter((c) => c.id === a.id || c.id === b.id).length

const plot = await sandbox.process.codeRun(
  "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title('TS')\nplt.show()",
)
const chart = plot.artifacts.charts[0]
r.chart = { type: chart?.type, title: chart?.title, png: Buffer.from(chart?.png ?? '', 'base64').subarray(1, 4).toString() === 'PNG' }

await sandbox.fs.createFolder('/tmp/tsproj', '755')
await sandbox.fs.uploadFile(Buffer.from('def greet(name):\n    return name\n\n\nclass Greeter:\n    pass\n\ngre'), '/tmp/tsproj/hello.py')
const lsp = await sandbox.createLspServer('python', '/tmp/tsproj')
await lsp.start()
await lsp.didOpen('/tmp/tsproj/hello.py')
const completions = await lsp.completions('/tmp/tsproj/hello.py', { line: 7, character: 3 })
r.completion = completions.items.some((i) => i.label.startsWith('greet'))
r.symbols = (await lsp.documentSymbols('/tmp/tsproj/hello.py')).map((s) => s.name)
await lsp.stop()
r.elapsedMs = Date.now() - started
// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ ...r, lastCallDoneAt: Date.now() }))
