// Network policies through the official TypeScript SDK: networkBlockAll and networkAllowList
// on create, updateNetworkSettings on a running sandbox. Prints one JSON line of results.
// INDEX_ADDR is the package index's address (the one outside peer the tests may contact).
import { Daytona } from '@daytona/sdk'

const PROBE = `import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except Exception as e:
    print("closed", type(e).__name__, e)
`
const index = process.env.INDEX_ADDR
const daytona = new Daytona()

async function probe(sandbox, host, port) {
  await sandbox.fs.uploadFile(Buffer.from(PROBE), '/tmp/probe.py')
  const r = await sandbox.process.executeCommand(`python3 /tmp/probe.py ${host} ${port}`)
  return r.result.trim()
}

const blockedSbx = await daytona.create({ snapshot: 'py', networkBlockAll: true })
const allowedSbx = await daytona.create({ snapshot: 'py', networkAllowList: `${index}/32` })
const out = {
  blockedFlag: blockedSbx.networkBlockAll,
  blocked: await probe(blockedSbx, index, 443),
  allowList: allowedSbx.networkAllowList,
  allowed: await probe(allowedSbx, index, 443),
}
await allowedSbx.updateNetworkSettings({ networkBlockAll: true })
out.afterUpdate = await probe(allowedSbx, index, 443)
await allowedSbx.updateNetworkSettings({ networkBlockAll: false })
out.restored = await probe(allowedSbx, index, 443)
await blockedSbx.delete()
await allowedSbx.delete()
// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ ...out, lastCallDoneAt: Date.now() }))
