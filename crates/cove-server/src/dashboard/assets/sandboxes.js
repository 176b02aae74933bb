// Sandboxes: list, create from a snapshot, lifecycle actions, and the detail view (terminal,
// files, preview links).
import { api, toolbox } from './api.js';
import { el, mount, table, badge, stateLabel, fmtDate, fmtBytes, rowMenu, dialog, confirmDialog, field, toast, errorBox,
  pageHeader, every, busy } from './ui.js';

const MOVING = new Set(['creating', 'starting', 'stopping', 'archiving', 'restoring', 'destroying', 'pending_build', 'building_snapshot', 'pulling_snapshot']);
const enc = encodeURIComponent;

export async function render(args) {
  if (args[0]) return detail(args[0]);
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading sandboxes…'));
  const more = el('div', { class: 'pager' });
  mount(pageHeader('Sandboxes', el('button', { type: 'button', class: 'primary', onclick: () => createDialog() }, 'Create Sandbox')),
    el('p', { class: 'lead' }, 'Isolated Linux environments started from snapshots.'), body, more);
  let pages = 1;
  let live = false;
  async function refresh() {
    try {
      let items = [];
      let cursor = null;
      for (let i = 0; i < pages; i++) {
        const q = new URLSearchParams({ limit: '20' });
        if (cursor) q.set('cursor', cursor);
        const res = await api('GET', `/sandbox?${q}`);
        items = items.concat(res.items);
        cursor = res.nextCursor;
        if (!cursor) break;
      }
      const ips = await Promise.all(items.map((s) => (s.state === 'started'
        ? api('GET', `/sandbox/${enc(s.id)}`).then((d) => d.ip, () => null) : null)));
      body.replaceChildren(listTable(items, ips, refresh));
      more.replaceChildren(cursor ? el('button', { type: 'button', class: 'ghost', onclick: () => { pages++; refresh(); } }, 'Show more') : '');
      live = items.some((s) => MOVING.has(s.state));
    } catch (err) {
      body.replaceChildren(errorBox(err));
    }
  }
  let n = 0;
  every(2000, () => { n++; if (live || n % 5 === 0) refresh(); });
  await refresh();
}

function actionsFor(s, refresh) {
  const run = (label, verb) => ({ label, run: () => lifecycle(s, verb, refresh) });
  return [
    (s.state === 'stopped' || s.state === 'archived') && run('Start', 'start'),
    s.state === 'started' && run('Stop', 'stop'),
    s.state === 'stopped' && run('Archive', 'archive'),
    { label: 'Delete', danger: true, run: () => lifecycle(s, 'delete', refresh) },
  ];
}

const DOING = { start: 'starting', stop: 'stopping', archive: 'archiving', delete: 'deleting' };

async function lifecycle(s, verb, refresh) {
  const label = s.name || s.id;
  if (verb === 'delete' && !(await confirmDialog(`Delete sandbox ${label}?`, `The sandbox “${label}” and its files are removed. This cannot be undone.`))) return;
  toast(`${label}: ${DOING[verb]}…`);
  try {
    if (verb === 'delete') {
      await api('DELETE', `/sandbox/${enc(s.id)}`);
      toast(`${label}: deleted`);
    } else {
      // The answer's state: Stopped, Started, or Archiving (the list follows it to Archived).
      const r = await api('POST', `/sandbox/${enc(s.id)}/${verb}`);
      toast(`${label}: ${stateLabel(r?.state)}`);
    }
  } catch (err) {
    toast(`${label}: ${err.message}`, 'error');
  }
  refresh();
}

function listTable(items, ips, refresh) {
  return table(['Name', 'State', 'Snapshot', 'Resources', 'IP', 'Labels', 'Created', el('span', { class: 'sr-only' }, 'Actions')],
    items.map((s, i) => el('tr', { 'data-id': s.id },
      el('th', { scope: 'row' }, el('a', { href: `#/sandboxes/${enc(s.id)}` }, s.name || s.id)),
      el('td', {}, badge(s.state), s.errorReason ? el('div', { class: 'reason' }, s.errorReason) : null),
      el('td', {}, s.snapshot || '—'),
      el('td', {}, `${s.cpu} vCPU · ${s.memory} GiB · ${s.disk} GiB${s.gpu ? ` · ${s.gpu} GPU` : ''}`),
      el('td', { class: 'mono' }, ips[i] || '—'),
      el('td', {}, labelChips(s.labels)),
      el('td', {}, fmtDate(s.createdAt)),
      el('td', { class: 'row-actions' }, rowMenu(`Actions for ${s.name || s.id}`, [
        { label: 'Open', run: () => { location.hash = `#/sandboxes/${enc(s.id)}`; } }, ...actionsFor(s, refresh)])))),
    'No sandboxes. Create one from an active snapshot.');
}

const labelChips = (labels) => {
  const e = Object.entries(labels || {});
  return e.length ? el('span', { class: 'chips' }, e.map(([k, v]) => el('span', { class: 'chip' }, `${k}=${v}`))) : '—';
};

async function createDialog() {
  let snaps = [];
  try { snaps = (await api('GET', '/snapshots?limit=100&sort=name&order=asc')).items.filter((s) => s.state === 'active' || s.state === 'inactive'); } catch { /* shown below */ }
  dialog('Create Sandbox', (close) => {
    const snapshot = el('select', { name: 'snapshot' }, el('option', { value: '' }, 'The server’s default snapshot'),
      snaps.map((s) => el('option', { value: s.name }, `${s.name} (${s.cpu} vCPU, ${s.mem} GiB${s.state === 'inactive' ? ', inactive: reactivated' : ''})`)));
    const name = el('input', { name: 'name', autocomplete: 'off', placeholder: 'optional' });
    const labels = el('input', { name: 'labels', autocomplete: 'off', placeholder: 'team=web env=dev' });
    const err = el('div', { 'aria-live': 'assertive' });
    const submit = el('button', { type: 'submit', class: 'primary' }, 'Create');
    const form = el('form', { novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      err.replaceChildren();
      const body = {};
      if (snapshot.value) body.snapshot = snapshot.value;
      if (name.value.trim()) body.name = name.value.trim();
      const l = {};
      for (const w of labels.value.split(/[\s,]+/).filter(Boolean)) {
        const [k, ...v] = w.split('=');
        l[k] = v.join('=');
      }
      if (Object.keys(l).length) body.labels = l;
      try {
        const s = await busy(submit, 'Creating… (starting the sandbox)', () => api('POST', '/sandbox', body));
        close();
        toast(`${s.name}: ${stateLabel(s.state)}`);
        location.hash = `#/sandboxes/${enc(s.id)}`;
      } catch (ex) {
        err.replaceChildren(errorBox(ex));
      }
    } },
    field('Snapshot', snapshot), field('Name', name, 'Letters, digits and dashes; a generated one otherwise.'),
    field('Labels', labels, 'key=value pairs separated by spaces.'), err,
    el('div', { class: 'actions' }, el('button', { type: 'button', class: 'ghost', onclick: close }, 'Cancel'), submit));
    setTimeout(() => snapshot.focus());
    return form;
  });
}

async function detail(id) {
  const head = el('div', {}, el('p', { class: 'muted' }, 'Loading sandbox…'));
  const termBox = el('section', { class: 'card', 'aria-labelledby': 'term-h' });
  const files = el('section', { class: 'card', 'aria-labelledby': 'files-h' });
  const preview = el('section', { class: 'card', 'aria-labelledby': 'prev-h' });
  mount(el('p', {}, el('a', { href: '#/sandboxes' }, '← All sandboxes')), head, termBox, files, preview);
  let s;
  let shown = '';
  async function refresh() {
    try {
      s = await api('GET', `/sandbox/${enc(id)}`);
    } catch (err) {
      head.replaceChildren(errorBox(err));
      return;
    }
    const key = `${s.state}|${s.ip}`;
    if (key === shown) return;
    shown = key;
    head.replaceChildren(
      pageHeader(s.name, ...actionsFor(s, refresh).filter(Boolean).map((a) =>
        el('button', { type: 'button', class: a.danger ? 'danger' : 'ghost', onclick: async () => { await a.run(); if (a.label === 'Delete') location.hash = '#/sandboxes'; } }, a.label))),
      el('dl', { class: 'facts' },
        fact('State', badge(s.state)), fact('Snapshot', s.snapshot || '—'), fact('Resources', `${s.cpu} vCPU · ${s.memory} GiB memory · ${s.disk} GiB disk${s.gpu ? ` · ${s.gpu} GPU` : ''}`),
        fact('IP', el('span', { class: 'mono' }, s.ip || '—')), fact('Region', s.target), fact('Labels', labelChips(s.labels)),
        fact('Id', el('span', { class: 'mono' }, s.id)), fact('Created', fmtDate(s.createdAt))),
      s.errorReason ? errorBox({ message: s.errorReason }) : '');
    renderTerminal(termBox, s);
    renderFiles(files, s);
    renderPreview(preview, s);
  }
  every(3000, refresh);
  await refresh();
}

const fact = (k, v) => el('div', {}, el('dt', {}, k), el('dd', {}, v));

function renderTerminal(box, s) {
  const h = el('h2', { id: 'term-h' }, 'Terminal');
  if (s.state !== 'started') {
    box.replaceChildren(h, el('p', { class: 'muted' }, 'Start the sandbox to open a terminal.'));
    return;
  }
  const holder = el('div', { class: 'terminal-holder' });
  const status = el('p', { class: 'muted small', 'aria-live': 'polite' });
  const open = el('button', { type: 'button', class: 'primary', onclick: async () => {
    open.disabled = true;
    status.textContent = 'Loading the terminal…';
    try {
      const { openTerminal } = await import('./terminal.js');
      await openTerminal(holder, s.id, status);
      open.hidden = true;
    } catch (err) {
      status.textContent = err.message;
      open.disabled = false;
    }
  } }, 'Open terminal');
  box.replaceChildren(h, el('div', { class: 'row' }, open, status), holder);
}

function renderFiles(box, s) {
  const h = el('h2', { id: 'files-h' }, 'Files');
  if (s.state !== 'started') {
    box.replaceChildren(h, el('p', { class: 'muted' }, 'Start the sandbox to browse its files.'));
    return;
  }
  const path = el('input', { name: 'path', class: 'mono', value: '.', 'aria-label': 'Folder' });
  const list = el('div', {});
  const upload = el('input', { type: 'file', name: 'upload', multiple: true });
  const status = el('p', { class: 'muted small', 'aria-live': 'polite' });
  const join = (dir, name) => (dir === '.' || dir === '' ? name : `${dir.replace(/\/$/, '')}/${name}`);
  async function load() {
    try {
      const entries = await (await toolbox('GET', s.id, `/files?${new URLSearchParams({ path: path.value || '.' })}`)).json();
      entries.sort((a, b) => (b.isDir - a.isDir) || a.name.localeCompare(b.name));
      list.replaceChildren(table(['Name', 'Size', 'Mode', 'Modified', el('span', { class: 'sr-only' }, 'Actions')], entries.map((f) => el('tr', { 'data-file': f.name },
        el('th', { scope: 'row' }, f.isDir
          ? el('button', { type: 'button', class: 'link', onclick: () => { path.value = join(path.value, f.name); load(); } }, `${f.name}/`)
          : f.name),
        el('td', { class: 'num' }, f.isDir ? '—' : fmtBytes(f.size)),
        el('td', { class: 'mono' }, f.permissions || f.mode || ''),
        el('td', {}, fmtDate(f.modifiedAt || f.modTime)),
        el('td', { class: 'row-actions' }, f.isDir ? '' : el('button', { type: 'button', class: 'ghost', 'aria-label': `Download ${f.name}`,
          onclick: () => download(s, join(path.value, f.name), f.name, status) }, 'Download')))), 'This folder is empty.'));
    } catch (err) {
      list.replaceChildren(errorBox(err));
    }
  }
  const up = el('button', { type: 'button', class: 'ghost', onclick: () => busy(up, 'Uploading…', async () => {
    if (!upload.files.length) { status.textContent = 'Choose a file first.'; return; }
    for (const f of upload.files) {
      const fd = new FormData();
      fd.append('file', f, f.name);
      try {
        await toolbox('POST', s.id, `/files/upload-v2?${new URLSearchParams({ path: join(path.value, f.name) })}`, { body: fd });
        status.textContent = `Uploaded ${f.name}.`;
      } catch (err) {
        status.textContent = `${f.name}: ${err.message}`;
      }
    }
    upload.value = '';
    load();
  }) }, 'Upload');
  box.replaceChildren(h,
    el('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } },
      el('label', { for: path.id || (path.id = 'file-path') }, 'Folder'), path,
      el('button', { type: 'submit', class: 'ghost' }, 'List'),
      el('button', { type: 'button', class: 'ghost', onclick: () => { path.value = path.value.replace(/\/?[^/]*\/?$/, '') || '.'; load(); } }, 'Up')),
    el('div', { class: 'row' }, el('label', { for: 'file-upload' }, 'Upload into this folder'), Object.assign(upload, { id: 'file-upload' }), up),
    status, list);
  load();
}

async function download(s, path, name, status) {
  try {
    status.textContent = `Downloading ${name}…`;
    const blob = await (await toolbox('GET', s.id, `/files/download?${new URLSearchParams({ path })}`)).blob();
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    status.textContent = `Downloaded ${name} (${fmtBytes(blob.size)}).`;
  } catch (err) {
    status.textContent = `${name}: ${err.message}`;
  }
}

function renderPreview(box, s) {
  const h = el('h2', { id: 'prev-h' }, 'Preview links');
  const port = el('input', { type: 'number', min: 1, max: 65535, name: 'port', placeholder: '3000', 'aria-label': 'Port' });
  const out = el('div', { 'aria-live': 'polite' });
  const go = el('button', { type: 'submit', class: 'ghost' }, 'Get link');
  box.replaceChildren(h,
    el('p', { class: 'muted small' }, 'A link to a port a process in the sandbox listens on. Links of a private sandbox are signed and expire after an hour.'),
    el('form', { class: 'row', onsubmit: async (e) => {
      e.preventDefault();
      out.replaceChildren();
      try {
        const p = Number(port.value);
        const r = await busy(go, 'Getting…', () => (s.public
          ? api('GET', `/sandbox/${enc(s.id)}/ports/${p}/preview-url`)
          : api('GET', `/sandbox/${enc(s.id)}/ports/${p}/signed-preview-url?expiresInSeconds=3600`)));
        out.replaceChildren(el('p', {}, `Port ${p}: `, el('a', { href: r.url, target: '_blank', rel: 'noopener noreferrer', class: 'mono' }, r.url)));
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    } }, port, go), out);
}
