// The upload queue: small files in one PUT (with their SHA-256, which the server verifies),
// large ones through the tus endpoint in chunks, resumable after a failure from the offset
// the server reports. Each upload shows progress and can be cancelled or retried; a total bar
// covers the batch.

import { encodePath, writeHeaders } from './api.js';
import { $, el, clear, formatSize } from './dom.js';

export const TUS_THRESHOLD = 8 * 1024 * 1024;
const TUS_CHUNK = 4 * 1024 * 1024;
const PARALLEL = 3;

const items = [];
let onDone = () => {};

export function onUploaded(f) {
  onDone = f;
}

function b64(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

async function sha256Hex(file) {
  if (!(window.crypto && crypto.subtle)) return null;
  const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// One XHR (fetch has no upload progress); resolves with the XHR once it completed.
function send(item, method, url, headers, body, onProgress) {
  return new Promise((resolve, reject) => {
    // Cancelled between two requests (while hashing, creating or asking for the offset).
    if (item.cancelled) {
      reject(new Error('cancelled'));
      return;
    }
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open(method, url);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new Error('network error'));
    xhr.onabort = () => reject(new Error('cancelled'));
    xhr.send(body);
  });
}

function errorOf(xhr) {
  try {
    const e = JSON.parse(xhr.responseText).error;
    return `${e.code}: ${e.message}`;
  } catch (_) {
    return `HTTP ${xhr.status}`;
  }
}

async function plainUpload(item) {
  const headers = writeHeaders({ 'Content-Type': item.file.type || 'application/octet-stream' });
  const sum = await sha256Hex(item.file);
  if (sum) headers['X-Checksum-Sha256'] = sum;
  const xhr = await send(item, 'PUT', `/api/v1/fs/${encodePath(item.path)}`, headers, item.file,
    (n) => progress(item, n));
  if (xhr.status !== 200 && xhr.status !== 201) throw new Error(errorOf(xhr));
  return JSON.parse(xhr.responseText);
}

async function tusUpload(item) {
  const tus = { 'Tus-Resumable': '1.0.0' };
  if (!item.tusUrl) {
    let meta = `path ${b64(item.path)}`;
    if (item.file.type) meta += `,content_type ${b64(item.file.type)}`;
    const res = await fetch('/api/v1/tus/', {
      method: 'POST',
      headers: writeHeaders({ ...tus, 'Upload-Length': String(item.file.size), 'Upload-Metadata': meta }),
      credentials: 'same-origin',
    });
    if (res.status !== 201) {
      let text = `HTTP ${res.status}`;
      try { const e = (await res.json()).error; text = `${e.code}: ${e.message}`; } catch (_) { /* keep */ }
      throw new Error(text);
    }
    item.tusUrl = new URL(res.headers.get('Location'), location.href).pathname;
  }
  // Where the server is (after a failure or a retry, it may have more than we sent).
  const head = await fetch(item.tusUrl, { method: 'HEAD', headers: writeHeaders(tus), credentials: 'same-origin' });
  if (!head.ok) {
    item.tusUrl = null;
    throw new Error(`the resumable upload is gone (HTTP ${head.status}); retry starts over`);
  }
  let offset = Number(head.headers.get('Upload-Offset') || '0');
  while (offset < item.file.size) {
    const end = Math.min(offset + TUS_CHUNK, item.file.size);
    const base = offset;
    const xhr = await send(item, 'PATCH', item.tusUrl,
      writeHeaders({ ...tus, 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset) }),
      item.file.slice(offset, end), (n) => progress(item, base + n));
    if (xhr.status !== 204) throw new Error(errorOf(xhr));
    offset = Number(xhr.getResponseHeader('Upload-Offset') || end);
    progress(item, offset);
  }
  const stat = await fetch(`/api/v1/stat?path=${encodeURIComponent(item.path)}`, { credentials: 'same-origin' });
  return stat.ok ? stat.json() : null;
}

function progress(item, loaded) {
  item.loaded = Math.min(loaded, item.file.size);
  render();
}

async function run(item) {
  item.state = 'uploading';
  item.error = '';
  render();
  try {
    const meta = item.file.size >= TUS_THRESHOLD ? await tusUpload(item) : await plainUpload(item);
    item.state = 'done';
    item.loaded = item.file.size;
    onDone(meta, item.path);
  } catch (e) {
    item.state = item.cancelled ? 'cancelled' : 'failed';
    item.error = item.cancelled ? '' : e.message;
    if (item.cancelled && item.tusUrl) {
      fetch(item.tusUrl, { method: 'DELETE', headers: writeHeaders({ 'Tus-Resumable': '1.0.0' }), credentials: 'same-origin' })
        .catch(() => {});
      item.tusUrl = null;
    }
  }
  item.xhr = null;
  render();
  pump();
}

function pump() {
  let running = items.filter((i) => i.state === 'uploading').length;
  for (const item of items) {
    if (running >= PARALLEL) break;
    if (item.state === 'queued') {
      running += 1;
      run(item);
    }
  }
}

// files: [{file: File, path: 'dir/name'}]
export function enqueue(files) {
  for (const { file, path } of files) {
    items.push({ file, path, state: 'queued', loaded: 0, error: '', xhr: null, tusUrl: null, cancelled: false });
  }
  render();
  pump();
}

function cancel(item) {
  item.cancelled = true;
  if (item.xhr) item.xhr.abort();
  else if (item.state === 'queued') item.state = 'cancelled';
  render();
}

function retry(item) {
  item.cancelled = false;
  item.state = 'queued';
  render();
  pump();
}

export function clearFinished() {
  for (let i = items.length - 1; i >= 0; i -= 1) {
    if (items[i].state === 'done' || items[i].state === 'cancelled') items.splice(i, 1);
  }
  render();
}

let scheduled = false;
function render() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    draw();
  });
}

function draw() {
  const box = $('uploads');
  box.hidden = items.length === 0;
  const list = $('upload-list');
  clear(list);
  let total = 0;
  let loaded = 0;
  let done = 0;
  let failed = 0;
  for (const item of items) {
    if (item.state !== 'cancelled') {
      total += item.file.size;
      loaded += item.loaded;
    }
    if (item.state === 'done') done += 1;
    if (item.state === 'failed') failed += 1;
    const label = item.state === 'failed' ? `failed: ${item.error}` : item.state;
    list.append(el('li', { class: `upload ${item.state}`, dataset: { path: item.path } },
      el('span', { class: 'upload-name' }, item.path),
      el('progress', { max: item.file.size || 1, value: item.file.size ? item.loaded : (item.state === 'done' ? 1 : 0),
        'aria-label': `Progress of ${item.path}` }),
      el('span', { class: 'upload-state' }, `${formatSize(item.loaded)} / ${formatSize(item.file.size)} ${label}`),
      (item.state === 'uploading' || item.state === 'queued')
        ? el('button', { type: 'button', onclick: () => cancel(item), 'aria-label': `Cancel ${item.path}` }, 'Cancel') : null,
      (item.state === 'failed' || item.state === 'cancelled')
        ? el('button', { type: 'button', onclick: () => retry(item), 'aria-label': `Retry ${item.path}` }, 'Retry') : null));
  }
  const bar = $('total-bar');
  bar.max = total || 1;
  bar.value = total ? loaded : 0;
  $('total-text').textContent = `${done} of ${items.length} uploaded${failed ? `, ${failed} failed` : ''} (${formatSize(loaded)} of ${formatSize(total)})`;
}

// Files and folders dropped on the page, with their paths relative to the drop.
export async function droppedFiles(dataTransfer) {
  const entries = [];
  for (const item of Array.from(dataTransfer.items || [])) {
    if (item.kind !== 'file') continue;
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) entries.push(entry);
    else if (item.getAsFile()) entries.push({ plainFile: item.getAsFile() });
  }
  if (entries.length === 0) {
    return Array.from(dataTransfer.files || [], (file) => ({ file, rel: file.name }));
  }
  const out = [];
  async function walk(entry) {
    if (entry.plainFile) {
      out.push({ file: entry.plainFile, rel: entry.plainFile.name });
    } else if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ file, rel: entry.fullPath.replace(/^\/+/, '') });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      // readEntries answers in batches until an empty one.
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child);
      }
    }
  }
  for (const e of entries) await walk(e);
  return out;
}
