// bench/webui.sh's browser half: cold loads of /?prefix=big/ in fresh contexts.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.env.VAULTFS_PLAYWRIGHT, 'node_modules', 'x.js'));
const { chromium } = require('playwright-core');
const base = process.env.VAULTFS_URL;
const runs = Number(process.env.VAULTFS_RUNS || '5');

const browser = await chromium.launch({ executablePath: process.env.VAULTFS_CHROMIUM || '/usr/bin/chromium',
  headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
const times = [];
let size = null;
for (let i = 0; i < runs; i += 1) {
  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const page = await ctx.newPage();
  await page.goto(`${base}/?prefix=big/`);
  await page.locator('#rows tr.file').first().waitFor({ timeout: 30000 });
  // performance.now() counts from the navigation's start.
  const t = await page.evaluate(() => performance.now());
  times.push(t);
  if (!size) {
    size = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource').filter((r) => r.name.includes('/ui/'));
      return { transfer: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
        body: nav.encodedBodySize + res.reduce((n, r) => n + r.encodedBodySize, 0), files: res.length + 1,
        rows: document.querySelectorAll('#rows tr').length };
    });
  }
  await ctx.close();
}
// Sorted by size, biggest first, in the page: from the click on the column header to the
// redrawn first page (the server sorts; one click ascending, the second descending).
const sortTimes = [];
{
  const ctx = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const page = await ctx.newPage();
  await page.goto(`${base}/?prefix=big/`);
  await page.locator('#rows tr.file').first().waitFor({ timeout: 30000 });
  const header = page.locator('#listing th button[data-sort="size"]');
  const sortState = () => page.locator('#listing th[data-col="size"]').getAttribute('aria-sort');
  for (let i = 0; i < runs; i += 1) {
    for (const want of ['ascending', 'descending']) {
      const t0 = Date.now();
      await header.click();
      await page.waitForFunction((w) => document.querySelector('#listing th[data-col="size"]').getAttribute('aria-sort') === w, want);
      if (want === 'descending') sortTimes.push(Date.now() - t0);
    }
    // Back to name order for the next round.
    await page.locator('#listing th button[data-sort="name"]').click();
    await page.waitForFunction(() => document.querySelector('#listing th[data-col="name"]').getAttribute('aria-sort') === 'ascending');
    check(await sortState() === 'none');
  }
  await ctx.close();
}
function check(c) { if (!c) throw new Error('unexpected sort state'); }
await browser.close();

// The API alone: first and next page sorted by size (descending), and a rare substring
// filter (which reads the whole folder), median of `runs`.
async function timed(url) {
  const t = [];
  let body = null;
  for (let i = 0; i < runs; i += 1) {
    const t0 = performance.now();
    const r = await fetch(base + url);
    body = await r.json();
    t.push(performance.now() - t0);
  }
  t.sort((a, b) => a - b);
  return { ms: t[Math.floor(t.length / 2)], body };
}
const q = '/api/v1/list?prefix=big/&delimiter=/&limit=200';
const first = await timed(`${q}&sort=size&order=desc`);
const next = await timed(`${q}&sort=size&order=desc&cursor=${first.body.next_cursor}`);
const plain = await timed(q);
const rare = await timed(`${q}&filter=${encodeURIComponent('f009999')}`);
console.log(`API, 200 rows: plain first page ${plain.ms.toFixed(1)} ms; sort=size desc first page ${first.ms.toFixed(1)} ms, next page ${next.ms.toFixed(1)} ms; filter (1 match, whole folder read) ${rare.ms.toFixed(1)} ms, ${rare.body.entries.length} entries; medians of ${runs}`);
times.sort((a, b) => a - b);
console.log(`page: ${size.files} files, ${size.body} bytes of bodies, ${size.transfer} bytes transferred (headers included), uncompressed`);
console.log(`first listing of ${size.rows} rows (a page of 200) of the folder: median ${times[Math.floor(times.length / 2)].toFixed(0)} ms, min ${times[0].toFixed(0)} ms, max ${times[times.length - 1].toFixed(0)} ms over ${times.length} cold loads`);
sortTimes.sort((a, b) => a - b);
console.log(`sorted by size (descending) in the page, click to redrawn page of 200: median ${sortTimes[Math.floor(sortTimes.length / 2)].toFixed(0)} ms over ${sortTimes.length}`);
