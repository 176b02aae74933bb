// The sandbox terminal: xterm.js (vendored, loaded only here) over the agent's PTY WebSocket.
// A WebSocket cannot carry the Authorization header, so an authed POST first mints a one-use
// token for this sandbox, offered as a subprotocol; the key itself never leaves fetch().
import { api, toolbox } from './api.js';

const VENDOR = '/dashboard/assets/vendor/xterm-6.0.0';

// xterm adds <style> elements for its metrics and theme; the page's policy admits only those
// bearing this page's nonce, so every <style> made from here on gets it.
function allowTerminalStyles() {
  const nonce = document.querySelector('meta[name="cove-style-nonce"]')?.content;
  if (!nonce || document.createElement.coveNonce) return;
  const orig = Document.prototype.createElement;
  const patched = function (tag, opts) {
    const e = orig.call(this, tag, opts);
    if (String(tag).toLowerCase() === 'style') e.nonce = nonce;
    return e;
  };
  patched.coveNonce = true;
  Document.prototype.createElement = patched;
}

function loadCss() {
  if (document.querySelector('link[data-xterm]')) return;
  const l = document.createElement('link');
  l.rel = 'stylesheet';
  l.href = `${VENDOR}/xterm.css`;
  l.dataset.xterm = '';
  document.head.append(l);
}

const dark = () => matchMedia('(prefers-color-scheme: dark)').matches;

export async function openTerminal(holder, sandboxId, status) {
  allowTerminalStyles();
  loadCss();
  const [{ Terminal }, { FitAddon }] = await Promise.all([import(`${VENDOR}/xterm.mjs`), import(`${VENDOR}/addon-fit.mjs`)]);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
    fontSize: 14,
    theme: dark() ? { background: '#0b1220', foreground: '#e2e8f0' } : { background: '#ffffff', foreground: '#0f172a', cursor: '#0f172a', selectionBackground: '#bfdbfe' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  holder.replaceChildren();
  term.open(holder);
  fit.fit();
  const sessionId = `dash-${Math.random().toString(36).slice(2, 10)}`;
  const enc = encodeURIComponent;
  status.textContent = 'Starting a shell…';
  await toolbox('POST', sandboxId, '/process/pty', { body: { id: sessionId, cols: term.cols, rows: term.rows } });
  const { token } = await api('POST', `/dashboard/terminal-token/${enc(sandboxId)}`);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/dashboard/terminal/${enc(sandboxId)}/${enc(sessionId)}`,
    [`cove-terminal.${token}`, 'X-Daytona-Pty-Exit-Control']);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      let msg = null;
      try { msg = JSON.parse(e.data); } catch { /* output as text */ }
      if (msg && msg.type === 'control') {
        if (msg.status === 'connected') { status.textContent = 'Connected.'; term.focus(); }
        else if (msg.status === 'exited') status.textContent = `The shell exited (code ${msg.exitCode}).`;
        else if (msg.status === 'error') status.textContent = `Terminal error: ${msg.error}`;
        return;
      }
      term.write(e.data);
    } else {
      term.write(new Uint8Array(e.data));
    }
  };
  ws.onclose = (e) => {
    if (!/exited/.test(status.textContent)) status.textContent = `Disconnected${e.reason ? `: ${e.reason}` : ''}.`;
  };
  ws.onerror = () => { status.textContent = 'The terminal connection failed.'; };
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
  let pending;
  const resize = () => {
    fit.fit();
    clearTimeout(pending);
    pending = setTimeout(() => {
      toolbox('POST', sandboxId, `/process/pty/${enc(sessionId)}/resize`, { body: { cols: term.cols, rows: term.rows } }).catch(() => {});
    }, 150);
  };
  const ro = new ResizeObserver(resize);
  ro.observe(holder);
  // Leaving the page ends the shell.
  window.addEventListener('hashchange', () => {
    ro.disconnect();
    ws.close();
    toolbox('DELETE', sandboxId, `/process/pty/${enc(sessionId)}`).catch(() => {});
    term.dispose();
  }, { once: true });
  return term;
}
