// Lifecycle calls through the official TypeScript SDK: the interval setters, refreshActivity,
// archive, and the start of an archived sandbox. Prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.create({ snapshot: 'life', autoStopInterval: 0 })
await sandbox.process.executeCommand('echo ts kept > /root/ts.txt')

await sandbox.setAutostopInterval(7)
await sandbox.setAutoArchiveInterval(9)
await sandbox.setAutoDeleteInterval(3)
await sandbox.refreshActivity()
await sandbox.refreshData()
const intervals = [sandbox.autoStopInterval, sandbox.autoArchiveInterval, sandbox.autoDeleteInterval]
const badInterval = await sandbox.setAutoDeleteInterval(-7).then(() => false, () => true)
await sandbox.setAutoDeleteInterval(-1)

await sandbox.stop()
await sandbox.archive()
const archived = sandbox.state
await sandbox.start()
const started = sandbox.state
const file = (await sandbox.process.executeCommand('cat /root/ts.txt')).result
await sandbox.delete()

// No process.exit: node ends on its own once the SDK is done (its event socket connects).
console.log(JSON.stringify({ intervals, badInterval, archived, started, file, lastCallDoneAt: Date.now() }))
