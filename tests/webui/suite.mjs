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
