// DOM helpers. User data (names, paths, file content) only ever becomes text nodes or
// attribute values: nothing here parses HTML.

export const $ = (id) => document.getElementById(id);

// el('button', {type: 'button', onclick: f}, 'Label', child, ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

export function formatSize(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

let toastTimer = null;
export function toast(message, kind = 'info') {
  const t = $('toast');
  t.textContent = message;
  t.dataset.kind = kind;
  t.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove('shown'), 5000);
}

// The one modal: a title (text) and a body built by `build(body)`.
export function openDialog(title, build) {
  const dlg = $('dialog');
  $('dialog-title').textContent = title;
  const body = $('dialog-body');
  clear(body);
  build(body);
  if (!dlg.open) dlg.showModal();
  return dlg;
}

export function closeDialog() {
  const dlg = $('dialog');
  if (dlg.open) dlg.close();
  clear($('dialog-body'));
}
