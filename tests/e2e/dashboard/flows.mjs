// Every dashboard flow of issue 16, clicked through in Debian's chromium with playwright-core.
// Env: COVE_URL, COVE_KEY, IMAGE (a pullable tag), SHOTS (screenshot dir), FLOW (`every`, the
// default, or `ecr-without-aws`: only the ECR help of a server without AWS credentials).
// Prints one JSON line of results for tests/e2e/test_dashboard.py; stops at the first failed step.
import { chromium } from 'playwright-core'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'

const { COVE_URL: url, COVE_KEY: key, IMAGE: image, SHOTS: shots, FLOW: flow = 'every' } = process.env
const r = { steps: [], shots: [], consoleErrors: [] }
const step = (s) => { r.steps.push(s); console.error(`step: ${s}`) }

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
})

async function newPage(colorScheme) {
  const ctx = await browser.newContext({ colorScheme, viewport: { width: 1360, height: 860 }, acceptDownloads: true })
  const page = await ctx.newPage()
  page.setDefaultTimeout(20000)
  page.on('console', (m) => { if (m.type() === 'error') r.consoleErrors.push(m.text()) })
  page.on('pageerror', (e) => r.consoleErrors.push(`pageerror: ${e.message}`))
  return page
}
async function shot(page, name) {
  const path = join(shots, `${name}.png`)
  await page.screenshot({ path, fullPage: false })
  r.shots.push(path)
}
async function signIn(page) {
  await page.goto(url + '/')
  await page.getByLabel('API key').fill(key)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('heading', { name: 'Snapshots' }).waitFor()
}
const row = (page, name) => page.locator(`tr[data-name="${name}"]`)
async function waitState(page, name, state, timeout = 90000) {
  await row(page, name).locator(`[data-state="${state}"]`).waitFor({ timeout })
}
async function menu(page, name, item) {
  await page.getByRole('button', { name: `Actions for ${name}` }).click()
  await page.getByRole('menuitem', { name: item }).click()
}

async function everyFlow() {
  const page = await newPage('light')
  // Sign in: a wrong key is refused in plain words, then the real one.
  await page.goto(url + '/')
  await page.getByLabel('API key').fill('not-a-key')
  await page.getByRole('button', { name: 'Sign in' }).click()
  r.badKeyMessage = await page.locator('.alert.error').innerText()
  await shot(page, 'signin-light')
  await page.getByLabel('API key').fill(key)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('heading', { name: 'Snapshots' }).waitFor()
  r.keyInSession = await page.evaluate(() => ({ session: sessionStorage.getItem('cove.apiKey') !== null, local: localStorage.length, url: location.href }))
  step('signed in')

  // Create Snapshot through the form; watch it reach Active.
  await page.getByRole('button', { name: 'Create Snapshot' }).click()
  await page.getByLabel('Snapshot name').fill('web-snap')
  await page.getByLabel('Image').fill(image)
  await page.getByLabel('Entrypoint (optional)').fill('sleep infinity')
  await page.getByLabel('vCPU').fill('1')
  await page.getByRole('button', { name: 'Create', exact: true }).click()
  await row(page, 'web-snap').waitFor()
  r.sawInProgress = await row(page, 'web-snap').locator('.badge').innerText()
  await waitState(page, 'web-snap', 'active')
  await shot(page, 'snapshots-light')
  step('snapshot active')

  // `:latest` is refused with the server's message, inline in the form.
  await page.getByRole('button', { name: 'Create Snapshot' }).click()
  await page.getByLabel('Snapshot name').fill('bad-snap')
  await page.getByLabel('Image').fill(image.replace(/:[^:/]+$/, ':latest'))
  await page.getByRole('button', { name: 'Create', exact: true }).click()
  r.latestMessage = await page.locator('dialog .alert.error').innerText()
  await shot(page, 'create-snapshot-latest-light')
  await page.keyboard.press('Escape')
  await page.locator('dialog').waitFor({ state: 'detached' })
  step('latest refused')

  // Deactivate with the mouse, Activate with the keyboard only.
  await menu(page, 'web-snap', 'Deactivate')
  await waitState(page, 'web-snap', 'inactive')
  const menuButton = page.getByRole('button', { name: 'Actions for web-snap' })
  await menuButton.focus()
  await page.keyboard.press('Enter')
  r.firstItemWhenInactive = await page.evaluate(() => document.activeElement.textContent)
  await page.keyboard.press('Enter')
  await waitState(page, 'web-snap', 'active')
  step('deactivated and activated')

  // A Dockerfile build streams its log into the form.
  await page.getByRole('button', { name: 'Create Snapshot' }).click()
  await page.getByLabel('Snapshot name').fill('built-snap')
  await page.getByRole('tab', { name: 'From a Dockerfile' }).click()
  await page.getByLabel('Dockerfile').fill(`FROM ${image}\nRUN echo built-by-the-dashboard > /marker && cat /marker\n`)
  await page.getByRole('button', { name: 'Create', exact: true }).click()
  await page.locator('dialog pre.log', { hasText: 'built-by-the-dashboard' }).waitFor({ timeout: 90000 })
  await page.locator('dialog [data-state="active"]').waitFor({ timeout: 90000 })
  r.buildLog = await page.locator('dialog pre.log').innerText()
  await shot(page, 'dockerfile-build-light')
  await page.getByRole('button', { name: 'Close' }).click()
  // The row's Logs shows the finished build's log too.
  await menu(page, 'built-snap', 'Logs')
  await page.locator('dialog pre.log', { hasText: 'built-by-the-dashboard' }).waitFor()
  await page.keyboard.press('Escape')
  step('dockerfile built')

  // Delete from the row menu, after the "cannot be undone" confirmation.
  await menu(page, 'built-snap', 'Delete')
  r.deleteConfirm = await page.locator('dialog p').innerText()
  await shot(page, 'delete-confirm-light')
  await page.locator('dialog').getByRole('button', { name: 'Delete' }).click()
  await row(page, 'built-snap').waitFor({ state: 'detached', timeout: 30000 })
  step('snapshot deleted')

  // Search and pages: eleven more snapshots (through the API: the form is tested above) make
  // two pages of ten; a search narrows them, Next and Previous walk them.
  const auth = { Authorization: `Bearer ${key}` }
  const pageSnaps = []
  for (let i = 1; i <= 11; i++) {
    const res = await fetch(`${url}/api/snapshots`, { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: `page-snap-${String(i).padStart(2, '0')}`, imageName: image }) })
    if (!res.ok) throw new Error(`creating page-snap-${i}: ${res.status} ${await res.text()}`)
    pageSnaps.push((await res.json()).id)
  }
  const pager = page.locator('nav.pager span')
  const names = () => page.locator('main tbody tr[data-name]').evaluateAll((trs) => trs.map((t) => t.dataset.name))
  const search = page.getByRole('searchbox', { name: 'Search snapshots by name' })
  await search.fill('page-snap')
  await pager.filter({ hasText: 'Page 1 of 2 · 11 snapshots' }).waitFor()
  r.searchPage1 = await names()
  await shot(page, 'snapshots-search-page1-light')
  await page.getByRole('button', { name: 'Next →' }).click()
  await pager.filter({ hasText: 'Page 2 of 2 · 11 snapshots' }).waitFor()
  r.searchPage2 = await names()
  r.nextDisabledOnLast = await page.getByRole('button', { name: 'Next →' }).isDisabled()
  await page.getByRole('button', { name: '← Previous' }).click()
  await pager.filter({ hasText: 'Page 1 of 2' }).waitFor()
  r.previousDisabledOnFirst = await page.getByRole('button', { name: '← Previous' }).isDisabled()
  await search.fill('web-')
  await pager.filter({ hasText: 'Page 1 of 1 · 1 snapshot' }).waitFor()
  r.searchWeb = await names()
  await search.fill('no-such-snapshot')
  await pager.filter({ hasText: '· 0 snapshots' }).waitFor()
  r.searchNone = await page.locator('main td.empty').innerText()
  await search.fill('')
  await pager.filter({ hasText: 'Page 1 of 2 · 12 snapshots' }).waitFor()
  // Gone again, so that web-snap is on the first page of the dark pass.
  for (const id of pageSnaps) {
    const res = await fetch(`${url}/api/snapshots/${id}`, { method: 'DELETE', headers: auth })
    if (!res.ok) throw new Error(`deleting snapshot ${id}: ${res.status} ${await res.text()}`)
  }
  step('snapshots searched and paged')

  // Registries: a Generic one and a Docker Hub one (whose tab has no URL field).
  await page.getByRole('link', { name: 'Registries' }).click()
  await page.getByRole('heading', { name: 'Registries' }).waitFor()
  await page.getByRole('button', { name: 'Add Registry' }).click()
  r.dockerHubVisibleFields = await page.locator('dialog [data-provider="dockerhub"][role="tabpanel"] label').allInnerTexts()
  r.urlVisibleOnDockerHub = await page.locator('dialog [role="tabpanel"]:not([hidden]) input[name="url"]').count()
  await page.getByRole('tab', { name: 'Amazon ECR' }).click()
  const ecr = page.locator('dialog [data-provider="ecr"][role="tabpanel"]')
  await ecr.locator('[data-broker="known"]').waitFor()
  r.ecrHelp = await ecr.locator('details').innerText()
  r.ecrBroker = await ecr.locator('[data-broker]').innerText()
  r.ecrTrust = await ecr.locator('pre[data-policy="trust"]').innerText()
  await shot(page, 'registry-ecr-light')
  await page.getByRole('tab', { name: 'Generic' }).click()
  await page.getByLabel('Registry name').fill('private-generic')
  const generic = page.locator('dialog [data-provider="generic"][role="tabpanel"]')
  await generic.getByLabel('Registry URL').fill('registry.example.com:5000')
  await generic.getByLabel('Username').fill('robot')
  await generic.getByLabel('Password').fill('s3cret-generic')
  await page.getByRole('button', { name: 'Add', exact: true }).click()
  await row(page, 'private-generic').waitFor()
  await page.getByRole('button', { name: 'Add Registry' }).click()
  await page.getByLabel('Registry name').fill('hub')
  const hub = page.locator('dialog [data-provider="dockerhub"][role="tabpanel"]')
  await hub.getByLabel('Username').fill('someone')
  await hub.getByLabel('Personal Access Token').fill('dckr_pat_x')
  await page.getByRole('button', { name: 'Add', exact: true }).click()
  await row(page, 'hub').waitFor()
  r.hubRow = await row(page, 'hub').innerText()
  r.registriesPage = await page.locator('main').innerText()
  await shot(page, 'registries-light')
  step('registries added')

  // Sandboxes: create from the snapshot; the terminal runs `echo hi`.
  await page.getByRole('link', { name: 'Sandboxes' }).click()
  await page.getByRole('button', { name: 'Create Sandbox' }).click()
  await page.getByLabel('Snapshot').selectOption('web-snap')
  await page.getByLabel('Name').fill('web-box')
  await page.getByLabel('Labels').fill('team=web')
  await page.getByRole('button', { name: 'Create', exact: true }).click()
  await page.getByRole('heading', { name: 'web-box' }).waitFor({ timeout: 60000 })
  await page.locator('dl.facts [data-state="started"]').waitFor({ timeout: 60000 })
  await page.getByRole('button', { name: 'Open terminal' }).click()
  await page.getByText('Connected.').waitFor()
  await page.locator('.xterm').click()
  await page.keyboard.type('echo hi\n')
  await page.waitForFunction(() => {
    const rows = document.querySelector('.xterm-rows')
    return rows && rows.innerText.split('\n').some((l) => l.trim() === 'hi')
  })
  r.terminalText = await page.locator('.xterm-rows').innerText()
  await page.keyboard.type('stty size\n')
  await page.waitForFunction(() => /\n\d+ \d+\s*\n/.test(document.querySelector('.xterm-rows').innerText))
  r.sttyAfterFit = (await page.locator('.xterm-rows').innerText()).match(/\n(\d+ \d+)\s*\n/)[1]
  await shot(page, 'sandbox-terminal-light')
  step('terminal echoed')

  // Files: upload into the working folder, then download it back.
  await page.locator('#file-upload').setInputFiles({ name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from('hello from the browser\n') })
  await page.getByRole('button', { name: 'Upload', exact: true }).click()
  await page.locator('tr[data-file="hello.txt"]').waitFor()
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download hello.txt' }).click()])
  r.downloaded = await readFile(await download.path(), 'utf8')
  await page.locator('#files-h').scrollIntoViewIfNeeded()
  await shot(page, 'sandbox-files-light')
  step('file uploaded and downloaded')

  // Stop from the detail view: its state, buttons and terminal follow.
  const facts = page.locator('dl.facts')
  await page.getByRole('button', { name: 'Stop', exact: true }).click()
  await facts.locator('[data-state="stopped"]').waitFor({ timeout: 60000 })
  await page.getByText('Start the sandbox to open a terminal.').waitFor()
  r.stoppedButtons = await page.locator('main .page-actions button').allInnerTexts()
  await shot(page, 'sandbox-stopped-light')
  step('sandbox stopped')
  // Archive, then Start, from the list's row menu.
  await page.getByRole('link', { name: 'Sandboxes' }).first().click()
  const boxRow = page.locator('tr', { hasText: 'web-box' })
  await boxRow.locator('[data-state="stopped"]').waitFor()
  await page.getByRole('button', { name: 'Actions for web-box' }).click()
  r.stoppedMenu = await page.getByRole('menuitem').allInnerTexts()
  await page.getByRole('menuitem', { name: 'Archive' }).click()
  await boxRow.locator('[data-state="archived"]').waitFor({ timeout: 90000 })
  r.archivedRow = await boxRow.innerText()
  await shot(page, 'sandbox-archived-light')
  await page.getByRole('button', { name: 'Actions for web-box' }).click()
  r.archivedMenu = await page.getByRole('menuitem').allInnerTexts()
  await page.getByRole('menuitem', { name: 'Start' }).click()
  await boxRow.locator('[data-state="started"]').waitFor({ timeout: 90000 })
  step('sandbox archived and started')

  // The list shows the sandbox with its IP and label.
  await page.getByRole('link', { name: 'Sandboxes' }).first().click()
  await page.locator('tr', { hasText: 'web-box' }).locator('[data-state="started"]').waitFor()
  await page.waitForFunction(() => /\d+\.\d+\.\d+\.\d+/.test(document.querySelector('main table')?.innerText || ''))
  r.sandboxRow = await page.locator('tr', { hasText: 'web-box' }).innerText()
  await shot(page, 'sandboxes-light')

  // API keys: create (value shown once), revoke.
  await page.getByRole('link', { name: 'API keys' }).click()
  await page.getByRole('button', { name: 'Create Key' }).click()
  await page.getByLabel('Name').fill('ci')
  await page.getByRole('button', { name: 'Create', exact: true }).click()
  r.newKey = await page.getByLabel('The new key').inputValue()
  await shot(page, 'key-created-light')
  await page.getByRole('button', { name: 'Done' }).click()
  await row(page, 'ci').waitFor()
  await page.getByRole('button', { name: 'Revoke key ci' }).click()
  await page.locator('dialog').getByRole('button', { name: 'Revoke' }).click()
  await row(page, 'ci').waitFor({ state: 'detached' })
  r.revokedKeyStatus = (await fetch(`${url}/api/snapshots`, { headers: { Authorization: `Bearer ${r.newKey}` } })).status
  await shot(page, 'keys-light')
  step('key created and revoked')

  // Builds cache (admin).
  await page.getByRole('link', { name: 'Builds cache' }).click()
  await page.locator('dl.facts').waitFor()
  r.buildsPage = await page.locator('main').innerText()
  r.cacheEntriesBefore = Number(await page.locator('dl.facts dd').first().innerText())
  await shot(page, 'builds-light')
  await page.getByRole('button', { name: 'Prune all' }).click()
  r.pruneConfirm = await page.locator('dialog p').innerText()
  await page.locator('dialog').getByRole('button', { name: 'Prune' }).click()
  r.pruneToast = await page.locator('.toast', { hasText: 'Removed' }).innerText()
  await page.getByText('The cache is empty.').waitFor()
  r.cacheEntriesAfter = Number(await page.locator('dl.facts dd').first().innerText())
  await shot(page, 'builds-pruned-light')
  step('build cache pruned')

  // Dark mode: the same pages in a fresh tab (which must sign in again).
  const dark = await newPage('dark')
  await signIn(dark)
  await waitState(dark, 'web-snap', 'active')
  await shot(dark, 'snapshots-dark')
  await dark.getByRole('button', { name: 'Create Snapshot' }).click()
  await shot(dark, 'create-snapshot-dark')
  await dark.keyboard.press('Escape')
  await dark.getByRole('link', { name: 'Registries' }).click()
  await row(dark, 'hub').waitFor()
  await dark.getByRole('button', { name: 'Add Registry' }).click()
  await shot(dark, 'add-registry-dark')
  await dark.keyboard.press('Escape')
  await dark.getByRole('link', { name: 'Sandboxes' }).click()
  await dark.locator('tr', { hasText: 'web-box' }).getByRole('link').click()
  await dark.getByRole('button', { name: 'Open terminal' }).click()
  await dark.getByText('Connected.').waitFor()
  await shot(dark, 'sandbox-detail-dark')
  step('dark mode')
}

// A server without AWS credentials: the ECR tab says so in the server's words, and keeps the
// explanation and a trust policy with a placeholder Principal.
async function ecrWithoutAws() {
  const page = await newPage('light')
  await signIn(page)
  await page.getByRole('link', { name: 'Registries' }).click()
  await page.getByRole('button', { name: 'Add Registry' }).click()
  await page.getByRole('tab', { name: 'Amazon ECR' }).click()
  const ecr = page.locator('dialog [data-provider="ecr"][role="tabpanel"]')
  await ecr.locator('[data-broker="unknown"]').waitFor()
  r.ecrProblem = await ecr.locator('.alert.warn').innerText()
  r.ecrHelp = await ecr.locator('details').innerText()
  r.ecrTrust = await ecr.locator('pre[data-policy="trust"]').innerText()
  await shot(page, 'registry-ecr-without-aws-light')
  step('ecr help without aws')
}

try {
  if (flow === 'ecr-without-aws') await ecrWithoutAws()
  else await everyFlow()
} catch (e) {
  r.error = String(e && e.stack || e)
} finally {
  await browser.close()
}
console.log(JSON.stringify(r))
