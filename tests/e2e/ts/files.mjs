// The file API through the official TypeScript SDK: downloads (one, many with a missing one,
// to a file, streamed 64 MiB with a sha256), findFiles, searchFiles, replaceInFiles,
// getFileDetails, moveFiles, setFilePermissions, createFolder and recursive deleteFile.
// Prints one JSON line of results.
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.create()
const fs = sandbox.fs
const r = {}

await fs.uploadFiles([
  { source: Buffer.from('alpha\n'), destination: 'dl/a.txt' },
  { source: Buffer.from('ünï'), destination: 'dl/ünï.txt' },
])
r.single = (await fs.downloadFile('dl/a.txt')).toString()
const many = await fs.downloadFiles([{ source: 'dl/a.txt' }, { source: 'dl/missing.txt' }, { source: 'dl/ünï.txt' }])
r.many = many.map((m) =>
  m.error ? { source: m.source, error: true, status: m.errorDetails?.statusCode } : { source: m.source, text: m.result.toString() },
)
const local = join(mkdtempSync(join(tmpdir(), 'cove-ts-')), 'a.txt')
await fs.downloadFile('dl/a.txt', local)
r.toFile = readFileSync(local, 'utf8')
r.missingThrows = await fs.downloadFile('dl/missing.txt').then(() => false, () => true)

const mib = 64
const made = await sandbox.process.executeCommand(`head -c ${mib * 1024 * 1024} /dev/urandom > big.bin && sha256sum big.bin`)
r.bigExpected = made.result.split(/\s+/)[0]
const hash = createHash('sha256')
let size = 0
const stream = await fs.downloadFileStream('big.bin')
for await (const chunk of stream) {
  hash.update(chunk)
  size += chunk.length
}
r.big = { size, sha: hash.digest('hex') }

await fs.createFolder('proj/sub', '755')
await fs.uploadFiles([
  { source: Buffer.from('x = 1\n# TODO: ts\n'), destination: 'proj/a.py' },
  { source: Buffer.from('y = 1\n'), destination: 'proj/sub/b.py' },
])
r.find = (await fs.findFiles('proj', 'TODO:')).map((m) => [m.file, m.line, m.content])
await fs.createFolder('proj/lib.py', '755')
// Names at any depth, directories included (the SDK's documented searchFiles('workspace', '*.py')).
r.search = (await fs.searchFiles('proj', '*.py')).files
r.replace = (await fs.replaceInFiles(['proj/a.py', 'proj/none.py'], 'x = 1', 'x = 2')).map((x) => ({
  file: x.file,
  success: x.success,
}))
r.replaced = (await fs.downloadFile('proj/a.py')).toString()

await fs.setFilePermissions('proj/a.py', { mode: '700', owner: 'nobody' })
const info = await fs.getFileDetails('proj/a.py')
r.info = { isDir: info.isDir, permissions: info.permissions, owner: info.owner }
await fs.moveFiles('proj/a.py', 'proj/sub/a.py')
r.moved = (await fs.listFiles('proj/sub')).some((f) => f.name === 'a.py')
await fs.createFolder('proj/made', '711')
const folder = await fs.getFileDetails('proj/made')
r.folder = { isDir: folder.isDir, permissions: folder.permissions }
await fs.deleteFile('proj', true)
r.deleted = await fs.getFileDetails('proj').then(() => false, () => true)

await sandbox.delete()
// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ ...r, lastCallDoneAt: Date.now() }))
