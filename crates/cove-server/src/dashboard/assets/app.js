// Entry point: sign-in, the header and the hash router (#/snapshots, #/sandboxes/<id>, …).
import { api, getKey, setKey, clearKey, setUnauthorizedHandler } from './api.js';
import { el, $, mount, errorBox, field, leavePage, busy } from './ui.js';

export const session = { whoami: null };

const pages = {
  snapshots: () => import('./snapshots.js'),
  registries: () => import('./registries.js'),
  sandboxes: () => import('./sandboxes.js'),
  keys: () => import('./keys.js'),
  builds: () => import('./builds.js'),
};

function signInPage(message) {
  $('#top').hidden = true;
  const key = el('input', { type: 'password', name: 'key', autocomplete: 'off', required: true, spellcheck: 'false' });
  const out = el('div', { 'aria-live': 'polite' }, message ? errorBox({ message }) : null);
  const submit = el('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = el('form', { class: 'card signin', onsubmit: async (e) => {
    e.preventDefault();
    out.replaceChildren();
    setKey(key.value.trim());
    try {
      await busy(submit, 'Checking…', async () => { session.whoami = await api('GET', '/dashboard/whoami'); });
      route();
    } catch (err) {
      clearKey();
      out.replaceChildren(errorBox(err));
      key.focus();
    }
  } },
  el('h1', {}, 'Sign in to Cove'),
  el('p', { class: 'muted' }, 'Paste an API key. It stays in this browser tab only and is forgotten when the tab closes.'),
  field('API key', key),
  out,
  el('div', { class: 'actions' }, submit));
  mount(form);
  key.focus();
}

async function route() {
  leavePage();
  if (!getKey()) return signInPage();
  if (!session.whoami) {
    try {
      session.whoami = await api('GET', '/dashboard/whoami');
    } catch (err) {
      clearKey();
      return signInPage(err.message);
    }
  }
  $('#top').hidden = false;
  $('#who').textContent = `org ${session.whoami.organizationId.slice(0, 8)}${session.whoami.admin ? ' · admin' : ''}`;
  $('#who').title = `Organization ${session.whoami.organizationId}`;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const name = parts[0] || 'snapshots';
  const load = pages[name];
  if (!load) {
    location.replace('#/snapshots');
    return;
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Cove`;
  try {
    const mod = await load();
    await mod.render(parts.slice(1));
  } catch (err) {
    mount(errorBox(err));
  }
}

setUnauthorizedHandler(() => {
  clearKey();
  session.whoami = null;
});

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  $('#signout').addEventListener('click', () => {
    clearKey();
    session.whoami = null;
    leavePage();
    signInPage();
  });
  route();
});
