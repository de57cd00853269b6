// Drives the dashboard page in headless Chromium (the system's, through
// playwright-core) for tests/it/dashboard.rs, and prints one JSON object of
// what it saw. It checks nothing itself beyond waiting: the Rust test
// asserts on the report. Exit status 0 unless the browser could not run.
//
//   node drive.mjs --url http://127.0.0.1:PORT/ --screenshot out.png \
//        --tokens ETH,BTC --click BTC --interval 5m

import { chromium } from 'playwright-core';

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

const opts = args();
const tokens = (opts.tokens ?? '').split(',').filter(Boolean);
const report = { steps: [], console: [], tokens: [], failures: [] };
const step = (name, detail = {}) => report.steps.push({ name, at_ms: Date.now() - started, ...detail });
const started = Date.now();

async function poll(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      report.failures.push(`${what}: not within ${timeoutMs} ms`);
      return null;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const browser = await chromium.launch({
  executablePath: opts.chromium ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  // Everything the browser would print in its console, whatever its source:
  // console.* calls, uncaught exceptions, and the browser's own log entries
  // (network failures, failed WebSocket handshakes, CSP violations...).
  page.on('console', (m) => report.console.push({ source: 'console', level: m.type(), text: m.text() }));
  page.on('pageerror', (e) => report.console.push({ source: 'exception', level: 'error', text: String(e) }));
  const cdp = await page.context().newCDPSession(page);
  cdp.on('Log.entryAdded', ({ entry }) =>
    report.console.push({ source: `log:${entry.source}`, level: entry.level, text: entry.text, url: entry.url ?? '' }),
  );
  await cdp.send('Log.enable');
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));

  await page.goto(opts.url, { waitUntil: 'load' });
  step('loaded');

  // 1. The token table lists the producer's tokens.
  report.tokens =
    (await poll('table lists the tokens', 30000, async () => {
      const shown = await page.$$eval('#token-table tbody tr', (rows) => rows.map((r) => r.dataset.token));
      return tokens.every((t) => shown.includes(t)) ? shown : null;
    })) ?? (await page.$$eval('#token-table tbody tr', (rows) => rows.map((r) => r.dataset.token)));
  step('table', { tokens: report.tokens });

  // 2. A value changes as swaps arrive: the total of the 24h swap counts.
  const totalSwaps = () =>
    page.$$eval('#token-table td[data-col="swaps"]', (cells) => cells.reduce((s, c) => s + Number(c.dataset.value), 0));
  report.swaps_before = await totalSwaps();
  report.swaps_after = await poll('swap counts grow', 30000, async () => {
    const now = await totalSwaps();
    return now > report.swaps_before ? now : null;
  });
  step('live value', { before: report.swaps_before, after: report.swaps_after });

  // 3. Clicking a token opens its chart with candles drawn.
  const chart = () => page.$eval('#chart', (c) => ({ ...c.dataset }));
  await page.click(`#token-table tbody tr[data-token="${opts.click}"]`);
  report.chart = await poll('chart of the clicked token is drawn', 20000, async () => {
    const c = await chart();
    return c.token === opts.click && c.status === 'ready' && Number(c.drawn) > 0 ? c : null;
  });
  report.chart_pixels = await page.$eval('#chart', (canvas) => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted += 1;
    return painted;
  });
  step('chart', report.chart ?? {});

  // 4. Switching the interval reloads the candles from REST.
  const wanted = `/v1/tokens/${opts.click}/candles?interval=${opts.interval}`;
  const [request] = await Promise.all([
    page.waitForRequest((r) => r.url().includes(wanted), { timeout: 10000 }).catch(() => null),
    page.click(`#intervals button[data-interval="${opts.interval}"]`),
  ]);
  report.interval_request = request?.url() ?? null;
  if (!request) report.failures.push(`no request for ${wanted}`);
  report.chart_after_interval = await poll('chart redrawn at the new interval', 10000, async () => {
    const c = await chart();
    return c.interval === opts.interval && c.status === 'ready' ? c : null;
  });
  step('interval', { request: report.interval_request });

  // 5. The tape shows the selected token's swaps; the status strip its state.
  report.tape_rows = await poll('tape has swaps', 15000, () => page.$$eval('#tape tbody tr', (rows) => rows.length));
  await poll('status strip has a rate', 10000, async () => /\d/.test(await page.textContent('#rate')));
  report.status = {
    ws: await page.$eval('#ws-state', (e) => e.dataset.state),
    lag: await page.textContent('#lag'),
    rate: await page.textContent('#rate'),
    notice: await page.textContent('#notice'),
  };
  step('status', report.status);

  await page.screenshot({ path: opts.screenshot, fullPage: true });
  step('screenshot', { path: opts.screenshot });
  report.requests = requests.length;
} catch (error) {
  report.failures.push(`driver: ${error.stack ?? error}`);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
