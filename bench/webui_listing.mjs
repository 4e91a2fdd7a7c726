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
await browser.close();
times.sort((a, b) => a - b);
console.log(`page: ${size.files} files, ${size.body} bytes of bodies, ${size.transfer} bytes transferred (headers included), uncompressed`);
console.log(`first listing of ${size.rows} rows (a page of 200) of the folder: median ${times[Math.floor(times.length / 2)].toFixed(0)} ms, min ${times[0].toFixed(0)} ms, max ${times[times.length - 1].toFixed(0)} ms over ${times.length} cold loads`);
