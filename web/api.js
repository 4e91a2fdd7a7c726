// The page's calls to the VaultFS API. A signed-in page is authenticated by its HttpOnly
// session cookie; every write also carries the session's CSRF token.

let csrf = null;

export function setCsrf(token) {
  csrf = token || null;
}

export function writeHeaders(extra = {}) {
  const h = { ...extra };
  if (csrf) h['X-CSRF-Token'] = csrf;
  return h;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
  }
}

// A path (or prefix) for a URL: every segment percent-encoded, the slashes kept.
export function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}

async function failure(res) {
  let code = '';
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code;
      message = body.error.message;
    }
  } catch (_) { /* not JSON */ }
  if (res.status === 401) {
    window.dispatchEvent(new CustomEvent('vaultfs:unauthorized'));
  }
  return new ApiError(res.status, code, message);
}

export async function call(method, url, { json, headers = {}, body, signal } = {}) {
  const init = { method, headers: { ...headers }, signal, credentials: 'same-origin' };
  if (method !== 'GET' && method !== 'HEAD') Object.assign(init.headers, writeHeaders());
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await fetch(url, init);
  if (!res.ok) throw await failure(res);
  return res;
}

export async function getJSON(url, opts) {
  return (await call('GET', url, opts)).json();
}

export async function sendJSON(method, url, json) {
  const res = await call(method, url, { json });
  return res.status === 204 ? null : res.json();
}

export const session = {
  get: () => getJSON('/api/v1/session'),
  signIn: async (token) => {
    const res = await fetch('/api/v1/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
      credentials: 'same-origin',
    });
    if (!res.ok) {
      let message = 'sign-in failed';
      try { message = (await res.json()).error.message; } catch (_) { /* keep */ }
      throw new ApiError(res.status, '', message);
    }
    return res.json();
  },
  signOut: () => call('DELETE', '/api/v1/session'),
};

// One level, sorted and filtered by the server ({ sort, order, filter }); the cursor
// continues that order.
export function list(prefix, cursor, limit = 200, { sort = 'name', order = 'asc', filter = '' } = {}) {
  const q = new URLSearchParams({ prefix, delimiter: '/', limit: String(limit) });
  if (sort !== 'name' || order !== 'asc') {
    q.set('sort', sort);
    q.set('order', order);
  }
  if (filter) q.set('filter', filter);
  if (cursor) q.set('cursor', cursor);
  return getJSON(`/api/v1/list?${q}`);
}

export function contentUrl(id) {
  return `/api/v1/files/${encodeURIComponent(id)}`;
}

export const files = {
  move: (path, to) => sendJSON('POST', `/api/v1/fs/${encodePath(path)}?op=move&to=${encodeURIComponent(to)}`),
  remove: (path) => call('DELETE', `/api/v1/fs/${encodePath(path)}`),
  share: (path, expiresIn) => sendJSON('POST', '/api/v1/share', { path, expires_in: expiresIn }),
  versions: (id) => getJSON(`/api/v1/files/${encodeURIComponent(id)}/versions?limit=100`),
  restoreVersion: (id, n) => sendJSON('POST', `/api/v1/files/${encodeURIComponent(id)}/versions/${n}/restore`),
  meta: (id) => getJSON(`/api/v1/files/${encodeURIComponent(id)}/meta`),
};

export const trash = {
  list: (prefix, cursor) => {
    const q = new URLSearchParams({ prefix, limit: '200' });
    if (cursor) q.set('cursor', cursor);
    return getJSON(`/api/v1/trash?${q}`);
  },
  restore: (trashId) => sendJSON('POST', `/api/v1/trash/${encodeURIComponent(trashId)}/restore`, {}),
  purge: (trashId) => call('DELETE', `/api/v1/trash/${encodeURIComponent(trashId)}`),
};
