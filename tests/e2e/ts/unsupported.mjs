// No silent drops through the official TypeScript SDK: methods whose route Cove does not serve
// come back as a DaytonaError with status 501 naming the feature, create fields Cove does not
// honour as a 400 naming the field. Prints one JSON line: [status, message] per call.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const sandbox = await daytona.get(process.env.SANDBOX_ID)

async function outcome(call) {
  try {
    await call()
    return [200, 'it worked']
  } catch (e) {
    return [e.statusCode ?? null, String(e.message)]
  }
}

const refusals = {
  resize: await outcome(() => sandbox.resize({ cpu: 2 })),
  fork: await outcome(() => sandbox.fork()),
  pause: await outcome(() => sandbox.pause()),
  setTtl: await outcome(() => sandbox.setTtl(30)),
  createSshAccess: await outcome(() => sandbox.createSshAccess()),
  computerUseStart: await outcome(() => sandbox.computerUse.start()),
  updateEnv: await outcome(() => sandbox.updateEnv({ A: '1' })),
  volumeList: await outcome(() => daytona.volume.list()),
  secretList: await outcome(() => daytona.secret.list()),
  warmPoolList: await outcome(() => daytona.warmPool.list()),
}

const createFields = {
  volumes: await outcome(() => daytona.create({ snapshot: 'plain', volumes: [{ volumeId: 'v1', mountPath: '/data' }] })),
  secrets: await outcome(() => daytona.create({ snapshot: 'plain', secrets: { TOKEN: 'my-secret' } })),
  ttlMinutes: await outcome(() => daytona.create({ snapshot: 'plain', ttlMinutes: 30 })),
  autoPauseInterval: await outcome(() => daytona.create({ snapshot: 'plain', autoPauseInterval: 5 })),
  spot: await outcome(() => daytona.create({ snapshot: 'plain', spot: true })),
}

// No process.exit: node ends on its own once the SDK is done.
console.log(JSON.stringify({ refusals, createFields, lastCallDoneAt: Date.now() }))
