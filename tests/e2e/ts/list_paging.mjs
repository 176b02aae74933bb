// Listing through the official TypeScript SDK: daytona.list() walks cursor pages (limit 2 of
// five sandboxes), filters by state and labels, sorts by name; an unknown state is refused.
// Then a pagination-example-shaped flow: stop every running db and web-2, list what runs.
import { Daytona } from '@daytona/sdk'

const daytona = new Daytona()
const collect = async (query) => {
  const out = []
  for await (const s of daytona.list(query)) out.push(s)
  return out
}
const names = (list) => list.map((s) => s.name)

const byName = names(await collect({ limit: 2, sort: 'name', order: 'asc' }))
const stopped = names(await collect({ limit: 1, states: ['stopped'], sort: 'name', order: 'asc' }))
const startedWeb = names(await collect({ limit: 1, states: ['started'], labels: { tier: 'web' }, sort: 'name', order: 'asc' }))
const bad = await collect({ states: ['sleeping'] }).then(() => null, (e) => String(e.message ?? e))

for (const s of await collect({ limit: 2, states: ['started'] })) {
  if (s.labels.tier === 'db' || s.name === 'web-2') await s.stop()
}
const stillRunning = names(await collect({ states: ['started'], labels: { fleet: 'f1' } }))
for (const s of await collect({ limit: 2 })) await s.delete()
console.log(JSON.stringify({ byName, stopped, startedWeb, bad, stillRunning, lastCallDoneAt: Date.now() }))
