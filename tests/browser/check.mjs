// Loads an expflow HTML report in Debian's chromium, headless, through playwright-core
// (which downloads no browser), and prints what it saw as one JSON object:
//   node check.mjs REPORT.html SCREENSHOT.png [CHROMIUM]
// Requests other than the report file itself, console errors and page errors are listed;
// the caller (tests/tests/report_browser.rs) asserts on them and on the DOM counts.

import { chromium } from 'playwright-core';
import { pathToFileURL } from 'node:url';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [report, shot, exe = '/usr/bin/chromium'] = process.argv.slice(2);
if (!report || !shot) {
  console.error('usage: node check.mjs REPORT.html SCREENSHOT.png [CHROMIUM]');
  process.exit(2);
}
const url = pathToFileURL(report).href;
const profile = mkdtempSync(join(tmpdir(), 'expflow-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: exe,
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const out = { url, requests: [], consoleErrors: [], pageErrors: [] };
const page = browser.pages()[0] || await browser.newPage();
page.on('request', (r) => { if (r.url() !== url && !r.url().startsWith('data:')) out.requests.push(r.url()); });
page.on('requestfailed', (r) => { if (r.url() !== url && !r.url().startsWith('data:')) out.requests.push('failed: ' + r.url()); });
page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') out.consoleErrors.push(m.type() + ': ' + m.text()); });
page.on('pageerror', (e) => out.pageErrors.push(String(e)));

const t0 = Date.now();
await page.goto(url, { waitUntil: 'load' });
await page.waitForSelector('html[data-ready="1"]', { timeout: 60000 });
out.loadToReadyMs = Date.now() - t0;
out.renderMs = Number(await page.getAttribute('html', 'data-render-ms'));
const count = (sel) => page.locator(sel).count();
out.nodes = Number(await page.getAttribute('#dag-view', 'data-nodes'));
out.dagNodes = await count('#dag-view .dag-node');
out.dagEdges = await count('#dag-view .dag-edge');
out.edgeNames = out.dagEdges <= 200 ? (await page.$$eval('#dag-view .dag-edge', (es) => es.map((e) => e.getAttribute('data-edge')))).sort() : [];
out.dagStates = await page.$$eval('#dag-view .dag-node', (gs) => [...new Set(gs.map((g) => g.getAttribute('class').split(' ')[1]))].sort());

// The timeline and charts render when their section is open.
for (const id of ['timeline', 'curves', 'metrics']) {
  await page.evaluate((id) => { const d = document.getElementById(id); if (d) d.open = true; }, id);
}
await page.waitForTimeout(300);
out.ganttBars = await count('#gantt-view .gantt-bar');
out.metricLinks = await count('#metrics a.rec');
const firstChart = page.locator('.chart').first();
if (await firstChart.count()) await firstChart.scrollIntoViewIfNeeded();
await page.waitForTimeout(300);
out.charts = await count('.uplot');
out.chartCanvases = await page.$$eval('.uplot canvas', (cs) => cs.filter((c) => c.width > 0 && c.height > 0).length);
out.diff = await count('#diff table');
out.diffCharts = await count('#diff .uplot');

// Clicking a node opens its record: key, outputs, parameters, log.
const node = page.locator('#dag-view .dag-node').first();
if (await node.count()) {
  out.clicked = await node.getAttribute('data-node');
  await node.click();
  await page.waitForSelector('#detail:not([hidden])', { timeout: 10000 });
  out.detail = await page.textContent('#detail');
}
await page.evaluate(() => window.scrollTo(0, 0));
await page.screenshot({ path: shot, fullPage: true });
await browser.close();
console.log(JSON.stringify(out));
