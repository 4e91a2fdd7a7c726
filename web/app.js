// The VaultFS file browser. Plain ES modules, no build step: this file is what runs.

import { ApiError, session, setCsrf, list, files, trash, contentUrl } from './api.js';
import { $, el, clear, formatSize, formatTime, toast, openDialog, closeDialog } from './dom.js';
import { Feed } from './live.js';
import { enqueue, onUploaded, clearFinished, droppedFiles } from './uploads.js';
import { preview } from './preview.js';

const PAGE = 200;

const state = {
  me: null, // the session view
  prefix: '',
  filter: '',
  entries: new Map(), // path -> FileMeta (files of the page on screen)
  folders: new Set(), // full prefixes ending in '/'
  cursors: [null], // cursor of each page seen; the last is the page on screen
  next: null,
  sort: { col: 'name', dir: 1 },
  feed: null,
  trashCursor: null,
};

function params() {
  const q = new URLSearchParams(location.search);
  return { view: q.get('view') === 'trash' ? 'trash' : 'files', prefix: normPrefix(q.get('prefix') || '') };
}

function normPrefix(p) {
  const t = p.replace(/^\/+/, '');
  return t === '' || t.endsWith('/') ? t : `${t}/`;
}

function href(view, prefix) {
  const q = new URLSearchParams();
  if (view === 'trash') q.set('view', 'trash');
  if (prefix) q.set('prefix', prefix);
  const s = q.toString();
  return s ? `/?${s}` : '/';
}

function go(view, prefix) {
  history.pushState(null, '', href(view, prefix));
  route();
}

function nameOf(path) {
  const t = path.endsWith('/') ? path.slice(0, -1) : path;
  return t.slice(t.lastIndexOf('/') + 1);
}

// ---- session ----

async function boot() {
  wireStatic();
  let me;
  try {
    me = await session.get();
  } catch (e) {
    toast(`Cannot reach the server: ${e.message}`, 'error');
    return;
  }
  if (me.signed_in) signedIn(me);
  else showSignIn();
}

function showSignIn(message = '') {
  if (state.feed) state.feed.stop();
  state.feed = null;
  state.me = null;
  setCsrf(null);
  for (const id of ['files', 'trash', 'views']) $(id).hidden = true;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  $('live').textContent = 'offline';
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('token').focus();
}

function signedIn(me) {
  state.me = me;
  setCsrf(me.csrf_token);
  $('signin').hidden = true;
  $('views').hidden = false;
  $('sign-out').hidden = !me.auth_required;
  $('upload').hidden = !/write|admin/.test(me.scopes);
  $('who').textContent = me.auth_required
    ? `${me.scopes}${me.prefix ? ` on ${me.prefix}` : ''}`
    : 'open server';
  route();
}

async function signIn(ev) {
  ev.preventDefault();
  const token = $('token').value.trim();
  if (!token) {
    $('signin-error').textContent = 'Enter a token.';
    return;
  }
  try {
    const me = await session.signIn(token);
    $('token').value = '';
    signedIn(me);
  } catch (e) {
    $('signin-error').textContent = e.status === 401
      ? 'That token is not valid: unknown, revoked or expired.'
      : `Sign-in failed: ${e.message}`;
  }
}

async function signOut() {
  try {
    await session.signOut();
  } catch (_) { /* the cookie is cleared either way */ }
  showSignIn('Signed out.');
}

// ---- routing ----

function route() {
  if (!state.me) return;
  const { view, prefix } = params();
  const within = state.me.prefix && !prefix.startsWith(state.me.prefix) && !state.me.prefix.startsWith(prefix);
  if (within) {
    history.replaceState(null, '', href(view, state.me.prefix));
    route();
    return;
  }
  $('view-files').setAttribute('aria-current', view === 'files' ? 'page' : 'false');
  $('view-trash').setAttribute('aria-current', view === 'trash' ? 'page' : 'false');
  $('files').hidden = view !== 'files';
  $('trash').hidden = view !== 'trash';
  if (view === 'trash') showTrash();
  else openFolder(prefix);
}

// ---- listing ----

function openFolder(prefix) {
  state.prefix = prefix;
  state.cursors = [null];
  state.filter = '';
  $('filter').value = '';
  drawCrumbs();
  if (state.feed) state.feed.stop();
  // Subscribe first, list when the feed says where it starts: no change falls between.
  const feed = new Feed(prefix, {
    ready: () => loadPage(),
    event: applyEvent,
    resync: () => loadPage(),
    unauthorized: () => showSignIn('Your session ended (the token was revoked or expired).'),
    status: (s) => {
      $('live').textContent = s;
      $('live').dataset.state = s;
    },
  });
  state.feed = feed;
  feed.start();
}

function drawCrumbs() {
  const ol = $('crumbs');
  clear(ol);
  const parts = state.prefix.split('/').filter(Boolean);
  const crumb = (label, prefix, current) => el('li', {},
    el('a', { href: href('files', prefix), 'aria-current': current ? 'page' : false,
      onclick: (e) => { e.preventDefault(); go('files', prefix); } }, label));
  ol.append(crumb('All files', '', parts.length === 0));
  let acc = '';
  parts.forEach((p, i) => {
    acc += `${p}/`;
    ol.append(crumb(p, acc, i === parts.length - 1));
  });
}

let loadSeq = 0;
async function loadPage() {
  const mine = ++loadSeq;
  const cursor = state.cursors[state.cursors.length - 1];
  let page;
  try {
    page = await list(state.prefix, cursor, PAGE, {
      sort: state.sort.col, order: state.sort.dir > 0 ? 'asc' : 'desc', filter: state.filter,
    });
  } catch (e) {
    if (e.status !== 401) toast(`Listing failed: ${e.message}`, 'error');
    return;
  }
  if (mine !== loadSeq) return;
  state.entries = new Map(page.entries.map((f) => [f.path, f]));
  state.folders = new Set(page.prefixes);
  state.next = page.next_cursor || null;
  drawRows();
}

// The server sorts (and pages in that order); rows that arrive live are put in place with
// the same comparison: the column, then the path, in code unit order.
const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0);

function sorted() {
  const { col, dir } = state.sort;
  const key = {
    name: () => 0,
    size: (f) => f.size,
    modified: (f) => Date.parse(f.modified_at),
    version: (f) => f.version,
  }[col];
  return [...state.entries.values()].sort((a, b) => (cmp(key(a), key(b)) || cmp(a.path, b.path)) * dir);
}

// What the server's filter keeps: names containing the text, ASCII case-insensitively.
function kept(name) {
  return !state.filter || name.replace(/[A-Z]/g, (c) => c.toLowerCase())
    .includes(state.filter.replace(/[A-Z]/g, (c) => c.toLowerCase()));
}

function drawRows() {
  const tbody = $('rows');
  clear(tbody);
  const folders = [...state.folders].sort((a, b) => cmp(a, b) * (state.sort.col === 'name' ? state.sort.dir : 1));
  for (const p of folders) {
    tbody.append(el('tr', { class: 'folder', dataset: { path: p } },
      el('td', { class: 'name', 'data-label': 'Name' },
        el('a', { href: href('files', p), onclick: (e) => { e.preventDefault(); go('files', p); } },
          el('span', { class: 'icon', 'aria-hidden': 'true' }), `${nameOf(p)}/`)),
      el('td', { class: 'size' }), el('td', { class: 'modified' }), el('td', { class: 'version' }), el('td')));
  }
  for (const f of sorted()) tbody.append(fileRow(f));
  $('empty').hidden = state.entries.size + state.folders.size > 0;
  const n = state.cursors.length;
  $('prev').disabled = n <= 1;
  $('next').disabled = !state.next;
  $('page-info').textContent = n > 1 || state.next ? `Page ${n}` : '';
  for (const th of document.querySelectorAll('#listing th[data-col]')) {
    const col = th.dataset.col;
    th.setAttribute('aria-sort', col === state.sort.col ? (state.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}

function fileRow(f) {
  const name = nameOf(f.path);
  const writable = /write|admin/.test(state.me.scopes);
  const action = (label, handler, show = true) => (show
    ? el('button', { type: 'button', class: 'action', onclick: () => handler(f) }, label) : null);
  return el('tr', { class: 'file', dataset: { path: f.path, id: f.id } },
    el('td', { class: 'name', 'data-label': 'Name' },
      el('a', { href: contentUrl(f.id), download: name, class: 'file-link' }, name)),
    el('td', { class: 'size', 'data-label': 'Size' }, formatSize(f.size)),
    el('td', { class: 'modified', 'data-label': 'Modified' }, formatTime(f.modified_at)),
    el('td', { class: 'version', 'data-label': 'Version' }, `v${f.version}`),
    el('td', { class: 'actions' },
      el('div', { class: 'action-group', role: 'group', 'aria-label': `Actions for ${name}` },
        action('Preview', openPreview),
        action('Download', download),
        action('Rename', rename, writable),
        action('Delete', remove, writable),
        action('Share', share),
        action('Versions', versions),
        action('Details', details))));
}

function setSort(col) {
  state.sort = state.sort.col === col ? { col, dir: -state.sort.dir } : { col, dir: 1 };
  // Sorted by the server: back to page 1 of the new order.
  state.cursors = [null];
  loadPage();
}

// ---- live updates ----

function applyEvent(ev) {
  const rest = ev.path.startsWith(state.prefix) ? ev.path.slice(state.prefix.length) : null;
  const direct = rest !== null && !rest.includes('/') && kept(rest);
  const gone = (path) => {
    if (state.entries.delete(path)) return true;
    return false;
  };
  let changed = false;
  switch (ev.kind) {
    case 'deleted':
      changed = gone(ev.path);
      break;
    case 'moved':
      if (ev.from_path) changed = gone(ev.from_path);
      // falls through: the new path appears
    case 'created':
    case 'updated':
    case 'copied':
    case 'restored':
      if (direct) {
        const old = state.entries.get(ev.path) || {};
        state.entries.set(ev.path, {
          ...old, id: ev.id, path: ev.path, size: ev.size, sha256: ev.sha256, version: ev.version,
          modified_at: ev.at, created_at: old.created_at || ev.at, content_type: ev.content_type || old.content_type || '',
        });
        changed = true;
      } else if (rest !== null && rest.includes('/') && kept(rest.slice(0, rest.indexOf('/')))) {
        const folder = state.prefix + rest.slice(0, rest.indexOf('/') + 1);
        if (!state.folders.has(folder)) {
          state.folders.add(folder);
          changed = true;
        }
      }
      break;
    default:
      break;
  }
  if (changed) drawRows();
}

// ---- actions ----

function download(f) {
  const a = el('a', { href: contentUrl(f.id), download: nameOf(f.path), hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
}

function openPreview(f) {
  openDialog(nameOf(f.path), (body) => preview(f, body));
}

function errorText(e) {
  return e instanceof ApiError && e.code ? `${e.code}: ${e.message}` : e.message;
}

function rename(f) {
  openDialog(`Rename ${nameOf(f.path)}`, (body) => {
    const input = el('input', { id: 'rename-to', type: 'text', value: f.path, required: true, spellcheck: 'false' });
    const err = el('p', { class: 'error', role: 'alert' });
    const form = el('form', { class: 'stack', onsubmit: async (e) => {
      e.preventDefault();
      const to = input.value.trim();
      if (!to || to === f.path) return;
      try {
        await files.move(f.path, to);
        closeDialog();
        toast(`Renamed to ${to}`);
        loadPage();
      } catch (x) {
        err.textContent = errorText(x);
      }
    } },
    el('label', { for: 'rename-to' }, 'New path'), input,
    el('div', { class: 'row' }, el('button', { type: 'submit', class: 'primary' }, 'Rename')), err);
    body.append(form);
    setTimeout(() => input.focus(), 0);
  });
}

async function remove(f) {
  try {
    await files.remove(f.path);
    state.entries.delete(f.path);
    drawRows();
    toast(`${nameOf(f.path)} moved to the trash`);
  } catch (e) {
    toast(`Delete failed: ${errorText(e)}`, 'error');
  }
}

function share(f) {
  openDialog(`Share ${nameOf(f.path)}`, (body) => {
    const expiry = el('select', { id: 'share-expiry' },
      el('option', { value: '1h' }, '1 hour'), el('option', { value: '1d' }, '1 day'),
      el('option', { value: '7d' }, '7 days'));
    const out = el('input', { id: 'share-link', type: 'text', readonly: true, 'aria-label': 'Share link', hidden: true });
    const err = el('p', { class: 'error', role: 'alert' });
    const note = el('p', { class: 'hint', role: 'status' });
    const create = el('button', { type: 'button', class: 'primary', onclick: async () => {
      try {
        const r = await files.share(f.path, expiry.value);
        const url = new URL(r.link, location.href).href;
        out.value = url;
        out.hidden = false;
        try {
          await navigator.clipboard.writeText(url);
          note.textContent = `Copied. The link works without a token until ${formatTime(r.expires_at)}.`;
        } catch (_) {
          out.select();
          note.textContent = `The link works until ${formatTime(r.expires_at)}; copy it from the field.`;
        }
      } catch (e) {
        err.textContent = errorText(e);
      }
    } }, 'Create link');
    body.append(el('div', { class: 'stack' }, el('label', { for: 'share-expiry' }, 'Expires in'), expiry,
      el('div', { class: 'row' }, create), out, note, err));
  });
}

function versions(f) {
  openDialog(`Versions of ${nameOf(f.path)}`, async (body) => {
    const status = el('p', {}, 'Loading…');
    body.append(status);
    let page;
    try {
      page = await files.versions(f.id);
    } catch (e) {
      status.textContent = errorText(e);
      return;
    }
    status.remove();
    const tbody = el('tbody');
    for (const v of page.versions) {
      tbody.append(el('tr', { dataset: { version: v.version } },
        el('td', {}, `v${v.version}${v.current ? ' (current)' : ''}`),
        el('td', {}, formatSize(v.size)),
        el('td', {}, formatTime(v.modified_at)),
        el('td', { class: 'actions' },
          el('a', { class: 'button', href: `${contentUrl(f.id)}/versions/${v.version}`, download: nameOf(f.path) }, 'Download'),
          v.current || !/write|admin/.test(state.me.scopes) ? null : el('button', { type: 'button', onclick: async () => {
            try {
              await files.restoreVersion(f.id, v.version);
              closeDialog();
              toast(`Version ${v.version} restored as the current version`);
            } catch (e) {
              toast(`Restore failed: ${errorText(e)}`, 'error');
            }
          } }, 'Restore'))));
    }
    body.append(el('table', { class: 'listing compact' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Version'), el('th', {}, 'Size'), el('th', {}, 'Modified'), el('th', {}, el('span', { class: 'sr-only' }, 'Actions')))),
      tbody));
  });
}

function details(f) {
  openDialog(`Details of ${nameOf(f.path)}`, async (body) => {
    let meta = f;
    try { meta = await files.meta(f.id); } catch (_) { /* show what the listing has */ }
    const row = (k, v) => [el('dt', {}, k), el('dd', {}, el('code', {}, String(v ?? '')))];
    body.append(el('dl', { class: 'details' },
      row('Path', meta.path), row('ID', meta.id), row('SHA-256', meta.sha256),
      row('Content type', meta.content_type), row('Version', meta.version),
      row('Size', `${formatSize(meta.size)} (${meta.size} bytes)`),
      row('Created', formatTime(meta.created_at)), row('Modified', formatTime(meta.modified_at))));
  });
}

// ---- trash ----

async function showTrash(more = false) {
  if (state.feed) state.feed.stop();
  state.feed = null;
  $('live').textContent = '';
  const tbody = $('trash-rows');
  if (!more) {
    clear(tbody);
    state.trashCursor = null;
  }
  let page;
  try {
    page = await trash.list(state.me.prefix || '', state.trashCursor);
  } catch (e) {
    if (e.status !== 401) toast(`Trash listing failed: ${errorText(e)}`, 'error');
    return;
  }
  const writable = /write|admin/.test(state.me.scopes);
  for (const t of page.entries) {
    const tr = el('tr', { dataset: { path: t.path, trashId: t.trash_id } },
      el('td', { class: 'name', 'data-label': 'Path' }, t.path),
      el('td', { 'data-label': 'Size' }, formatSize(t.size)),
      el('td', { 'data-label': 'Deleted' }, formatTime(t.deleted_at)),
      el('td', { 'data-label': 'Expires' }, formatTime(t.expires_at)),
      el('td', { class: 'actions' }, writable ? el('div', { class: 'action-group', role: 'group', 'aria-label': `Actions for ${t.path}` },
        el('button', { type: 'button', onclick: async () => {
          try {
            await trash.restore(t.trash_id);
            tr.remove();
            toast(`${t.path} restored`);
          } catch (e) {
            toast(`Restore failed: ${errorText(e)}`, 'error');
          }
        } }, 'Restore'),
        el('button', { type: 'button', class: 'danger', onclick: () => purge(t, tr) }, 'Delete forever')) : null));
    tbody.append(tr);
  }
  state.trashCursor = page.next_cursor || null;
  $('trash-more').hidden = !state.trashCursor;
  $('trash-empty').hidden = tbody.children.length > 0;
}

function purge(t, tr) {
  openDialog(`Delete ${nameOf(t.path)} forever?`, (body) => {
    body.append(el('p', {}, `${t.path} and its versions will be gone for good.`),
      el('div', { class: 'row' },
        el('button', { type: 'button', class: 'danger', onclick: async () => {
          try {
            await trash.purge(t.trash_id);
            tr.remove();
            closeDialog();
            toast(`${t.path} deleted forever`);
            $('trash-empty').hidden = $('trash-rows').children.length > 0;
          } catch (e) {
            toast(`Delete failed: ${errorText(e)}`, 'error');
          }
        } }, 'Delete forever'),
        el('button', { type: 'button', onclick: closeDialog }, 'Cancel')));
  });
}

// ---- uploads ----

function upload(list) {
  enqueue(list.map(({ file, rel }) => ({ file, path: state.prefix + rel })));
}

function wireDrop() {
  const overlay = $('drop-overlay');
  let depth = 0;
  const active = () => state.me && !$('files').hidden;
  document.addEventListener('dragenter', (e) => {
    if (!active()) return;
    e.preventDefault();
    depth += 1;
    overlay.hidden = false;
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener('dragover', (e) => { if (active()) e.preventDefault(); });
  document.addEventListener('drop', async (e) => {
    depth = 0;
    overlay.hidden = true;
    if (!active()) return;
    e.preventDefault();
    try {
      upload(await droppedFiles(e.dataTransfer));
    } catch (x) {
      toast(`Could not read the dropped files: ${x.message}`, 'error');
    }
  });
}

// ---- wiring ----

function wireStatic() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('dialog-close').addEventListener('click', closeDialog);
  $('dialog').addEventListener('close', () => clear($('dialog-body')));
  $('upload').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (e) => {
    upload(Array.from(e.target.files, (file) => ({ file, rel: file.name })));
    e.target.value = '';
  });
  $('uploads-clear').addEventListener('click', clearFinished);
  for (const b of document.querySelectorAll('#listing th button[data-sort]')) {
    b.addEventListener('click', () => setSort(b.dataset.sort));
  }
  $('prev').addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    loadPage();
  });
  $('next').addEventListener('click', () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    loadPage();
  });
  let filterTimer = null;
  $('filter').addEventListener('input', (e) => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      state.filter = e.target.value.replace(/\//g, '');
      state.cursors = [null];
      loadPage();
    }, 200);
  });
  for (const [id, view] of [['view-files', 'files'], ['view-trash', 'trash']]) {
    $(id).addEventListener('click', (e) => {
      e.preventDefault();
      go(view, view === 'files' ? state.prefix : '');
    });
  }
  $('trash-more').addEventListener('click', () => showTrash(true));
  window.addEventListener('popstate', route);
  window.addEventListener('vaultfs:unauthorized', () => {
    if (state.me && state.me.auth_required) showSignIn('Your session ended (the token was revoked or expired).');
  });
  onUploaded((meta, path) => {
    if (meta && meta.path) applyEvent({ kind: 'updated', ...meta, at: meta.modified_at, path });
  });
  wireDrop();
}

boot();
