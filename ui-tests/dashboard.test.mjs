// The dashboard in a real browser: starts `coherence demo` on free ports, opens /ui in headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core), and checks what a person
// would see: charts drawn from the demo's data, the stressed workload's risk panel at `high`,
// incidents with narratives, live updates without a reload, and an export that downloads the
// workload JSON in the API's schema. Saves a screenshot; always stops the demo.
//
//   COHERENCE_BIN_DIR   directory of coherence, coherence-verifier, coherence-sidecar
//                       (default ../target/release)
//   CHROMIUM            the browser (default /usr/bin/chromium)
//   UI_ARTIFACTS        where dashboard.png goes (default ../target/ui-artifacts)

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const binDir = path.resolve(process.env.COHERENCE_BIN_DIR || path.join(root, 'target', 'release'));
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
const artifacts = path.resolve(process.env.UI_ARTIFACTS || path.join(root, 'target', 'ui-artifacts'));
const schema = JSON.parse(fs.readFileSync(path.join(here, 'workload.schema.json'), 'utf8'));

const STRESSED = 'demo/checkout';
const HEALTHY = ['demo/catalog', 'demo/search'];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- a small JSON Schema subset: type, required, properties, items, enum, minimum ----------
function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function validate(s, v, at = '$') {
  const errors = [];
  if (s.type) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    const t = typeOf(v);
    if (!types.includes(t) && !(t === 'integer' && types.includes('number'))) {
      errors.push(`${at}: expected ${types.join('|')}, found ${t}`);
      return errors;
    }
  }
  if (s.enum && !s.enum.some((e) => e === v)) errors.push(`${at}: ${JSON.stringify(v)} not in ${JSON.stringify(s.enum)}`);
  if (typeof s.minimum === 'number' && typeof v === 'number' && v < s.minimum) errors.push(`${at}: ${v} < ${s.minimum}`);
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    for (const k of s.required || []) if (!(k in v)) errors.push(`${at}: missing ${k}`);
    for (const [k, sub] of Object.entries(s.properties || {})) {
      if (k in v) errors.push(...validate(sub, v[k], `${at}.${k}`));
    }
  }
  if (Array.isArray(v) && s.items) v.forEach((x, i) => errors.push(...validate(s.items, x, `${at}[${i}]`)));
  return errors;
}

// --- the demo process ---------------------------------------------------------------------
let demo = null;
let demoOut = '';
let demoExit = null;

function startDemo() {
  const exe = path.join(binDir, 'coherence');
  assert.ok(fs.existsSync(exe), `${exe} is missing: build it with make build`);
  demo = spawn(exe, [
    'demo', '--duration', '0', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--bin-dir', binDir,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  demo.stdout.on('data', (d) => { demoOut += d; });
  demo.stderr.on('data', (d) => { demoOut += d; });
  demo.on('exit', (code, signal) => { demoExit = { code, signal }; });
}

async function stopDemo() {
  if (!demo || demoExit) return demoExit;
  demo.kill('SIGTERM');
  for (let i = 0; i < 150 && !demoExit; i += 1) await sleep(100);
  if (!demoExit) {
    demo.kill('SIGKILL');
    for (let i = 0; i < 50 && !demoExit; i += 1) await sleep(100);
  }
  return demoExit;
}

after(async () => { await stopDemo(); });

async function until(what, limitMs, fn) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    if (demoExit) throw new Error(`${what}: the demo exited (${JSON.stringify(demoExit)}):\n${demoOut}`);
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms (last: ${last && last.message ? last.message : JSON.stringify(last)})\n${demoOut}`);
    await sleep(250);
  }
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

test('the dashboard shows the demo live in a real browser', { timeout: 240_000 }, async () => {
  startDemo();
  const base = await until('the demo prints its dashboard URL', 60_000, () => {
    const m = demoOut.match(/Dashboard: (http:\/\/127\.0\.0\.1:\d+)\/ui/);
    return m && m[1];
  });

  // The demo's data: the stressed workload goes high, the healthy ones report too.
  await until('the stressed workload at high drift risk, with an incident and history', 90_000, async () => {
    const list = await getJSON(`${base}/v1/workloads`);
    const by = Object.fromEntries(list.workloads.map((w) => [`${w.namespace}/${w.workload}`, w]));
    const s = by[STRESSED];
    if (!s || s.driftRisk !== 'high' || s.incidents < 1) return false;
    if (!HEALTHY.every((h) => by[h] && by[h].driftRisk !== 'insufficient_data')) return false;
    const h = await getJSON(`${base}/v1/workloads/${STRESSED}/history`);
    return h.points.length >= 8 && h.points.some((p) => p.finops.fti !== null);
  });

  const browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
  try {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1400, height: 1100 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const offOrigin = [];
    page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('blob:')) offOrigin.push(r.url()); });

    await page.goto(`${base}/ui#${STRESSED}`);
    await page.waitForFunction(() => window.coherenceDashboard && window.coherenceDashboard.updates >= 1
      && !document.getElementById('detail').hidden, null, { timeout: 30_000 });
    await page.evaluate(() => { window.__notReloaded = true; });

    // The risk panel of the stressed workload says high; the workload list agrees.
    const risk = page.getByTestId('risk-panel');
    assert.equal(await risk.getAttribute('data-risk'), 'high');
    assert.match(await risk.textContent(), /high/);
    assert.equal(await page.locator(`a.wl[data-workload="${STRESSED}"]`).getAttribute('data-risk'), 'high');
    for (const h of HEALTHY) {
      const r = await page.locator(`a.wl[data-workload="${h}"]`).getAttribute('data-risk');
      assert.ok(['low', 'medium'].includes(r), `${h} is ${r}`);
    }

    // Every chart is drawn, from the demo's data: series with numbers and a painted canvas.
    const charts = await page.evaluate(() => {
      const out = {};
      for (const [name, u] of Object.entries(window.coherenceDashboard.charts)) {
        const canvas = document.querySelector(`#chart-${name} canvas`);
        let painted = 0;
        if (canvas) {
          const ctx = canvas.getContext('2d');
          const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
          for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted += 1;
        }
        out[name] = {
          xs: u.data[0].length,
          series: u.data.slice(1).map((s) => s.filter((v) => typeof v === 'number' && Number.isFinite(v)).length),
          values: u.data.slice(1).map((s) => s.slice(-40)),
          lastX: u.data[0][u.data[0].length - 1],
          canvas: canvas ? [canvas.width, canvas.height] : null,
          painted,
        };
      }
      return out;
    });
    for (const name of ['mean', 'risk', 'fti', 'pcs']) {
      const c = charts[name];
      assert.ok(c, `chart ${name} exists`);
      assert.ok(c.xs >= 8, `chart ${name} has ${c.xs} points`);
      assert.ok(c.series[0] >= 1, `chart ${name} has numbers in its first series: ${JSON.stringify(c.series)}`);
      assert.ok(c.canvas && c.canvas[0] > 100 && c.canvas[1] > 50, `chart ${name} canvas ${JSON.stringify(c.canvas)}`);
      assert.ok(c.painted > 1000, `chart ${name} painted ${c.painted} pixels`);
    }
    // The risk chart reached high (2); the FTI chart draws the OK and WARN thresholds.
    assert.ok(charts.risk.values[0].includes(2), `risk levels ${JSON.stringify(charts.risk.values[0])}`);
    assert.ok(charts.fti.values[2].every((v) => v === 1), 'OK threshold at 1.00');
    assert.ok(charts.fti.values[3].every((v) => v === 1.05), 'WARN threshold at 1.05');
    // The mean chart's newest point is a number the API serves for that report.
    const hist = await getJSON(`${base}/v1/workloads/${STRESSED}/history`);
    const lastMean = charts.mean.values[1][charts.mean.values[1].length - 1];
    const served = hist.points.find((p) => p.atMs / 1000 === charts.mean.lastX);
    assert.ok(served, `the API still has the point at ${charts.mean.lastX}`);
    const cpu = served.windows.find((w) => w.signal === 'cpu' && w.window === '5m');
    assert.equal(lastMean, cpu.mean);
    // A band: the upper series lies above the mean by the window's stdev.
    const upper = charts.mean.values[0][charts.mean.values[0].length - 1];
    assert.ok(Math.abs(upper - (cpu.mean + cpu.stdev)) < 1e-9, `${upper} vs ${cpu.mean}+${cpu.stdev}`);

    // Incidents with their narrative and veto; PCS counts; the table of recent values.
    const incidents = page.locator('#incidents li[data-pattern]');
    assert.ok(await incidents.count() >= 1, 'an incident is listed');
    const narrative = await incidents.first().locator('.narrative').textContent();
    assert.ok(narrative.length > 20, `narrative: ${narrative}`);
    assert.ok(Number(await page.getByTestId('pcs-accepted').textContent()) > 0, 'PCS accepted');
    assert.ok(await page.locator('#recent tbody tr').count() >= 5, 'recent values');

    // Live: new points arrive without a reload.
    const before = charts.risk.xs;
    await page.waitForFunction((n) => window.coherenceDashboard.charts.risk.data[0].length > n, before, { timeout: 20_000 });
    assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');

    // Export: the workload JSON exactly as the API returns it, valid against its schema.
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export').click()]);
    assert.equal(download.suggestedFilename(), 'coherence-demo-checkout.json');
    const file = await download.path();
    const exported = JSON.parse(fs.readFileSync(file, 'utf8'));
    const errors = validate(schema, exported);
    assert.deepEqual(errors, [], `schema: ${errors.join('; ')}`);
    assert.equal(exported.namespace, 'demo');
    assert.equal(exported.workload, 'checkout');
    assert.equal(exported.driftRisk, 'high');
    assert.ok(exported.incidents.length >= 1);
    assert.ok(exported.incidents.every((i) => i.narrative.length > 0));
    const api = await getJSON(`${base}/v1/workloads/${STRESSED}`);
    assert.deepEqual(Object.keys(exported), Object.keys(api), 'the same keys, in the same order, as the API');
    assert.equal(exported.meta.engineVersion, api.meta.engineVersion);
    assert.ok(exported.pcs.accepted <= api.pcs.accepted);

    assert.deepEqual(pageErrors, [], 'no script errors');
    assert.deepEqual(offOrigin, [], 'no request leaves the verifier (no CDN)');

    fs.mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: path.join(artifacts, 'dashboard.png'), fullPage: true });
    fs.writeFileSync(path.join(artifacts, 'export.json'), JSON.stringify(exported, null, 2));
  } finally {
    await browser.close();
  }

  // SIGTERM: the demo prints its summary, cleans up and exits 0.
  const exit = await stopDemo();
  assert.deepEqual(exit, { code: 0, signal: null }, demoOut);
  assert.match(demoOut, /== Summary after \d+ s, interrupted/);
  assert.match(demoOut, /demo\/checkout\s+stressed\s+high/);
  const tmp = demoOut.match(/certificates and feeds in (\S+)/);
  assert.ok(tmp, 'the demo names its directory');
  assert.equal(fs.existsSync(tmp[1]), false, `${tmp[1]} was removed`);
});
