// Git through the official TypeScript SDK in a sandbox the test prepared (SANDBOX_ID), whose
// authenticated HTTP remote is GIT_REMOTE: publish a project, clone it elsewhere, branch,
// push and pull with credentials, inspect and undo changes. Prints one JSON line of results.
import { Daytona } from '@daytona/sdk'

const { SANDBOX_ID, GIT_REMOTE: remote, GIT_USER: user, GIT_PASSWORD: password } = process.env
const daytona = new Daytona()
const sandbox = await daytona.get(SANDBOX_ID)
const git = sandbox.git
const sh = async (cmd) => {
  const r = await sandbox.process.executeCommand(cmd)
  if (r.exitCode !== 0) throw new Error(`${cmd}: ${r.result}`)
  return r.result
}
const fails = (promise) => promise.then(() => false, () => true)

// Publish: the remote refuses anonymous pushes.
await git.init('ts/one', false, 'main')
await sh('mkdir -p ts/one && printf "start\\n" > ts/one/README')
await git.add('ts/one', ['README'])
await git.commit('ts/one', 'Start', 'TS Tester', 'ts@example.com')
await git.remoteAdd('ts/one', 'origin', remote)
const unauthenticated = await fails(git.push('ts/one'))
await git.push('ts/one', user, password, undefined, undefined, true)

// A branch other than the default, cloned by path from the local repository.
await git.createBranch('ts/one', 'topic')
await sh('printf "only on topic\\n" > ts/one/topic.txt')
await git.add('ts/one', ['topic.txt'])
await git.commit('ts/one', 'Topic work', 'TS Tester', 'ts@example.com')
await git.checkoutBranch('ts/one', 'main')
const local = `${(await sh('pwd')).trim()}/ts/one`
await git.clone(local, 'ts/topic', 'topic')
const topic = {
  branch: (await git.status('ts/topic')).currentBranch,
  file: await sh('cat ts/topic/topic.txt'),
  onMain: (await sandbox.process.executeCommand('test -e ts/one/topic.txt')).exitCode === 0,
}

// A second clone with a branch of its own.
const wrongPassword = await fails(git.clone(remote, 'ts/bad', undefined, undefined, user, 'wrong'))
await git.clone(remote, 'ts/two', undefined, undefined, user, password)
await git.createBranch('ts/two', 'feature')
const branches = await git.branches('ts/two')
await git.checkoutBranch('ts/two', 'main')
await git.deleteBranch('ts/two', 'feature')

// New work in the first clone reaches the second by push and pull.
await sh('printf "from ts\\n" > ts/one/notes.txt')
await git.add('ts/one', ['.'])
const { sha } = await git.commit('ts/one', 'Add notes', 'TS Tester', 'ts@example.com')
await git.push('ts/one', user, password)
await git.pull('ts/two', user, password)
const pulled = await sh('cat ts/two/notes.txt')
const status = await git.status('ts/two')

// Inspect and undo an edit.
await sh('printf "scratch\\n" > ts/two/notes.txt')
const dirty = (await git.status('ts/two')).fileStatus
await git.restore('ts/two', ['notes.txt'])
const restored = await sh('cat ts/two/notes.txt')
await git.reset('ts/two', 'hard', 'HEAD')

const { remotes } = await git.remotes('ts/two')
const missingRemote = (await git.remoteGet('ts/two', 'upstream')) ?? null
await git.configureUser('TS Tester', 'ts@example.com', 'local', 'ts/two')
await git.setConfig('core.autocrlf', 'input', 'local', 'ts/two')
const config = await git.getConfig('user.name', 'local', 'ts/two')

console.log(
  JSON.stringify({
    unauthenticated, wrongPassword, sha, branches, pulled, status, dirty, restored, remotes, missingRemote, config, topic,
    lastCallDoneAt: Date.now(),
  }),
)
// No process.exit: node ends on its own once the SDK is done (its event socket connects).
