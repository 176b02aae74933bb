// API keys of the organization: create (value shown once), list, revoke.
import { api } from './api.js';
import { el, mount, table, fmtDate, dialog, confirmDialog, field, toast, errorBox, pageHeader, busy } from './ui.js';
import { session } from './app.js';

export async function render() {
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading keys…'));
  mount(pageHeader('API keys', el('button', { type: 'button', class: 'primary', onclick: () => createDialog(refresh) }, 'Create Key')),
    el('p', { class: 'lead' }, 'Keys of your organization for the SDKs, the CLI and this dashboard. A key’s value is shown only when it is created.'),
    body);
  async function refresh() {
    try {
      const keys = await api('GET', '/api-keys');
      body.replaceChildren(table(['Name', 'Prefix', 'Created', 'Last used', el('span', { class: 'sr-only' }, 'Actions')],
        keys.map((k) => el('tr', { 'data-name': k.name },
          el('th', { scope: 'row' }, k.name, k.id === session.whoami?.keyId ? el('span', { class: 'chip' }, 'this session') : ''),
          el('td', { class: 'mono' }, `${k.prefix}…`),
          el('td', {}, fmtDate(k.createdAt)), el('td', {}, fmtDate(k.lastUsedAt)),
          el('td', { class: 'row-actions' }, el('button', { type: 'button', class: 'ghost danger-text', 'aria-label': `Revoke key ${k.name}`, onclick: async () => {
            const own = k.id === session.whoami?.keyId;
            if (!(await confirmDialog(`Revoke key ${k.name}?`, `Everything using “${k.name}” stops working at once${own ? ', including this dashboard session' : ''}. This cannot be undone.`, 'Revoke'))) return;
            try { await api('DELETE', `/api-keys/${encodeURIComponent(k.id)}`); toast(`${k.name}: revoked`); } catch (err) { toast(err.message, 'error'); }
            if (own) { location.reload(); return; }
            refresh();
          } }, 'Revoke')))), 'No keys.'));
    } catch (err) {
      body.replaceChildren(errorBox(err));
    }
  }
  await refresh();
}

function createDialog(refresh) {
  dialog('Create API key', (close) => {
    const name = el('input', { name: 'name', required: true, autocomplete: 'off' });
    const err = el('div', { 'aria-live': 'assertive' });
    const result = el('div', { 'aria-live': 'polite' });
    const submit = el('button', { type: 'submit', class: 'primary' }, 'Create');
    const done = el('button', { type: 'button', class: 'ghost', onclick: close }, 'Cancel');
    const form = el('form', { novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      err.replaceChildren();
      try {
        const k = await busy(submit, 'Creating…', () => api('POST', '/api-keys', { name: name.value.trim() }));
        const value = el('input', { readonly: true, class: 'mono', value: k.value, 'aria-label': 'The new key', name: 'value' });
        const copy = el('button', { type: 'button', class: 'ghost', onclick: async () => {
          try { await navigator.clipboard.writeText(k.value); copy.textContent = 'Copied'; } catch { value.select(); copy.textContent = 'Press Ctrl+C'; }
        } }, 'Copy');
        result.replaceChildren(el('div', { class: 'alert ok' },
          el('p', {}, el('strong', {}, 'Copy this key now. '), 'It is not shown again.'),
          el('div', { class: 'row' }, value, copy)));
        name.disabled = true; submit.hidden = true; done.textContent = 'Done';
        value.select();
        refresh();
      } catch (ex) {
        err.replaceChildren(errorBox(ex));
      }
    } }, field('Name', name, 'What uses it, e.g. ci or laptop.'), err, result, el('div', { class: 'actions' }, done, submit));
    setTimeout(() => name.focus());
    return form;
  });
}
