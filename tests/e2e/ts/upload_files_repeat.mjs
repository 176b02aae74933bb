// Item 11 of issue 12 through the official TypeScript SDK: uploadFiles (small files and files
// over 1 MiB together) 30 times in a row through the toolbox proxy, then every file's sha256
// as the sandbox sees it. The failure this guards against (503 "Broken pipe" although the file
// was written) came about one upload in three or four. Prints one JSON line.
import { createHash, randomBytes } from 'node:crypto'
import { Daytona } from '@daytona/sdk'

const ROUNDS = 30
const daytona = new Daytona()
const sandbox = await daytona.create()
const expected = {}
const failures = []
for (let round = 0; round < ROUNDS; round++) {
  const files = [
    { name: 'small.txt', data: Buffer.from(`round ${round}\n`) },
    { name: 'big-a.bin', data: randomBytes((1 << 20) + 4096 * round + 1) },
    { name: 'tiny.json', data: Buffer.from(JSON.stringify({ round })) },
    { name: 'big-b.bin', data: randomBytes(2.5 * (1 << 20)) },
  ]
  const uploads = files.map((f) => {
    const destination = `/tmp/up/${round}/${f.name}`
    expected[destination] = createHash('sha256').update(f.data).digest('hex')
    return { source: f.data, destination }
  })
  try {
    await sandbox.fs.uploadFiles(uploads)
  } catch (e) {
    failures.push({ round, error: String(e?.message ?? e).slice(0, 300), status: e?.statusCode })
  }
}
const sums = await sandbox.process.executeCommand('find /tmp/up -type f | sort | xargs sha256sum')
const actual = {}
for (const line of sums.result.trim().split('\n')) {
  const [sha, path] = line.trim().split(/\s+/)
  actual[path] = sha
}
const mismatched = Object.keys(expected).filter((p) => actual[p] !== expected[p])
await sandbox.delete()
console.log(JSON.stringify({
  rounds: ROUNDS,
  files: Object.keys(expected).length,
  found: Object.keys(actual).length,
  failures,
  mismatched,
  lastCallDoneAt: Date.now(),
}))
