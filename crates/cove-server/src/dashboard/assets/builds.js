// The Dockerfile step cache (admin keys only): size, entries, prune.
import { api } from './api.js';
import { el, mount, table, fmtDate, fmtBytes, confirmDialog, toast, errorBox, pageHeader, busy } from './ui.js';

export async function render() {
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading the build cache…'));
  const prune = el('button', { type: 'button', class: 'danger', onclick: async () => {
    if (!(await confirmDialog('Prune the build cache?', 'Every cached build step is removed; the next builds run their steps again. This cannot be undone.', 'Prune'))) return;
    try {
      const r = await busy(prune, 'Pruning…', () => api('DELETE', '/builds/cache'));
      toast(`Removed ${r.entriesRemoved} ${r.entriesRemoved === 1 ? 'entry' : 'entries'}, freed ${fmtBytes(r.bytesFreed)}`);
    } catch (err) { toast(err.message, 'error'); }
    refresh();
  } }, 'Prune all');
  mount(pageHeader('Builds cache', prune),
    el('p', { class: 'lead' }, 'Cached Dockerfile steps shared by every organization’s builds. Only admin keys see it.'), body);
  async function refresh() {
    try {
      const r = await api('GET', '/builds/cache');
      body.replaceChildren(
        el('dl', { class: 'facts' }, el('div', {}, el('dt', {}, 'Entries'), el('dd', {}, String(r.count))),
          el('div', {}, el('dt', {}, 'Size'), el('dd', {}, fmtBytes(r.totalBytes)))),
        table(['Step', 'Size', 'Created', 'Last used'], r.entries.map((e) => el('tr', {},
          el('td', { class: 'mono wrap' }, e.step), el('td', { class: 'num' }, fmtBytes(e.sizeBytes)),
          el('td', {}, fmtDate(e.createdAt)), el('td', {}, fmtDate(e.lastUsedAt)))), 'The cache is empty.'));
      prune.disabled = false;
    } catch (err) {
      body.replaceChildren(errorBox(err));
      prune.disabled = true;
    }
  }
  await refresh();
}
