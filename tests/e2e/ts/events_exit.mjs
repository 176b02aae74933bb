// A whole sandbox flow through the official TypeScript SDK that ends on its own: no
// process.exit. The SDK's event socket (/api/socket.io/) must connect, or its reconnect
// timers keep node alive for minutes. Prints one JSON line; lastCallDoneAt is when the
// last SDK call returned, so the test can see how long node lingered after it.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.create({ snapshot: 'ev-snap' })
const states = [sandbox.state]
const hello = (await sandbox.process.executeCommand('echo hello')).result
await sandbox.stop()
states.push(sandbox.state)
await sandbox.start()
states.push(sandbox.state)
const connected = daytona.eventDispatcher?.isConnected === true
await sandbox.delete()
console.log(JSON.stringify({ hello, states, connected, lastCallDoneAt: Date.now() }))
