// Previews. Nothing a user uploaded ever runs here: raster images, audio and video load from
// the content URL with ?inline=1 (served inline only for those passive types, always with
// nosniff and a sandbox CSP); PDFs render from a blob in a frame; everything else, HTML and
// SVG included, is fetched as bytes and shown as text (the first MiB, then "Load more").

import { contentUrl } from './api.js';
import { el, formatSize } from './dom.js';

const TEXT_CHUNK = 1024 * 1024;
const PDF_LIMIT = 64 * 1024 * 1024;
const RASTER = /\.(png|jpe?g|gif|webp|avif|bmp|ico)$/i;
const VIDEO = /\.(mp4|webm|ogv|mov|m4v)$/i;
const AUDIO = /\.(mp3|ogg|oga|wav|flac|m4a|opus)$/i;

export function kindOf(entry) {
  const type = (entry.content_type || '').toLowerCase();
  const name = entry.path.toLowerCase();
  // SVG is script-capable: text, whatever its type says.
  if (type.includes('svg') || name.endsWith('.svg')) return 'text';
  if (type.startsWith('image/') || RASTER.test(name)) return 'image';
  if (type.startsWith('video/') || VIDEO.test(name)) return 'video';
  if (type.startsWith('audio/') || AUDIO.test(name)) return 'audio';
  if (type === 'application/pdf' || name.endsWith('.pdf')) return 'pdf';
  return 'text';
}

export function preview(entry, body) {
  const inline = `${contentUrl(entry.id)}?inline=1`;
  const name = entry.path.split('/').pop();
  const kind = kindOf(entry);
  if (kind === 'image') {
    body.append(el('img', { class: 'preview-image', src: inline, alt: name }));
  } else if (kind === 'video') {
    body.append(el('video', { class: 'preview-media', src: inline, controls: true, preload: 'metadata' }));
  } else if (kind === 'audio') {
    body.append(el('audio', { class: 'preview-media', src: inline, controls: true, preload: 'metadata' }));
  } else if (kind === 'pdf') {
    pdf(entry, body);
  } else {
    text(entry, body);
  }
}

async function pdf(entry, body) {
  if (entry.size > PDF_LIMIT) {
    body.append(el('p', {}, `This PDF is ${formatSize(entry.size)}: download it to read it.`));
    return;
  }
  const status = el('p', {}, 'Loading…');
  body.append(status);
  const res = await fetch(contentUrl(entry.id), { credentials: 'same-origin' });
  if (!res.ok) {
    status.textContent = `Could not load the PDF (HTTP ${res.status}).`;
    return;
  }
  const blob = new Blob([await res.arrayBuffer()], { type: 'application/pdf' });
  status.remove();
  body.append(el('iframe', { class: 'preview-pdf', src: URL.createObjectURL(blob), title: `PDF ${entry.path}` }));
}

function text(entry, body) {
  const pre = el('pre', { class: 'preview-text', tabindex: 0, 'aria-label': `Content of ${entry.path}` });
  const info = el('p', { class: 'preview-info' });
  const more = el('button', { type: 'button', hidden: true }, 'Load more');
  const decoder = new TextDecoder('utf-8');
  let offset = 0;
  async function load() {
    more.disabled = true;
    const end = Math.min(offset + TEXT_CHUNK, entry.size) - 1;
    if (entry.size === 0) {
      info.textContent = 'Empty file.';
      return;
    }
    const res = await fetch(contentUrl(entry.id), {
      headers: { Range: `bytes=${offset}-${end}` },
      credentials: 'same-origin',
    });
    if (!res.ok) {
      info.textContent = `Could not load (HTTP ${res.status}).`;
      return;
    }
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (offset === 0 && bytes.subarray(0, 8000).includes(0)) {
      info.textContent = 'Binary file: no text preview. Download it instead.';
      return;
    }
    offset += bytes.length;
    const done = offset >= entry.size;
    pre.append(document.createTextNode(decoder.decode(bytes, { stream: !done })));
    info.textContent = done
      ? `${formatSize(entry.size)}, shown in full.`
      : `Showing ${formatSize(offset)} of ${formatSize(entry.size)}.`;
    more.hidden = done;
    more.disabled = false;
  }
  more.addEventListener('click', load);
  body.append(info, pre, more);
  load();
}
