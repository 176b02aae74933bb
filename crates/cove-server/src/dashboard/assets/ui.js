// DOM helpers. Text from the API only ever goes in as text nodes (never innerHTML).

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function mount(...nodes) {
  const main = $('#main');
  main.replaceChildren(...nodes);
  return main;
}

let uid = 0;
export const nextId = (p = 'f') => `${p}-${++uid}`;

export function toast(message, kind = 'ok') {
  const t = el('div', { class: `toast ${kind}` }, message);
  const box = $('#toasts');
  box.append(t);
  // A few at a time, so they never cover much of the page.
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 3500);
}

// An inline alert box for a failed operation.
export const errorBox = (err) =>
  el('div', { class: 'alert error', role: 'alert' }, err && err.message ? err.message : String(err));

export function fmtDate(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const secs = (Date.now() - d.getTime()) / 1000;
  let rel;
  if (secs < 60) rel = 'just now';
  else if (secs < 3600) rel = `${Math.floor(secs / 60)} min ago`;
  else if (secs < 86400) rel = `${Math.floor(secs / 3600)} h ago`;
  else rel = `${Math.floor(secs / 86400)} d ago`;
  return el('time', { datetime: iso, title: d.toLocaleString() }, rel);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${u[i]}`;
}

const STATE_CLASS = {
  active: 'green', started: 'green',
  pending: 'blue', pulling: 'blue', building: 'blue', starting: 'blue', creating: 'blue',
  pending_build: 'blue', building_snapshot: 'blue', restoring: 'blue', stopping: 'amber', archiving: 'amber',
  inactive: 'grey', stopped: 'grey', archived: 'grey',
  removing: 'amber', destroying: 'amber', destroyed: 'grey',
  error: 'red', build_failed: 'red',
};
export const stateLabel = (s) => String(s || 'unknown').replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
export const badge = (state) =>
  el('span', { class: `badge ${STATE_CLASS[state] || 'grey'}`, 'data-state': state }, stateLabel(state));

// A modal dialog: Escape and the Cancel button close it. `build(close)` returns its body.
export function dialog(title, build, { wide = false } = {}) {
  const d = el('dialog', { class: wide ? 'wide' : '', 'aria-labelledby': nextId('dlg') });
  const h = el('h2', { id: d.getAttribute('aria-labelledby') }, title);
  const close = () => { d.close(); };
  d.addEventListener('close', () => { d.remove(); d.dispatchEvent(new Event('closed')); });
  d.append(h, build(close));
  document.body.append(d);
  d.showModal();
  return d;
}

// Asks before something that cannot be undone; resolves true when confirmed.
export function confirmDialog(title, message, action = 'Delete') {
  return new Promise((resolve) => {
    let ok = false;
    const d = dialog(title, (close) => el('div', {},
      el('p', {}, message),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'ghost', onclick: close }, 'Cancel'),
        el('button', { type: 'button', class: 'danger', onclick: () => { ok = true; close(); } }, action))));
    d.addEventListener('close', () => resolve(ok));
    d.querySelector('button.danger').focus();
  });
}

// A "⋯" menu button whose items are real buttons; arrows move, Escape closes.
export function rowMenu(label, items) {
  const wrap = el('div', { class: 'menu' });
  const id = nextId('menu');
  const btn = el('button', { type: 'button', class: 'icon', 'aria-haspopup': 'menu', 'aria-expanded': 'false', 'aria-controls': id, 'aria-label': label, title: label }, '⋯');
  const list = el('div', { class: 'menu-list', role: 'menu', id, hidden: true });
  const buttons = items.filter(Boolean).map((it) =>
    el('button', { type: 'button', role: 'menuitem', class: it.danger ? 'danger-text' : '', tabindex: '-1',
      onclick: () => { hide(); it.run(); } }, it.label));
  list.append(...buttons);
  const outside = (e) => { if (!wrap.contains(e.target)) hide(); };
  function show() {
    list.hidden = false; btn.setAttribute('aria-expanded', 'true');
    buttons[0]?.focus();
    document.addEventListener('mousedown', outside);
  }
  function hide(focus = false) {
    list.hidden = true; btn.setAttribute('aria-expanded', 'false');
    document.removeEventListener('mousedown', outside);
    if (focus) btn.focus();
  }
  btn.addEventListener('click', () => (list.hidden ? show() : hide()));
  list.addEventListener('keydown', (e) => {
    const i = buttons.indexOf(document.activeElement);
    if (e.key === 'Escape') { e.preventDefault(); hide(true); }
    else if (e.key === 'ArrowDown') { e.preventDefault(); buttons[(i + 1) % buttons.length].focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); buttons[(i - 1 + buttons.length) % buttons.length].focus(); }
    else if (e.key === 'Tab') hide();
  });
  wrap.append(btn, list);
  return wrap;
}

// A labelled form field. `input` is an element; `hint` a line under it.
export function field(label, input, hint) {
  const id = input.id || nextId('in');
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return el('div', { class: 'field' },
    el('label', { for: id }, label), input, hint ? el('small', { id: hintId, class: 'hint' }, hint) : null);
}

export function table(headers, rows, empty = 'Nothing here yet.') {
  const t = el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length, class: 'empty' }, empty))));
  return el('div', { class: 'table-wrap' }, t);
}

// Runs `fn` with `button` disabled and a busy label; errors go to `onError`.
export async function busy(button, label, fn) {
  const old = button.textContent;
  button.disabled = true;
  button.textContent = label;
  button.setAttribute('aria-busy', 'true');
  try { return await fn(); } finally {
    button.disabled = false; button.textContent = old; button.removeAttribute('aria-busy');
  }
}

export const pageHeader = (title, ...actions) =>
  el('div', { class: 'page-head' }, el('h1', {}, title), el('div', { class: 'page-actions' }, ...actions));

// A timer that the router clears when the page changes.
const timers = new Set();
export function every(ms, fn) {
  const t = setInterval(fn, ms);
  timers.add(t);
  return t;
}
export const aborters = new Set();
export function pageSignal() {
  const c = new AbortController();
  aborters.add(c);
  return c.signal;
}
export function leavePage() {
  for (const t of timers) clearInterval(t);
  timers.clear();
  for (const c of aborters) c.abort();
  aborters.clear();
}
