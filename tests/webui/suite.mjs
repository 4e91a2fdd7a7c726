// The web UI in a real browser: Debian's chromium driven headless by playwright-core (never a
// downloaded browser), against a real VaultFS server that tests/webui.rs started.
//
// Environment: VAULTFS_URL, VAULTFS_ADMIN_TOKEN (unprefixed admin), VAULTFS_CHROMIUM (the
// browser's executable), VAULTFS_PLAYWRIGHT (a directory whose node_modules holds
// playwright-core), VAULTFS_ARTIFACTS (screenshots go there), VAULTFS_DOCS_SCREENSHOT
// (optional: a copy of the desktop screenshot for the README).
//
// Prints one line per step and `WEBUI OK` at the end; any failure exits 1.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const require = createRequire(join(process.env.VAULTFS_PLAYWRIGHT, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');

const BASE = process.env.VAULTFS_URL;
const ADMIN = process.env.VAULTFS_ADMIN_TOKEN;
const ART = process.env.VAULTFS_ARTIFACTS;
mkdirSync(ART, { recursive: true });

const failures = [];
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
function step(name) {
  console.log(`-- ${name}`);
}
const sha = (buf) => createHash('sha256').update(buf).digest('hex');
const enc = (p) => p.split('/').map(encodeURIComponent).join('/');

async function api(method, path, { token = ADMIN, json, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    h['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  return fetch(BASE + path, { method, headers: h, body });
}
async function content(path) {
  const r = await api('GET', `/api/v1/fs/${enc(path)}`);
  check(r.status === 200, `GET ${path}: ${r.status}`);
  return Buffer.from(await r.arrayBuffer());
}
async function token(scope, prefix = '') {
  const r = await api('POST', '/api/v1/admin/tokens', { json: { scopes: scope, label: 'webui', prefix } });
  check(r.status === 201 || r.status === 200, `token create ${r.status}`);
  return r.json();
}
function curl(...args) {
  return execFileSync('curl', ['-sS', '-H', `Authorization: Bearer ${ADMIN}`, ...args], { encoding: 'utf8' });
}

// Every page of the suite: dialogs fail the test; console errors and main-frame navigations
// are recorded.
function watch(page, label) {
  const w = { errors: [], navigations: 0, label };
  page.on('dialog', async (d) => {
    failures.push(`${label}: a dialog opened (${d.type()}: ${d.message()})`);
    await d.dismiss().catch(() => {});
  });
  page.on('console', (m) => { if (m.type() === 'error') w.errors.push(m.text()); });
  page.on('pageerror', (e) => w.errors.push(`pageerror: ${e.message}`));
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) w.navigations += 1; });
  return w;
}

async function signIn(page, tok) {
  await page.getByLabel('Token').fill(tok);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

const row = (page, path) => page.locator(`#rows tr[data-path="${path.replace(/"/g, '\\"')}"]`);
const rowButton = (page, path, name) => row(page, path).getByRole('button', { name, exact: true });

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.VAULTFS_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  try {
    await run(browser);
  } finally {
    await browser.close();
  }
}

async function run(browser) {
  const rw = await token('read,write');
  const doomed = await token('read,write');
  check((await api('DELETE', `/api/v1/admin/tokens/${doomed.id}`)).status === 204, 'revoke');

  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 }, acceptDownloads: true });
  const page = await ctx.newPage();
  const w = watch(page, 'desktop');

  step('the page: headers, ETag, size');
  const res = await page.goto(`${BASE}/?prefix=web/`);
  const h = res.headers();
  check(/frame-ancestors 'none'/.test(h['content-security-policy']) && !/unsafe-inline/.test(h['content-security-policy']), `CSP ${h['content-security-policy']}`);
  check(h['x-content-type-options'] === 'nosniff', 'nosniff');
  check(h['referrer-policy'] === 'no-referrer', 'referrer-policy');
  check(/^"[0-9a-f]{64}"$/.test(h.etag), `etag ${h.etag}`);
  const again = await fetch(`${BASE}/`, { headers: { 'If-None-Match': h.etag } });
  check(again.status === 304, `revalidation: ${again.status}`);

  step('sign-in refused with a revoked token');
  await signIn(page, doomed.token);
  await page.getByText('That token is not valid').waitFor({ timeout: 5000 });
  check(await page.locator('#files').isHidden(), 'no listing after a refused sign-in');
  // The refused sign-in's 401 is logged by the browser as a failed resource: expected here.
  w.errors.length = 0;

  step('sign-in with a valid token: the folder of ?prefix= is shown');
  await signIn(page, rw.token);
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
  await page.locator('#crumbs a[aria-current="page"]', { hasText: 'web' }).waitFor();
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === 'vaultfs_session');
  check(session && session.httpOnly && session.sameSite === 'Strict', `cookie ${JSON.stringify(session)}`);
  check(!(await page.evaluate(() => JSON.stringify(localStorage) + document.cookie)).includes('vfs_'), 'no token in storage');
  await page.locator('#live', { hasText: 'live' }).waitFor({ timeout: 5000 });

  step('CSRF: cookie writes need the session header and a same origin');
  const cookie = `vaultfs_session=${session.value}`;
  const csrf = (await (await fetch(`${BASE}/api/v1/session`, { headers: { Cookie: cookie } })).json()).csrf_token;
  check(typeof csrf === 'string' && csrf.length >= 32, 'csrf token');
  const put = (headers) => fetch(`${BASE}/api/v1/fs/web/csrf.txt`, { method: 'PUT', body: 'x', headers: { Cookie: cookie, ...headers } });
  check((await put({ Origin: BASE })).status === 403, 'no CSRF header: 403');
  check((await put({ 'X-CSRF-Token': csrf })).status === 403, 'no Origin: 403');
  check((await put({ 'X-CSRF-Token': csrf, Origin: 'http://evil.example' })).status === 403, 'foreign Origin: 403');
  check((await put({ 'X-CSRF-Token': 'f'.repeat(64), Origin: BASE })).status === 403, 'wrong CSRF token: 403');
  check((await api('GET', '/api/v1/stat?path=web/csrf.txt')).status === 404, 'nothing written');

  step('three files through the Upload button (one large: tus), byte-exact');
  const three = [
    { name: 'a.txt', mimeType: 'text/plain', buffer: Buffer.from('alpha\n') },
    { name: 'b.bin', mimeType: 'application/octet-stream', buffer: randomBytes(20000) },
    { name: 'big.bin', mimeType: 'application/octet-stream', buffer: randomBytes(9 * 1024 * 1024 + 123) },
  ];
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.getByRole('button', { name: 'Upload', exact: true }).click()]);
  check(chooser.isMultiple(), 'the picker takes several files');
  await chooser.setFiles(three);
  for (const f of three) await row(page, `web/${f.name}`).waitFor({ timeout: 30000 });
  await page.locator('#total-text', { hasText: '3 of 3 uploaded' }).waitFor({ timeout: 30000 });
  for (const f of three) check(sha(await content(`web/${f.name}`)) === sha(f.buffer), `${f.name} byte-exact`);

  step('a folder through a synthetic drop (webkitGetAsEntry), byte-exact');
  const tree = {
    'site/index.txt': 'hello from the drop\n',
    'site/css/app.css': 'body { color: red }\n',
    'site/img/deep/x.bin': randomBytes(3000).toString('base64'),
  };
  await page.evaluate((files) => {
    const fileEntry = (path, text) => ({
      isFile: true, isDirectory: false, name: path.split('/').pop(), fullPath: `/${path}`,
      file: (ok) => ok(new File([text], path.split('/').pop(), { type: 'text/plain' })),
    });
    const dirEntry = (path, children) => ({
      isFile: false, isDirectory: true, name: path.split('/').pop(), fullPath: `/${path}`,
      createReader: () => {
        let done = false;
        return { readEntries: (ok) => { ok(done ? [] : children); done = true; } };
      },
    });
    // Build the tree of directory entries from the paths.
    const build = (dir) => {
      const kids = new Map();
      for (const [p, text] of Object.entries(files)) {
        if (!p.startsWith(`${dir}/`)) continue;
        const rest = p.slice(dir.length + 1);
        const first = rest.split('/')[0];
        if (rest.includes('/')) kids.set(first, dirEntry(`${dir}/${first}`, null));
        else kids.set(first, fileEntry(p, text));
      }
      return [...kids.values()].map((k) => (k.isDirectory ? dirEntry(k.fullPath.slice(1), build(k.fullPath.slice(1))) : k));
    };
    const root = dirEntry('site', build('site'));
    const dt = { items: [{ kind: 'file', webkitGetAsEntry: () => root, getAsFile: () => null }], files: [], types: ['Files'] };
    for (const type of ['dragenter', 'dragover', 'drop']) {
      const ev = new Event(type, { bubbles: true, cancelable: true });
      Object.defineProperty(ev, 'dataTransfer', { value: dt });
      document.querySelector('main').dispatchEvent(ev);
    }
  }, tree);
  await row(page, 'web/site/').waitFor({ timeout: 10000 });
  for (const [p, text] of Object.entries(tree)) {
    let got = null;
    for (let i = 0; i < 100 && !got; i += 1) {
      const r = await api('GET', `/api/v1/fs/${enc(`web/${p}`)}`);
      if (r.status === 200) got = Buffer.from(await r.arrayBuffer());
      else await new Promise((ok) => setTimeout(ok, 100));
    }
    check(got && got.equals(Buffer.from(text)), `dropped ${p} byte-exact`);
  }
  await row(page, 'web/site/').getByRole('link').click();
  await row(page, 'web/site/index.txt').waitFor();
  check(new URL(page.url()).searchParams.get('prefix') === 'web/site/', `URL follows: ${page.url()}`);
  await page.goBack();
  await row(page, 'web/a.txt').waitFor();

  step('curl upload appears within 1 s, curl delete removes it, no reload');
  const navs = w.navigations;
  const local = join(tmpdir(), `vaultfs-webui-${process.pid}.txt`);
  writeFileSync(local, 'from curl\n');
  curl('-o', '/dev/null', '-T', local, `${BASE}/api/v1/fs/web/curl.txt`);
  let t0 = Date.now();
  await row(page, 'web/curl.txt').waitFor({ timeout: 1000 });
  const appeared = Date.now() - t0;
  curl('-o', '/dev/null', '-X', 'DELETE', `${BASE}/api/v1/fs/web/curl.txt`);
  t0 = Date.now();
  await row(page, 'web/curl.txt').waitFor({ state: 'detached', timeout: 1000 });
  const removed = Date.now() - t0;
  check(w.navigations === navs, 'no reload');
  console.log(`   curl upload visible after ${appeared} ms, delete after ${removed} ms`);

  step('rename');
  await rowButton(page, 'web/a.txt', 'Rename').click();
  await page.locator('#dialog').getByLabel('New path').fill('web/renamed.txt');
  await page.locator('#dialog').getByRole('button', { name: 'Rename', exact: true }).click();
  await row(page, 'web/renamed.txt').waitFor();
  await row(page, 'web/a.txt').waitFor({ state: 'detached' });
  check((await content('web/renamed.txt')).toString() === 'alpha\n', 'renamed content');

  step('delete, then restore from the trash');
  await rowButton(page, 'web/renamed.txt', 'Delete').click();
  await row(page, 'web/renamed.txt').waitFor({ state: 'detached' });
  check((await api('GET', '/api/v1/stat?path=web/renamed.txt')).status === 404, 'deleted');
  await page.getByRole('link', { name: 'Trash' }).click();
  const trashRow = page.locator('#trash-rows tr[data-path="web/renamed.txt"]');
  await trashRow.waitFor();
  await trashRow.getByRole('button', { name: 'Restore', exact: true }).click();
  await trashRow.waitFor({ state: 'detached' });
  check((await content('web/renamed.txt')).toString() === 'alpha\n', 'restored from the trash');
  await page.getByRole('link', { name: 'Files' }).click();
  await row(page, 'web/renamed.txt').waitFor();

  step('delete forever from the trash');
  curl('-o', '/dev/null', '-X', 'DELETE', `${BASE}/api/v1/fs/web/big.bin`);
  await row(page, 'web/big.bin').waitFor({ state: 'detached', timeout: 2000 });
  await page.getByRole('link', { name: 'Trash' }).click();
  const bigTrash = page.locator('#trash-rows tr[data-path="web/big.bin"]');
  await bigTrash.getByRole('button', { name: 'Delete forever' }).click();
  await page.locator('#dialog').getByRole('button', { name: 'Delete forever' }).click();
  await bigTrash.waitFor({ state: 'detached' });
  const left = await (await api('GET', '/api/v1/trash?prefix=web/')).json();
  check(!left.entries.some((e) => e.path === 'web/big.bin'), 'purged');
  await page.getByRole('link', { name: 'Files' }).click();

  step('restore an old version');
  const v1 = three[1].buffer;
  const v2 = randomBytes(777);
  writeFileSync(local, v2);
  curl('-o', '/dev/null', '-T', local, `${BASE}/api/v1/fs/web/b.bin`);
  await row(page, 'web/b.bin').locator('td.version', { hasText: 'v2' }).waitFor({ timeout: 1000 });
  await rowButton(page, 'web/b.bin', 'Versions').click();
  const v1row = page.locator('#dialog tr[data-version="1"]');
  await v1row.getByRole('button', { name: 'Restore' }).click();
  await row(page, 'web/b.bin').locator('td.version', { hasText: 'v3' }).waitFor({ timeout: 2000 });
  check((await content('web/b.bin')).equals(v1), 'version 1 restored as the current content');

  step('share link downloads in a fresh context with no session');
  await rowButton(page, 'web/b.bin', 'Share').click();
  await page.locator('#dialog').getByLabel('Expires in').selectOption('1d');
  await page.locator('#dialog').getByRole('button', { name: 'Create link' }).click();
  // The link arrives with the answer to the request the click sent: wait for it.
  const linkField = page.locator('#dialog').getByLabel('Share link');
  let link = '';
  for (let i = 0; i < 100 && !link; i++) {
    link = await linkField.inputValue();
    if (!link) await page.waitForTimeout(50);
  }
  check(link.startsWith(`${BASE}/api/v1/shared/`), `link ${link}`);
  await page.getByRole('button', { name: 'Close' }).click();
  const fresh = await browser.newContext({ acceptDownloads: true });
  check((await fresh.cookies()).length === 0, 'fresh context has no session');
  const fp = await fresh.newPage();
  watch(fp, 'share');
  const [dl] = await Promise.all([fp.waitForEvent('download'), fp.goto(link).catch(() => {})]);
  check(readFileSync(await dl.path()).equals(v1), 'share link bytes');
  await fresh.close();

  step('HTML and SVG with script: previews show text, downloads do not run, no dialog');
  const html = '<!doctype html><script>alert("html")</script><img src=x onerror="alert(2)"><h1>hi</h1>\n';
  const svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert("svg")</script><circle r="5" onload="alert(3)"/></svg>\n';
  const [chooser2] = await Promise.all([page.waitForEvent('filechooser'), page.getByRole('button', { name: 'Upload', exact: true }).click()]);
  await chooser2.setFiles([
    { name: 'evil.html', mimeType: 'text/html', buffer: Buffer.from(html) },
    { name: 'evil.svg', mimeType: 'image/svg+xml', buffer: Buffer.from(svg) },
  ]);
  const navs2 = w.navigations;
  for (const [name, text] of [['evil.html', html], ['evil.svg', svg]]) {
    await row(page, `web/${name}`).waitFor({ timeout: 10000 });
    await rowButton(page, `web/${name}`, 'Preview').click();
    const pre = page.locator('#dialog pre');
    await pre.waitFor();
    await page.waitForFunction(() => document.querySelector('#dialog .preview-info')?.textContent.includes('in full'));
    check((await pre.textContent()) === text, `${name} shown as its text`);
    check((await page.locator('#dialog img, #dialog iframe, #dialog svg, #dialog object, #dialog embed').count()) === 0, `${name}: nothing rendered`);
    await page.getByRole('button', { name: 'Close' }).click();
    const [d] = await Promise.all([page.waitForEvent('download'), rowButton(page, `web/${name}`, 'Download').click()]);
    check(readFileSync(await d.path()).toString() === text, `${name} download bytes`);
    // The file name link downloads too.
    const [d2] = await Promise.all([page.waitForEvent('download'), row(page, `web/${name}`).getByRole('link', { name }).click()]);
    check(readFileSync(await d2.path()).toString() === text, `${name} link download bytes`);
  }
  await page.waitForTimeout(300);
  check(w.navigations === navs2, 'no navigation from previews or downloads');

  step('a name that looks like HTML is shown as text');
  const evilName = '<img src=x onerror=alert(1)>.txt';
  writeFileSync(local, 'tricky\n');
  curl('-o', '/dev/null', '-T', local, `${BASE}/api/v1/fs/web/${enc(evilName)}`);
  await row(page, `web/${evilName}`).waitFor({ timeout: 1000 });
  check((await row(page, `web/${evilName}`).getByRole('link').textContent()) === evilName, 'name as text');
  check((await page.locator('#rows img').count()) === 0, 'no img element in the listing');
  await rowButton(page, `web/${evilName}`, 'Preview').click();
  check((await page.locator('#dialog-title').textContent()) === evilName, 'title as text');
  await page.locator('#dialog pre', { hasText: 'tricky' }).waitFor();
  await page.getByRole('button', { name: 'Close' }).click();
  await rowButton(page, `web/${evilName}`, 'Details').click();
  await page.locator('#dialog dd', { hasText: sha(Buffer.from('tricky\n')) }).waitFor();
  await page.getByRole('button', { name: 'Close' }).click();

  step('keyboard: Tab reaches the row actions, Enter opens Details');
  await row(page, 'web/renamed.txt').getByRole('link').focus();
  for (let i = 0; i < 7; i += 1) await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.textContent) === 'Details', 'Tab order');
  await page.keyboard.press('Enter');
  await page.locator('#dialog dd', { hasText: 'web/renamed.txt' }).waitFor();
  await page.keyboard.press('Escape');

  // The steps below run on a second tab of the same session. Its console may log the
  // network errors the test provokes on purpose (an aborted upload); anything else fails.
  const ex = await ctx.newPage();
  const xw = watch(ex, 'extra');

  step('sort by size, descending, across pages (server-side), then a substring filter');
  const sizes = new Map();
  const needles = [];
  for (let i = 0; i < 250; i += 1) {
    const name = `many/${String(i).padStart(3, '0')}-${i % 50 === 7 ? 'Needle' : 'hay'}.bin`;
    if (name.includes('Needle')) needles.push(name);
    // Distinct sizes in an order unlike the names'.
    const size = ((i * 97) % 250) + 1;
    sizes.set(name, size);
  }
  const all = [...sizes];
  for (let i = 0; i < all.length; i += 10) {
    await Promise.all(all.slice(i, i + 10).map(async ([name, size]) => {
      const r = await fetch(`${BASE}/api/v1/fs/${enc(name)}`, { method: 'PUT', headers: { Authorization: `Bearer ${ADMIN}` }, body: Buffer.alloc(size, 7) });
      check(r.ok, `PUT ${name}: ${r.status}`);
      await r.arrayBuffer();
    }));
  }
  const bySizeDesc = [...sizes].sort((a, b) => b[1] - a[1]).map(([n]) => n);
  await ex.goto(`${BASE}/?prefix=many/`);
  await row(ex, 'many/000-hay.bin').waitFor();
  const firstRow = () => ex.evaluate(() => document.querySelector('#rows tr.file')?.dataset.path);
  const shownPaths = () => ex.evaluate(() => [...document.querySelectorAll('#rows tr.file')].map((t) => t.dataset.path));
  const sizeHeader = ex.locator('#listing th button[data-sort="size"]');
  await sizeHeader.click();
  await ex.waitForFunction(() => document.querySelector('#listing th[data-col="size"]')?.getAttribute('aria-sort') === 'ascending');
  await sizeHeader.click();
  await ex.waitForFunction((p) => document.querySelector('#rows tr.file')?.dataset.path === p, bySizeDesc[0]);
  check(await ex.locator('#listing th[data-col="size"]').getAttribute('aria-sort') === 'descending', 'aria-sort descending');
  const page1 = await shownPaths();
  check(page1.length === 200, `page 1 has 200 rows: ${page1.length}`);
  check(JSON.stringify(page1) === JSON.stringify(bySizeDesc.slice(0, 200)), 'page 1: the 200 biggest, biggest first');
  await ex.getByRole('button', { name: 'Next page' }).click();
  await ex.waitForFunction((p) => document.querySelector('#rows tr.file')?.dataset.path === p, bySizeDesc[200]);
  const page2 = await shownPaths();
  check(JSON.stringify(page2) === JSON.stringify(bySizeDesc.slice(200)), `page 2 continues the order (${page2.length} rows)`);
  check(sizes.get(page2[0]) < sizes.get(page1[199]), 'page 2 starts below page 1');
  check(await firstRow() === bySizeDesc[200], 'first row of page 2');
  await ex.getByLabel('Filter').fill('needle');
  await ex.waitForFunction((n) => document.querySelectorAll('#rows tr.file').length === n, needles.length);
  const filtered = await shownPaths();
  const needlesBySize = [...needles].sort((a, b) => sizes.get(b) - sizes.get(a));
  check(JSON.stringify(filtered) === JSON.stringify(needlesBySize), `substring filter, still by size: ${filtered}`);
  check(await ex.getByRole('button', { name: 'Previous page' }).isDisabled(), 'the filter starts at page 1');
  await ex.getByLabel('Filter').fill('');
  await ex.waitForFunction(() => document.querySelectorAll('#rows tr.file').length === 200);

  step('cancelling a large upload (tus) terminates its session and leaves nothing');
  await ex.goto(`${BASE}/?prefix=media/`);
  await ex.locator('#live', { hasText: 'live' }).waitFor({ timeout: 5000 });
  let tusUrl = null;
  let patching = false;
  ex.on('request', (r) => { if (r.method() === 'PATCH' && r.url().includes('/api/v1/tus/')) patching = true; });
  ex.on('response', (r) => {
    if (r.request().method() === 'POST' && r.url().endsWith('/api/v1/tus/') && r.status() === 201) tusUrl = new URL(r.headers().location, BASE).href;
  });
  // Hold each PATCH for a while, so the upload is still running when Cancel is clicked.
  await ex.route('**/api/v1/tus/**', async (route) => {
    if (route.request().method() === 'PATCH') await new Promise((r) => setTimeout(r, 1500));
    await route.continue().catch(() => {});
  });
  const [pick] = await Promise.all([ex.waitForEvent('filechooser'), ex.getByRole('button', { name: 'Upload', exact: true }).click()]);
  await pick.setFiles([{ name: 'cancel-me.bin', mimeType: 'application/octet-stream', buffer: randomBytes(12 * 1024 * 1024) }]);
  for (let i = 0; i < 100 && !(tusUrl && patching); i += 1) await ex.waitForTimeout(50);
  check(tusUrl && patching, 'a tus session was created and its first PATCH is on the way');
  await ex.getByRole('button', { name: 'Cancel media/cancel-me.bin' }).click();
  await ex.locator('#upload-list li[data-path="media/cancel-me.bin"].cancelled').waitFor({ timeout: 5000 });
  let gone = false;
  for (let i = 0; i < 100 && !gone; i += 1) {
    const h = await fetch(tusUrl, { method: 'HEAD', headers: { Authorization: `Bearer ${ADMIN}`, 'Tus-Resumable': '1.0.0' } });
    gone = h.status === 404 || h.status === 410;
    if (!gone) await ex.waitForTimeout(50);
  }
  check(gone, 'the tus session is terminated');
  await ex.unroute('**/api/v1/tus/**');
  check((await api('GET', '/api/v1/stat?path=media/cancel-me.bin')).status === 404, 'no file after cancel');
  check(await row(ex, 'media/cancel-me.bin').count() === 0, 'no row after cancel');

  step('a failed upload can be retried');
  let aborted = 0;
  await ex.route('**/api/v1/fs/media/retry-me.txt', async (route) => {
    if (route.request().method() === 'PUT' && aborted === 0) {
      aborted += 1;
      await route.abort('connectionreset');
    } else {
      await route.continue();
    }
  });
  const retryBody = Buffer.from('second time lucky\n');
  const [pick2] = await Promise.all([ex.waitForEvent('filechooser'), ex.getByRole('button', { name: 'Upload', exact: true }).click()]);
  await pick2.setFiles([{ name: 'retry-me.txt', mimeType: 'text/plain', buffer: retryBody }]);
  await ex.locator('#upload-list li[data-path="media/retry-me.txt"].failed').waitFor({ timeout: 5000 });
  check(await row(ex, 'media/retry-me.txt').count() === 0, 'no row for the failed upload');
  await ex.getByRole('button', { name: 'Retry media/retry-me.txt' }).click();
  await row(ex, 'media/retry-me.txt').waitFor({ timeout: 5000 });
  await ex.locator('#upload-list li[data-path="media/retry-me.txt"].done').waitFor();
  check(aborted === 1, 'the first attempt was the one aborted');
  check((await content('media/retry-me.txt')).equals(retryBody), 'retried upload bytes');
  await ex.unroute('**/api/v1/fs/media/retry-me.txt');

  step('PDF preview renders in a frame from a blob');
  const pdfBody = Buffer.from('%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n');
  const pdfPut = await fetch(`${BASE}/api/v1/fs/media/doc.pdf`, { method: 'PUT', headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/pdf' }, body: pdfBody });
  check(pdfPut.ok, `PUT doc.pdf ${pdfPut.status}`);
  await row(ex, 'media/doc.pdf').waitFor({ timeout: 2000 });
  await rowButton(ex, 'media/doc.pdf', 'Preview').click();
  const frame = ex.locator('#dialog iframe.preview-pdf');
  await frame.waitFor();
  check((await frame.getAttribute('src')).startsWith('blob:'), 'the PDF frame loads a blob, not the content URL');
  check(await frame.getAttribute('title') === 'PDF media/doc.pdf', 'the frame has an accessible name');
  await ex.getByRole('button', { name: 'Close' }).click();

  step('video preview seeks through Range requests');
  // A real WebM, recorded in the browser from a canvas (no video tools needed).
  const webm = Buffer.from(await ex.evaluate(async () => {
    // Noise at a high bit rate: a few MB of video.
    const c = document.createElement('canvas');
    c.width = 320;
    c.height = 240;
    const g = c.getContext('2d');
    const noise = g.createImageData(320, 240);
    const rec = new MediaRecorder(c.captureStream(25), { mimeType: 'video/webm', videoBitsPerSecond: 2000000 });
    const parts = [];
    rec.ondataavailable = (e) => parts.push(e.data);
    const stopped = new Promise((r) => { rec.onstop = r; });
    rec.start(100);
    const t0 = performance.now();
    while (performance.now() - t0 < 3000) {
      crypto.getRandomValues(noise.data.subarray(0, 65536));
      for (let i = 65536; i < noise.data.length; i += 65536) noise.data.copyWithin(i, (i * 7) % 65536, Math.min(i + 65536, noise.data.length));
      for (let i = 3; i < noise.data.length; i += 4) noise.data[i] = 255;
      g.putImageData(noise, 0, 0);
      await new Promise((r) => setTimeout(r, 40));
    }
    rec.stop();
    await stopped;
    return [...new Uint8Array(await new Blob(parts).arrayBuffer())];
  }));
  check(webm.length > 1000, `recorded ${webm.length} bytes of video`);
  const vidPut = await fetch(`${BASE}/api/v1/fs/media/clip.webm`, { method: 'PUT', headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'video/webm' }, body: webm });
  check(vidPut.ok, `PUT clip.webm ${vidPut.status}`);
  await row(ex, 'media/clip.webm').waitFor({ timeout: 2000 });
  const ranges = [];
  ex.on('request', (r) => {
    if (r.url().includes('/api/v1/files/') && r.url().includes('inline=1') && r.headers().range) ranges.push(r.headers().range);
  });
  const partials = [];
  ex.on('response', (r) => {
    if (r.url().includes('inline=1') && r.status() === 206) partials.push(r.headers()['content-range']);
  });
  await rowButton(ex, 'media/clip.webm', 'Preview').click();
  const video = ex.locator('#dialog video');
  await video.waitFor();
  await ex.waitForFunction(() => document.querySelector('#dialog video')?.readyState >= 1, null, { timeout: 10000 });
  const seeked = await ex.evaluate(() => new Promise((resolve) => {
    const v = document.querySelector('#dialog video');
    const t = setTimeout(() => resolve(false), 10000);
    v.addEventListener('seeked', () => { clearTimeout(t); resolve(true); }, { once: true });
    v.currentTime = Number.isFinite(v.duration) ? v.duration * 0.9 : 3.5;
  }));
  console.log(`   video: ${webm.length} bytes, seeked ${seeked}; Range requests: ${ranges.join(', ')}`);
  // MediaRecorder writes no cues, so the player reaches the seek target on its ranged
  // stream (`bytes=0-`, answered 206) rather than with a second range further in.
  check(seeked, 'the video seeked');
  check(ranges.length > 0, 'the video was fetched with Range');
  check(partials.length > 0, `the server answered 206 (${partials.join(', ')})`);
  await ex.getByRole('button', { name: 'Close' }).click();

  step('text preview: the first MiB, then "Load more"');
  const line = 'log line 0123456789 abcdefghijklmnopqrstuvwxyz\n';
  const bigText = Buffer.from(line.repeat(Math.ceil((1.5 * 1024 * 1024) / line.length)));
  const txtPut = await fetch(`${BASE}/api/v1/fs/media/big.log`, { method: 'PUT', headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'text/plain' }, body: bigText });
  check(txtPut.ok, `PUT big.log ${txtPut.status}`);
  await row(ex, 'media/big.log').waitFor({ timeout: 2000 });
  await rowButton(ex, 'media/big.log', 'Preview').click();
  await ex.locator('#dialog .preview-info', { hasText: 'Showing' }).waitFor();
  check((await ex.locator('#dialog pre').textContent()).length === 1024 * 1024, 'the first MiB');
  await ex.locator('#dialog').getByRole('button', { name: 'Load more' }).click();
  await ex.locator('#dialog .preview-info', { hasText: 'in full' }).waitFor();
  check((await ex.locator('#dialog pre').textContent()) === bigText.toString(), 'all of it after Load more');
  check(await ex.locator('#dialog').getByRole('button', { name: 'Load more' }).isHidden(), 'no Load more at the end');
  await ex.getByRole('button', { name: 'Close' }).click();
  const unexpected = xw.errors.filter((e) => !/Failed to load resource|net::ERR_/.test(e));
  check(unexpected.length === 0, `console errors on the second tab: ${unexpected.join(' | ')}`);
  await ex.close();

  step('screenshots: desktop and phone, no console errors, no horizontal scroll on the phone');
  await page.reload();
  await row(page, 'web/renamed.txt').waitFor();
  await page.locator('#live', { hasText: 'live' }).waitFor();
  const transfer = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource').filter((r) => r.name.includes('/ui/'));
    return { total: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
      decoded: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0), files: res.length + 1 };
  });
  console.log(`   page: ${transfer.files} files, ${transfer.decoded} bytes of content (reload transfer ${transfer.total} bytes, 304s included)`);
  check(transfer.decoded < 100 * 1024, 'page under 100 KiB');
  await page.screenshot({ path: join(ART, 'desktop.png') });
  if (process.env.VAULTFS_DOCS_SCREENSHOT) copyFileSync(join(ART, 'desktop.png'), process.env.VAULTFS_DOCS_SCREENSHOT);
  check(w.errors.length === 0, `console errors on the desktop: ${w.errors.join(' | ')}`);

  const phoneCtx = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const phone = await phoneCtx.newPage();
  const pw = watch(phone, 'phone');
  await phone.goto(`${BASE}/?prefix=web/`);
  await signIn(phone, rw.token);
  await row(phone, 'web/renamed.txt').waitFor();
  await phone.locator('#live', { hasText: 'live' }).waitFor();
  const scroll = await phone.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  check(scroll[0] <= scroll[1], `horizontal scroll on the phone: ${scroll}`);
  await phone.screenshot({ path: join(ART, 'phone.png'), fullPage: true });
  await rowButton(phone, 'web/renamed.txt', 'Versions').click();
  await phone.locator('#dialog tr[data-version="1"]').waitFor();
  const scroll2 = await phone.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  check(scroll2[0] <= scroll2[1], `horizontal scroll with a dialog open: ${scroll2}`);
  await phone.screenshot({ path: join(ART, 'phone-versions.png') });
  check(pw.errors.length === 0, `console errors on the phone: ${pw.errors.join(' | ')}`);
  await phoneCtx.close();

  step('sign out ends the session on the server');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Token').waitFor();
  check((await fetch(`${BASE}/api/v1/list?prefix=web/`, { headers: { Cookie: cookie } })).status === 401, 'old cookie refused after sign-out');

  step('revoking the token ends its session');
  const victim = await token('read', 'web/');
  await signIn(page, victim.token);
  await row(page, 'web/renamed.txt').waitFor();
  check(await page.getByRole('button', { name: 'Upload', exact: true }).isHidden(), 'a read token gets no Upload button');
  const vcookie = (await ctx.cookies()).find((c) => c.name === 'vaultfs_session').value;
  check((await fetch(`${BASE}/api/v1/list?prefix=web/`, { headers: { Cookie: `vaultfs_session=${vcookie}` } })).status === 200, 'session works');
  check((await api('DELETE', `/api/v1/admin/tokens/${victim.id}`)).status === 204, 'revoke victim');
  check((await fetch(`${BASE}/api/v1/list?prefix=web/`, { headers: { Cookie: `vaultfs_session=${vcookie}` } })).status === 401, 'session dead after revocation');
  await page.getByLabel('Token').waitFor({ timeout: 3000 }); // the feed closed with 4401
  await ctx.close();

  if (failures.length) throw new Error(failures.join('\n'));
}

main().then(() => {
  console.log('WEBUI OK');
}, (e) => {
  console.error(`WEBUI FAILED: ${e.stack || e}`);
  process.exit(1);
});
