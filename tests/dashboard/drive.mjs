// Drives the dashboard page in headless Chromium (the system's, through
// playwright-core) for tests/it/dashboard.rs, and prints one JSON object of
// what it saw. It only waits and records: the Rust test asserts on the
// report. Exit status 0 unless the browser itself could not run.
//
//   node drive.mjs --scenario stack --url http://127.0.0.1:PORT/ \
//        --screenshot out.png --tokens ETH,BTC --click BTC --interval 5m
//   node drive.mjs --scenario live --url http://127.0.0.1:PORT/ \
//        --screenshot out.png --click BTC --key some-key
//
// `stack`: the page against the server as it is (WebSocket or not).
// `live`: the page's REST calls go to the server, its WebSocket to a stand-in
// here that speaks the protocol of DESIGN.md "WebSocket", so the live path
// is checked whether or not the server has /v1/ws.

import { chromium } from 'playwright-core';

function parseArgs() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

const opts = parseArgs();
const started = Date.now();
const report = { scenario: opts.scenario, steps: [], console: [], failures: [] };
const step = (name, detail = {}) => report.steps.push({ name, at_ms: Date.now() - started, ...detail });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns something truthy; records a failure after `timeoutMs`. */
async function poll(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) {
      report.failures.push(`${what}: not within ${timeoutMs} ms`);
      return null;
    }
    await sleep(200);
  }
}

const chartData = (page) => page.$eval('#chart', (c) => ({ ...c.dataset }));
const tableTokens = (page) => page.$$eval('#token-table tbody tr', (rows) => rows.map((r) => r.dataset.token));

async function stack(page, requests) {
  const tokens = (opts.tokens ?? '').split(',').filter(Boolean);
  await page.goto(opts.url, { waitUntil: 'load' });
  step('loaded');

  // 1. The token table lists the producer's tokens.
  await poll('table lists the tokens', 30000, async () => {
    const shown = await tableTokens(page);
    return tokens.every((t) => shown.includes(t));
  });
  report.tokens = await tableTokens(page);
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

  // Sorting: by symbol (ascending first), then by 24h swaps (descending first).
  const sortState = () =>
    page.$$eval('#token-table th[aria-sort]:not([aria-sort="none"])', (ths) =>
      ths.map((th) => `${th.dataset.sort} ${th.getAttribute('aria-sort')}`),
    );
  await page.click('#token-table th[data-sort="token"]');
  report.sort_after_token_click = await sortState();
  report.sorted_by_token = await tableTokens(page);
  await page.click('#token-table th[data-sort="swaps"]');
  report.sort_after_swaps_click = await sortState();
  report.sorted_by_swaps = await page.$$eval('#token-table tbody tr', (rows) =>
    rows.map((r) => Number(r.querySelector('td[data-col="swaps"]').dataset.value)),
  );
  step('sort', { by_token: report.sorted_by_token, by_swaps: report.sorted_by_swaps });

  // 3. Clicking a token opens its chart with candles drawn.
  await page.click(`#token-table tbody tr[data-token="${opts.click}"]`);
  report.chart = await poll('chart of the clicked token is drawn', 20000, async () => {
    const c = await chartData(page);
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
  report.chart_after_interval = await poll('chart redrawn at the new interval', 10000, async () => {
    const c = await chartData(page);
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
  };
  step('status', report.status);
  report.requests = requests.length;
}

async function live(page, requests) {
  const token = opts.click;
  const channel = `token:${token}`;
  // Real snapshots for the stand-in's `subscribed` frames.
  const headers = { 'X-API-Key': opts.key };
  const listed = await (await fetch(new URL('v1/tokens', opts.url), { headers })).json();
  const snapshots = new Map(listed.tokens.map((s) => [`token:${s.token}`, s]));

  const server = { urls: [], received: [], seq: new Map(), socket: null };
  const hasKey = (url, header) => header === opts.key || new URL(url).searchParams.get('api_key') === opts.key;
  const send = (frame) => {
    if ('seq' in frame) server.seq.set(frame.channel, frame.seq);
    server.socket.send(JSON.stringify(frame));
  };
  const next = (ch) => (server.seq.get(ch) ?? -1) + 1;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    server.urls.push(ws.url());
    if (!hasKey(ws.url())) {
      ws.close({ code: 4001, reason: 'missing or unknown API key' });
      return;
    }
    server.socket = ws;
    ws.onMessage((text) => {
      const message = JSON.parse(String(text));
      server.received.push(message);
      if (message.op === 'ping') ws.send(JSON.stringify({ type: 'pong' }));
      if (message.op !== 'subscribe') return;
      for (const ch of message.channels) {
        const snapshot = { ...snapshots.get(ch) };
        if (ch === channel) snapshot.pending = 4242;
        // Candle channels have no snapshot and no history position.
        if (ch.startsWith('candles:')) send({ type: 'subscribed', channel: ch, seq: 0 });
        else send({ type: 'subscribed', channel: ch, seq: 0, epoch: 'e1', offset: '0-0-0', snapshot });
      }
    });
  });
  // The server asks for the key: REST and metrics without it answer 401
  // and the WebSocket closes, as an API-key middleware would.
  await page.route(
    (url) => url.pathname.startsWith('/v1/') || url.pathname === '/metrics',
    (route) =>
      hasKey(route.request().url(), route.request().headers()['x-api-key'])
        ? route.continue()
        : route.fulfill({
            status: 401,
            contentType: 'application/json',
            body: JSON.stringify({ error: { code: 'unauthorized', message: 'missing or unknown API key' } }),
          }),
  );
  await page.goto(opts.url, { waitUntil: 'load' });
  step('loaded');

  // The page asks for the key once, in its dialog.
  report.key_dialog = await poll('the page asks for the API key', 10000, () => page.isVisible('#key-dialog[open]'));
  await page.fill('#key-input', opts.key);
  const keyEnteredAt = requests.length;
  await page.click('#key-form button[value="save"]');
  step('key entered');

  // The page connects with the key in the URL and subscribes to every token.
  await poll('status strip says connected', 15000, async () => (await page.$eval('#ws-state', (e) => e.dataset.state)) === 'connected');
  await poll(`subscription to ${channel}`, 15000, async () =>
    server.received.some((m) => m.op === 'subscribe' && m.channels.includes(channel)),
  );
  report.ws_urls = [...server.urls];
  report.subscribe_messages = server.received.filter((m) => m.op === 'subscribe');
  const keysSent = (from) => [...new Set(requests.slice(from).filter((r) => r.url.includes('/v1/')).map((r) => r.key))];
  report.rest_key_headers = keysSent(keyEnteredAt);
  // The snapshot's pending count reaches the table.
  report.snapshot_pending = await poll('snapshot shown in the table', 10000, async () => {
    const text = await page.textContent(`#token-table tr[data-token="${token}"] td[data-col="pending"]`);
    return text === '4,242' ? text : null;
  });
  step('subscribed', { urls: report.ws_urls });

  await page.click(`#token-table tbody tr[data-token="${token}"]`);
  await poll('chart of the clicked token is drawn', 20000, async () => {
    const c = await chartData(page);
    return c.token === token && c.status === 'ready';
  });
  // The chart follows its candle channel.
  const candles = `candles:${token}:1m`;
  report.candle_subscribed = await poll(`subscription to ${candles}`, 15000, async () =>
    server.received.some((m) => m.op === 'subscribe' && m.channels.includes(candles)),
  );
  // The stand-in's candles exist only in its frames, not in the server's
  // candles: a periodic REST reload of the chart would undo them. Candle
  // answers wait while the frames' effect on the chart is checked.
  const heldCandles = [];
  let holdCandles = true;
  await page.route(
    (url) => url.pathname.endsWith('/candles'),
    (route) => (holdCandles ? heldCandles.push(route) : route.fallback()),
  );
  const releaseCandles = async () => {
    holdCandles = false;
    await Promise.all(heldCandles.splice(0).map((route) => route.fallback()));
  };

  // Swap frames: one swap pending then confirmed, another pending then failed.
  const swap = (id, status, usd, amount) => ({
    tx_hash: `0x${id.repeat(64).slice(0, 64)}`, log_index: 0, block_number: 1, timestamp: new Date().toISOString(),
    status, maker: `0x${'1'.repeat(40)}`, token_from: 'USDC', token_to: token,
    amount_from: usd, amount_to: amount, usd_value: usd,
  });
  const tapeStatus = (id) =>
    page.$$eval('#tape tbody tr', (rows, hash) => {
      const row = rows.find((r) => r.dataset.tx === hash);
      return row ? row.dataset.status : null;
    }, `0x${id.repeat(64).slice(0, 64)}`);
  report.tape = {};
  send({ type: 'swap', channel, seq: next(channel), offset: '1-0-1', swap: swap('a', 'pending', '55555.5', '0.5') });
  send({ type: 'swap', channel, seq: next(channel), offset: '1-0-2', swap: swap('b', 'pending', '50', '0.0004') });
  report.tape.a_first = await poll('swap a shown pending', 5000, () => tapeStatus('a'));
  report.tape.b_first = await tapeStatus('b');
  send({ type: 'swap', channel, seq: next(channel), offset: '2-0-1', swap: swap('a', 'confirmed', '55555.5', '0.5') });
  send({ type: 'swap', channel, seq: next(channel), offset: '2-0-2', swap: swap('b', 'failed', '50', '0.0004') });
  report.tape.a_then = await poll('swap a confirmed', 5000, async () => ((await tapeStatus('a')) === 'confirmed' ? 'confirmed' : null));
  report.tape.b_then = await poll('swap b dropped', 5000, async () => ((await tapeStatus('b')) === 'dropped' ? 'dropped' : null));
  step('swaps', report.tape);

  // Candle frames: a new bucket after the shown ones, then a late swap's
  // revision of the bucket before it.
  const shown = (await chartData(page)).closes.split(',').map((c) => Number(c.split(':')[0]));
  const newest = shown[shown.length - 1] + 60;
  const candle = (t, close) => ({
    t, open: '100', high: String(Math.max(100, close)), low: '90', close: String(close),
    volume_usd: '1000', swaps: 3, closed: false,
  });
  send({ type: 'candle', channel: candles, seq: next(candles), candle: candle(newest, 111111) });
  report.close_after_candle = await poll('a candle frame extends the chart', 5000, async () => {
    const c = await chartData(page);
    return Math.abs(Number(c.lastClose) - 111111) < 1e-6 ? c.lastClose : null;
  });
  send({ type: 'candle', channel: candles, seq: next(candles), candle: { ...candle(newest - 60, 95), closed: true } });
  report.revised_close = await poll('a late candle frame revises its bucket', 5000, async () => {
    const closes = (await chartData(page)).closes.split(',');
    const revised = closes.find((c) => c.startsWith(`${newest - 60}:`));
    return revised?.endsWith(':95') ? revised.split(':')[1] : null;
  });
  step('candles', { close: report.close_after_candle, revised: report.revised_close });

  // A stats frame updates the table.
  const stats = { ...snapshots.get(channel), price_usd: '123456.7', pending: 7, updated_at: new Date().toISOString() };
  send({ type: 'stats', channel, seq: next(channel), stats });
  report.price_after_stats = await poll('stats frame reaches the table', 5000, async () => {
    const text = await page.textContent(`#token-table tr[data-token="${token}"] td[data-col="price"]`);
    return text === '123,457' ? text : null;
  });
  await releaseCandles();
  await page.screenshot({ path: opts.screenshot, fullPage: true });
  step('stats', { price: report.price_after_stats });

  // A gap in seq makes the page take the truth from REST again.
  const [resync] = await Promise.all([
    page.waitForRequest((r) => r.url().endsWith('/v1/tokens'), { timeout: 5000 }).catch(() => null),
    send({ type: 'stats', channel, seq: next(channel) + 1, stats }),
  ]);
  report.resync_after_gap = resync?.url() ?? null;
  step('gap', { resync: report.resync_after_gap });

  // The connection drops; the page reconnects and resumes each channel
  // from the last position it saw.
  const subscribesBefore = server.received.filter((m) => m.op === 'subscribe').length;
  server.socket.close({ code: 1012, reason: 'service restart' });
  const resumed = await poll('subscribe again after the reconnect', 15000, async () =>
    server.received.filter((m) => m.op === 'subscribe').slice(subscribesBefore).find((m) => m.channels.includes(channel)),
  );
  report.resume_since = resumed?.since?.[channel] ?? null;
  step('resume', { since: report.resume_since });

  // The key outlives a reload of the tab: no second question.
  const reloadedAt = requests.length;
  const urlsBefore = server.urls.length;
  await page.reload({ waitUntil: 'load' });
  await poll('table after reload', 10000, async () => (await tableTokens(page)).length > 0);
  report.after_reload = {
    dialog_open: await page.isVisible('#key-dialog[open]'),
    rest_key_headers: keysSent(reloadedAt),
    ws_urls: server.urls.slice(urlsBefore),
  };
  step('reload', report.after_reload);
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
  page.on('request', (r) => requests.push({ url: r.url(), key: r.headers()['x-api-key'] ?? null }));

  await { stack, live }[opts.scenario](page, requests);
  if (opts.scenario === 'stack') {
    await page.screenshot({ path: opts.screenshot, fullPage: true });
    step('screenshot', { path: opts.screenshot });
  }
} catch (error) {
  report.failures.push(`driver: ${error.stack ?? error}`);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
