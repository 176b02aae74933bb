// Snapshots: the table, Create Snapshot (image or Dockerfile), the row menu and logs.
import { api, stream } from './api.js';
import { el, mount, table, badge, fmtDate, rowMenu, dialog, confirmDialog, field, toast, errorBox,
  pageHeader, every, busy, pageSignal, nextId } from './ui.js';

const IN_PROGRESS = new Set(['pending', 'pulling', 'building', 'removing']);
const LIMIT = 10;
const view = { page: 1, name: '' };

export async function render() {
  const search = el('input', { type: 'search', placeholder: 'Search by name', value: view.name, 'aria-label': 'Search snapshots by name' });
  const createBtn = el('button', { type: 'button', class: 'primary', onclick: () => createDialog(refresh) }, 'Create Snapshot');
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading snapshots…'));
  const pager = el('nav', { class: 'pager', 'aria-label': 'Pages' });
  mount(pageHeader('Snapshots', search, createBtn),
    el('p', { class: 'lead' }, 'Sandbox templates made from an OCI image or a Dockerfile, with their resources, entrypoint and region.'),
    body, pager);
  let timer;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => { view.name = search.value.trim(); view.page = 1; refresh(); }, 250);
  });
  // One refresh at a time; one asked for meanwhile (a search typed during a poll) runs next.
  let busyRefresh = false;
  let again = false;
  async function refresh() {
    if (busyRefresh) { again = true; return; }
    busyRefresh = true;
    try {
      const q = new URLSearchParams({ page: view.page, limit: LIMIT, sort: 'createdAt', order: 'desc' });
      if (view.name) q.set('name', view.name);
      const res = await api('GET', `/snapshots?${q}`);
      if (view.page > 1 && res.items.length === 0 && res.totalPages > 0) { view.page = res.totalPages; again = true; return; }
      body.replaceChildren(snapshotTable(res.items, refresh, view.name));
      pager.replaceChildren(
        el('button', { type: 'button', class: 'ghost', disabled: view.page <= 1, onclick: () => { view.page--; refresh(); } }, '← Previous'),
        el('span', {}, `Page ${res.page} of ${Math.max(1, res.totalPages)} · ${res.total} snapshot${res.total === 1 ? '' : 's'}`),
        el('button', { type: 'button', class: 'ghost', disabled: view.page >= res.totalPages, onclick: () => { view.page++; refresh(); } }, 'Next →'));
      live = res.items.some((s) => IN_PROGRESS.has(s.state));
    } catch (err) {
      body.replaceChildren(errorBox(err));
    } finally {
      busyRefresh = false;
      if (again) { again = false; refresh(); }
    }
  }
  let live = false;
  // Live states: poll quickly while something is in progress, slowly otherwise.
  let ticks = 0;
  every(1500, () => { ticks++; if (live || ticks % 10 === 0) refresh(); });
  await refresh();
}

function snapshotTable(items, refresh, search) {
  const gib = (n) => `${n} GiB`;
  const rows = items.map((s) => el('tr', { 'data-name': s.name },
    el('th', { scope: 'row' }, s.name),
    el('td', { class: 'mono wrap' }, s.imageName || '—'),
    el('td', {}, badge(s.state),
      s.errorReason ? el('div', { class: 'reason' }, s.errorReason) : null),
    el('td', { class: 'num' }, s.cpu), el('td', { class: 'num' }, gib(s.mem)), el('td', { class: 'num' }, gib(s.disk)), el('td', { class: 'num' }, s.gpu),
    el('td', {}, (s.regionIds || []).join(', ') || '—'),
    el('td', { class: 'num' }, s.size == null ? '—' : `${s.size.toFixed(2)} GiB`),
    el('td', {}, s.general ? 'Yes' : 'No'),
    el('td', {}, fmtDate(s.lastUsedAt)),
    el('td', {}, fmtDate(s.createdAt)),
    el('td', { class: 'row-actions' }, rowMenu(`Actions for ${s.name}`, [
      s.state === 'inactive' && { label: 'Activate', run: () => act(s, 'activate', refresh) },
      s.state === 'active' && !s.general && { label: 'Deactivate', run: () => act(s, 'deactivate', refresh) },
      { label: 'Logs', run: () => logsDialog(s) },
      { label: 'Delete', danger: true, run: () => remove(s, refresh) },
    ]))));
  return table(['Name', 'Image', 'State', 'CPU', 'Memory', 'Disk', 'GPU', 'Region', 'Size', 'General', 'Last used', 'Created', el('span', { class: 'sr-only' }, 'Actions')],
    rows, search ? `No snapshot name contains “${search}”.` : 'No snapshots yet. Create one from an image such as busybox:1.36.');
}

async function act(s, verb, refresh) {
  try {
    await api('POST', `/snapshots/${encodeURIComponent(s.id)}/${verb}`);
    toast(`${s.name}: ${verb === 'activate' ? 'activated' : 'deactivated'}`);
  } catch (err) {
    toast(`${s.name}: ${err.message}`, 'error');
  }
  refresh();
}

async function remove(s, refresh) {
  const ok = await confirmDialog(`Delete snapshot ${s.name}?`,
    `Deleting “${s.name}” cannot be undone. Sandboxes can no longer be created from it.`);
  if (!ok) return;
  try {
    await api('DELETE', `/snapshots/${encodeURIComponent(s.id)}`);
    toast(`${s.name}: deleted`);
  } catch (err) {
    toast(`${s.name}: ${err.message}`, 'error');
  }
  refresh();
}

// Splits an entrypoint typed as words (quotes group) or as a JSON array.
export function parseEntrypoint(text) {
  const t = text.trim();
  if (!t) return undefined;
  if (t.startsWith('[')) return JSON.parse(t);
  const words = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(t))) words.push(m[1] ?? m[2] ?? m[3]);
  return words;
}

async function createDialog(refresh) {
  let regions = [];
  try { regions = await api('GET', '/regions'); } catch { /* the server default applies */ }
  dialog('Create Snapshot', (close) => {
    const name = el('input', { name: 'name', required: true, autocomplete: 'off', placeholder: 'my-snapshot' });
    const image = el('input', { name: 'image', autocomplete: 'off', placeholder: 'python:3.12', class: 'mono' });
    const entry = el('input', { name: 'entrypoint', autocomplete: 'off', placeholder: 'sleep infinity', class: 'mono' });
    const dockerfile = el('textarea', { name: 'dockerfile', rows: 8, class: 'mono', spellcheck: 'false', placeholder: 'FROM busybox:1.36\nRUN echo hello > /hello' });
    const num = (n, min, ph) => el('input', { name: n, type: 'number', min, step: 1, placeholder: ph, inputmode: 'numeric' });
    const cpu = num('cpu', 1, '1'); const mem = num('memory', 1, '1'); const disk = num('disk', 1, '3'); const gpu = num('gpu', 0, '0');
    const region = el('select', { name: 'region' }, el('option', { value: '' }, 'Default region'),
      regions.map((r) => el('option', { value: r.id }, r.name || r.id)));
    const err = el('div', { 'aria-live': 'assertive' });
    const log = el('pre', { class: 'log', hidden: true, tabindex: '0', 'aria-label': 'Build log' });
    const status = el('p', { class: 'muted', 'aria-live': 'polite' });
    const source = { mode: 'image' };
    const imagePane = el('div', { id: nextId('pane') },
      field('Image', image, 'A tag or a digest, e.g. python:3.12 or alpine@sha256:…. latest, lts and stable are refused: they name a different image over time.'),
      field('Entrypoint (optional)', entry, 'A long-running command; without one the image’s own is used, else sleep infinity.'));
    const filePane = el('div', { id: nextId('pane'), hidden: true },
      field('Dockerfile', dockerfile, 'Built on the server; COPY/ADD of local files needs the CLI (cove snapshot create --dockerfile).'));
    const tabImage = el('button', { type: 'button', role: 'tab', 'aria-selected': 'true', 'aria-controls': imagePane.id }, 'From an image');
    const tabFile = el('button', { type: 'button', role: 'tab', 'aria-selected': 'false', 'aria-controls': filePane.id, tabindex: '-1' }, 'From a Dockerfile');
    const pick = (mode) => {
      source.mode = mode;
      tabImage.setAttribute('aria-selected', String(mode === 'image')); tabImage.tabIndex = mode === 'image' ? 0 : -1;
      tabFile.setAttribute('aria-selected', String(mode === 'file')); tabFile.tabIndex = mode === 'file' ? 0 : -1;
      imagePane.hidden = mode !== 'image'; filePane.hidden = mode !== 'file';
    };
    tabImage.addEventListener('click', () => pick('image'));
    tabFile.addEventListener('click', () => pick('file'));
    const tabs = el('div', { role: 'tablist', class: 'tabs', 'aria-label': 'Source' }, tabImage, tabFile);
    tabs.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        const next = source.mode === 'image' ? 'file' : 'image';
        pick(next); (next === 'image' ? tabImage : tabFile).focus();
      }
    });
    const submit = el('button', { type: 'submit', class: 'primary' }, 'Create');
    const cancel = el('button', { type: 'button', class: 'ghost', onclick: close }, 'Cancel');
    const form = el('form', { novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      err.replaceChildren();
      const body = { name: name.value.trim() };
      try {
        if (source.mode === 'image') {
          body.imageName = image.value.trim();
          if (!body.imageName) throw new Error('Enter an image, e.g. python:3.12.');
          const ep = parseEntrypoint(entry.value);
          if (ep) body.entrypoint = ep;
        } else {
          if (!dockerfile.value.trim()) throw new Error('Enter a Dockerfile.');
          body.buildInfo = { dockerfileContent: dockerfile.value, contextHashes: [] };
        }
        for (const [k, input] of [['cpu', cpu], ['memory', mem], ['disk', disk], ['gpu', gpu]]) {
          if (input.value !== '') body[k] = Number(input.value);
        }
        if (region.value) body.regionId = region.value;
      } catch (ex) {
        err.replaceChildren(errorBox(ex));
        return;
      }
      try {
        const snap = await busy(submit, 'Creating…', () => api('POST', '/snapshots', body));
        refresh();
        if (!body.buildInfo) {
          toast(`${snap.name}: created, pulling ${snap.imageName}`);
          close();
          return;
        }
        // A build: keep the dialog to stream its log.
        form.querySelectorAll('input, textarea, select').forEach((i) => (i.disabled = true));
        submit.hidden = true;
        cancel.textContent = 'Close';
        log.hidden = false;
        status.textContent = 'Building… the log follows below.';
        await followBuild(snap, log, status, refresh);
      } catch (ex) {
        err.replaceChildren(errorBox(ex));
        (source.mode === 'image' ? image : dockerfile).setAttribute('aria-invalid', 'true');
      }
    } },
    field('Snapshot name', name, 'How sandboxes refer to it.'),
    tabs, imagePane, filePane,
    el('fieldset', { class: 'grid4' }, el('legend', {}, 'Resources (optional: 1 vCPU, 1 GiB memory, 3 GiB disk by default)'),
      field('vCPU', cpu), field('Memory (GiB)', mem), field('Disk (GiB)', disk), field('GPU', gpu)),
    field('Region', region),
    err, status, log,
    el('div', { class: 'actions' }, cancel, submit));
    setTimeout(() => name.focus());
    return form;
  }, { wide: true });
}

// Streams a build's log into `log`, then reports how the snapshot ended.
async function followBuild(snap, log, status, refresh) {
  const signal = pageSignal();
  try {
    await stream(`/api/snapshots/${encodeURIComponent(snap.id)}/build-logs?follow=true`, (t) => {
      log.textContent += t;
      log.scrollTop = log.scrollHeight;
    }, signal);
  } catch (err) {
    if (err.name !== 'AbortError') status.textContent = `The log stopped: ${err.message}`;
  }
  for (let i = 0; i < 40; i++) {
    const s = await api('GET', `/snapshots/${encodeURIComponent(snap.id)}`).catch(() => null);
    if (s && !IN_PROGRESS.has(s.state)) {
      status.replaceChildren('Finished: ', badge(s.state), s.errorReason ? ` ${s.errorReason}` : '');
      refresh();
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

// The row's Logs: the build log (streamed while it builds) or, for a pulled image, its progress.
function logsDialog(s) {
  const log = el('pre', { class: 'log', tabindex: '0', 'aria-label': `Log of ${s.name}` });
  const status = el('p', { class: 'muted', 'aria-live': 'polite' });
  const ctl = new AbortController();
  const d = dialog(`Logs · ${s.name}`, (close) => el('div', {}, status, log,
    el('div', { class: 'actions' }, el('button', { type: 'button', class: 'primary', onclick: close }, 'Close'))), { wide: true });
  d.addEventListener('close', () => ctl.abort());
  (async () => {
    const follow = IN_PROGRESS.has(s.state);
    try {
      status.textContent = follow ? 'Streaming while the snapshot is in progress…' : '';
      await stream(`/api/snapshots/${encodeURIComponent(s.id)}/build-logs?follow=${follow}`, (t) => {
        log.textContent += t;
        log.scrollTop = log.scrollHeight;
      }, ctl.signal);
      if (follow) status.textContent = 'The build ended.';
      if (!log.textContent) log.textContent = '(the log is empty)';
    } catch (err) {
      if (err.name === 'AbortError') return;
      if (err.status !== 400 && err.status !== 404) { status.textContent = err.message; return; }
      // Not a build: show the pull's progress from the snapshot's state.
      status.textContent = 'This snapshot was pulled from a registry; its progress:';
      let last = '';
      for (;;) {
        const cur = await api('GET', `/snapshots/${encodeURIComponent(s.id)}`).catch((e) => ({ state: 'error', errorReason: e.message }));
        const line = `${new Date().toLocaleTimeString()}  ${cur.state}${cur.errorReason ? `: ${cur.errorReason}` : ''}  (${s.imageName})\n`;
        if (line.slice(10) !== last) { log.textContent += line; last = line.slice(10); }
        if (!IN_PROGRESS.has(cur.state) || ctl.signal.aborted) break;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  })();
}
