// The REST client: the API key lives in this tab's sessionStorage only and travels as a
// Bearer header, never in a URL.
const KEY = 'cove.apiKey';

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (k) => sessionStorage.setItem(KEY, k);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Plain words for an error answer: the server's own message when it sent one.
function explain(status, body) {
  let msg = '';
  if (body && typeof body === 'object') {
    msg = Array.isArray(body.message) ? body.message.join('; ') : body.message || body.error || '';
  } else if (typeof body === 'string') {
    msg = body.slice(0, 500);
  }
  if (status === 401) return `The API key was not accepted${msg ? ` (${msg})` : ''}. Sign in again with a valid key.`;
  if (status === 403) return msg || 'This key is not allowed to do that.';
  if (status === 404) return msg || 'Not found: it may have been deleted meanwhile.';
  if (status >= 500 && !msg) return `The server failed (HTTP ${status}). Its log says more.`;
  return msg || `The request failed (HTTP ${status}).`;
}

export let onUnauthorized = () => {};
export const setUnauthorizedHandler = (f) => (onUnauthorized = f);

// Any request to this server with the key; returns the Response or throws ApiError.
export async function request(method, url, { body, headers = {}, signal, raw = false } = {}) {
  const h = { Authorization: `Bearer ${getKey() || ''}`, ...headers };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob) && typeof body !== 'string') {
    h['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, { method, headers: h, body: payload, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'Cannot reach the Cove server. Is it running?');
  }
  if (!res.ok) {
    const text = await res.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* plain text */ }
    if (res.status === 401) onUnauthorized();
    throw new ApiError(res.status, explain(res.status, parsed));
  }
  return raw ? res : res;
}

// `/api{path}` → parsed JSON (null for an empty answer).
export async function api(method, path, body, opts = {}) {
  const res = await request(method, `/api${path}`, { ...opts, body });
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// `/toolbox/{sandbox}{path}` (the sandbox's agent) → Response.
export const toolbox = (method, sandbox, path, opts = {}) =>
  request(method, `/toolbox/${encodeURIComponent(sandbox)}${path}`, opts);

// Reads a streamed text body chunk by chunk into `onText` until it ends or `signal` aborts.
export async function stream(url, onText, signal) {
  const res = await request('GET', url, { signal });
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(dec.decode(value, { stream: true }));
  }
}
