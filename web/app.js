// The dashboard: a token table, the selected token's candle chart and swap
// tape, and a status strip. REST gives the state and re-syncs it every few
// seconds; the WebSocket (when the server has it) makes it live in between.

import { apiKey, HttpError, parsePrometheus, rest, setApiKey, sumOf } from './api.js';
import { CandleChart } from './chart.js';
import { clock, count, millis, num, pct, price, usd } from './format.js';
import { Live } from './live.js';

const POLL_DISCONNECTED_MS = 3000;
const POLL_CONNECTED_MS = 15000;
const METRICS_MS = 3000;
const CANDLE_LIMIT = 240;
const TAPE_ROWS = 25;
const DEFAULT_INTERVAL = '1m';

const $ = (selector) => document.querySelector(selector);

const state = {
  tokens: new Map(), // symbol -> stats object
  sort: { key: 'vol24h', descending: true },
  selected: null,
  interval: DEFAULT_INTERVAL,
  tape: new Map(), // `${tx_hash}:${log_index}` -> swap in wire form
  needsKey: false,
  lastMetrics: null,
};

const chart = new CandleChart($('#chart'), $('#chart-tip'));

// ---- token table -------------------------------------------------------

const COLUMNS = {
  token: { value: (s) => s.token, show: (s) => s.token, text: true },
  price: { value: (s) => num(s.price_usd), show: (s) => price(s.price_usd) },
  change: { value: (s) => num(s.windows?.['24h']?.price_change_pct), show: (s) => pct(s.windows?.['24h']?.price_change_pct) },
  vol5m: { value: (s) => num(s.windows?.['5m']?.volume_usd), show: (s) => usd(s.windows?.['5m']?.volume_usd) },
  vol1h: { value: (s) => num(s.windows?.['1h']?.volume_usd), show: (s) => usd(s.windows?.['1h']?.volume_usd) },
  vol24h: { value: (s) => num(s.windows?.['24h']?.volume_usd), show: (s) => usd(s.windows?.['24h']?.volume_usd) },
  swaps: { value: (s) => s.windows?.['24h']?.swaps ?? 0, show: (s) => count(s.windows?.['24h']?.swaps) },
  buys: { value: (s) => s.windows?.['24h']?.buys ?? 0, show: (s) => count(s.windows?.['24h']?.buys) },
  sells: { value: (s) => s.windows?.['24h']?.sells ?? 0, show: (s) => count(s.windows?.['24h']?.sells) },
  pending: { value: (s) => s.pending ?? 0, show: (s) => count(s.pending) },
};

function compare(a, b) {
  const { key, descending } = state.sort;
  const va = COLUMNS[key].value(a);
  const vb = COLUMNS[key].value(b);
  let order;
  if (typeof va === 'string') order = va.localeCompare(vb);
  else order = (Number.isFinite(va) ? va : -Infinity) - (Number.isFinite(vb) ? vb : -Infinity);
  if (order === 0) order = a.token.localeCompare(b.token);
  return descending ? -order : order;
}

function renderTable() {
  const body = $('#token-table tbody');
  const rows = new Map([...body.rows].map((row) => [row.dataset.token, row]));
  const sorted = [...state.tokens.values()].sort(compare);
  sorted.forEach((stats, index) => {
    let row = rows.get(stats.token);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.token = stats.token;
      row.tabIndex = 0;
      for (const [key, column] of Object.entries(COLUMNS)) {
        const cell = row.insertCell();
        cell.dataset.col = key;
        if (column.text) cell.className = 'text';
      }
    }
    for (const cell of row.cells) {
      const column = COLUMNS[cell.dataset.col];
      const value = column.value(stats);
      const before = cell.dataset.value;
      cell.textContent = column.show(stats);
      cell.dataset.value = String(value);
      if (before !== undefined && before !== cell.dataset.value && typeof value === 'number') {
        flash(cell, value > Number(before) ? 'rise' : 'fall');
      }
    }
    const change = COLUMNS.change.value(stats);
    row.cells[2].classList.toggle('pos', change > 0);
    row.cells[2].classList.toggle('neg', change < 0);
    row.classList.toggle('selected', stats.token === state.selected);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] ?? null);
  });
  for (const [token, row] of rows) if (!state.tokens.has(token)) row.remove();
  $('#tokens-empty').hidden = state.tokens.size > 0;
  for (const th of document.querySelectorAll('#token-table th')) {
    const active = th.dataset.sort === state.sort.key;
    th.setAttribute('aria-sort', active ? (state.sort.descending ? 'descending' : 'ascending') : 'none');
  }
}

function flash(cell, direction) {
  cell.classList.remove('rise', 'fall');
  void cell.offsetWidth; // restart the animation
  cell.classList.add(direction);
}

function putStats(stats) {
  if (!stats?.token) return;
  state.tokens.set(stats.token, stats);
  if (stats.token !== state.selected) return;
  renderDetailHead();
}

// ---- selected token: chart and tape ------------------------------------

function renderDetailHead() {
  const stats = state.tokens.get(state.selected);
  $('#detail-title').textContent = state.selected ?? '–';
  $('#detail-price').textContent = stats ? `$${price(stats.price_usd)}` : '';
}

function select(token) {
  if (!token || token === state.selected) return;
  const before = candleChannel();
  state.selected = token;
  state.tape.clear();
  followCandles(before);
  live.want([`token:${token}`]);
  $('#detail').hidden = false;
  renderDetailHead();
  renderTable();
  renderTape();
  loadCandles();
  loadTape();
}

/** The candle channel of what the chart shows. */
function candleChannel() {
  return state.selected ? `candles:${state.selected}:${state.interval}` : null;
}

/** The chart's buckets come live from its candle channel (late swaps included). */
function followCandles(before) {
  const now = candleChannel();
  if (before && before !== now) live.unwant([before]);
  if (now) live.want([now]);
}

function chooseInterval(interval) {
  const before = candleChannel();
  state.interval = interval;
  followCandles(before);
  for (const button of document.querySelectorAll('#intervals button')) {
    button.classList.toggle('active', button.dataset.interval === interval);
    button.setAttribute('aria-pressed', String(button.dataset.interval === interval));
  }
  loadCandles();
}

async function loadCandles() {
  const token = state.selected;
  const interval = state.interval;
  if (!token) return;
  if (chart.token !== token || chart.interval !== interval) chart.loading(token, interval);
  try {
    const answer = await rest.candles(token, interval, CANDLE_LIMIT);
    if (token === state.selected && interval === state.interval) chart.set(token, interval, answer.candles);
  } catch (error) {
    failed(error);
  }
}

async function loadTape() {
  const token = state.selected;
  if (!token) return;
  try {
    const answer = await rest.swaps(token, TAPE_ROWS);
    if (token !== state.selected) return;
    for (const swap of answer.swaps) state.tape.set(swapId(swap), { ...swap, status: swap.status ?? 'confirmed' });
    renderTape();
  } catch (error) {
    failed(error);
  }
}

const swapId = (swap) => `${swap.tx_hash}:${swap.log_index ?? 0}`;

/** Side, amount of the token, the other token and the price, seen from `token`. */
function sideOf(swap, token) {
  const buy = swap.token_to === token;
  const amount = num(buy ? swap.amount_to : swap.amount_from);
  return {
    side: buy ? 'buy' : 'sell',
    amount,
    other: buy ? swap.token_from : swap.token_to,
    price: num(swap.usd_value) / amount,
  };
}

function onSwap(swap) {
  const id = swapId(swap);
  const known = state.tape.get(id);
  // Only a move forward: pending -> confirmed/failed, never back.
  if (known && known.status !== 'pending') return;
  state.tape.set(id, swap);
  renderTape();
}

function renderTape() {
  const token = state.selected;
  const swaps = [...state.tape.values()].sort(
    (a, b) => millis(b.timestamp) - millis(a.timestamp) || (b.log_index ?? 0) - (a.log_index ?? 0),
  );
  for (const stale of swaps.slice(TAPE_ROWS)) state.tape.delete(swapId(stale));
  const body = $('#tape tbody');
  body.replaceChildren(
    ...swaps.slice(0, TAPE_ROWS).map((swap) => {
      const view = sideOf(swap, token);
      const row = document.createElement('tr');
      const status = swap.status === 'failed' ? 'dropped' : swap.status;
      row.className = `${view.side} ${status}`;
      row.dataset.status = status;
      row.dataset.tx = swap.tx_hash;
      const cells = [
        [clock(new Date(millis(swap.timestamp))), 'text'],
        [view.side, 'text side'],
        [price(view.amount), ''],
        [view.other, 'text'],
        [price(view.price), ''],
        [usd(swap.usd_value), ''],
        [status, 'text status'],
      ];
      for (const [text, className] of cells) {
        const cell = row.insertCell();
        cell.textContent = text;
        cell.className = className;
      }
      return row;
    }),
  );
}

// ---- REST polling, the WebSocket and the status strip ------------------

async function refresh() {
  try {
    const answer = await rest.tokens();
    const seen = new Set();
    for (const stats of answer.tokens) {
      putStats(stats);
      seen.add(stats.token);
    }
    for (const token of [...state.tokens.keys()]) if (!seen.has(token)) state.tokens.delete(token);
    renderTable();
    if (!state.selected && answer.tokens.length) select([...state.tokens.values()].sort(compare)[0].token);
    live.want([...state.tokens.values()].sort(compare).map((s) => `token:${s.token}`));
    $('#updated').textContent = clock(new Date());
    notice('');
  } catch (error) {
    failed(error);
  }
}

async function refreshDetail() {
  await Promise.all([loadCandles(), loadTape()]);
}

async function refreshMetrics() {
  try {
    const samples = parsePrometheus(await rest.metrics());
    const now = performance.now();
    const consumed = sumOf(samples, 'swapstream_events_consumed_total');
    const lag = sumOf(samples, 'swapstream_consumer_lag');
    $('#lag').textContent = lag === null ? 'n/a' : count(lag);
    const last = state.lastMetrics;
    if (last && consumed !== null && last.consumed !== null && now > last.at) {
      const rate = Math.max(0, (consumed - last.consumed) / ((now - last.at) / 1000));
      $('#rate').textContent = rate >= 10 ? count(Math.round(rate)) : rate.toFixed(1);
    }
    state.lastMetrics = { at: now, consumed };
  } catch (error) {
    $('#lag').textContent = 'n/a';
    $('#rate').textContent = 'n/a';
    if (error instanceof HttpError && error.needsKey) askForKey(error.message);
  }
}

function failed(error) {
  if (error instanceof HttpError && (error.status === 401 || error.status === 403) && !error.needsKey) {
    return; // Sent with a key since replaced; the next refresh uses the new one.
  }
  if (error instanceof HttpError && error.needsKey) {
    askForKey(error.message);
  } else if (error instanceof HttpError && error.status === 404 && state.selected) {
    notice(error.message);
  } else {
    notice(`REST: ${error.message}`);
  }
}

function notice(text) {
  $('#notice').textContent = text;
}

const live = new Live({
  state(connection, detail) {
    const pill = $('#ws-state');
    pill.dataset.state = connection;
    pill.textContent = connection;
    pill.title = detail;
    $('#ws-detail').textContent =
      connection === 'disconnected' ? `${detail}; refreshing every ${POLL_DISCONNECTED_MS / 1000}s` : '';
  },
  stats(channel, stats) {
    if (!channel.startsWith('token:')) return;
    putStats(stats);
    renderTable();
    $('#updated').textContent = clock(new Date());
  },
  swap(channel, swap) {
    if (channel === `token:${state.selected}`) onSwap(swap);
  },
  candle(channel, candle) {
    if (channel === candleChannel() && chart.token === state.selected && chart.interval === state.interval) {
      chart.putCandle(candle);
    }
  },
  gap(channel) {
    // Frames were lost: take the truth from REST again.
    refresh();
    if (channel === `token:${state.selected}`) refreshDetail();
  },
  error(frame) {
    notice(`WebSocket: ${frame.code}: ${frame.message}`);
  },
});

function schedule(task, connectedMs, disconnectedMs) {
  const run = async () => {
    if (!state.needsKey) await task();
    setTimeout(run, live.connected ? connectedMs : disconnectedMs);
  };
  run();
}

// ---- API key -------------------------------------------------------------

function askForKey(reason) {
  if (state.needsKey) return;
  state.needsKey = true;
  $('#key-reason').textContent = `${reason || 'This server asks for an API key'}. It is kept in this browser tab only.`;
  $('#key-input').value = '';
  $('#key-dialog').showModal();
}

$('#key-button').addEventListener('click', () => {
  $('#key-input').value = apiKey();
  $('#key-dialog').showModal();
});

$('#key-dialog').addEventListener('close', () => {
  const dialog = $('#key-dialog');
  if (dialog.returnValue === 'save') setApiKey($('#key-input').value.trim());
  if (dialog.returnValue === 'clear') setApiKey('');
  state.needsKey = false;
  live.restart();
  refresh();
  refreshDetail();
});

// ---- wiring ----------------------------------------------------------------

for (const th of document.querySelectorAll('#token-table th')) {
  const sortBy = () => {
    const key = th.dataset.sort;
    state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : key !== 'token' };
    renderTable();
  };
  th.tabIndex = 0;
  th.addEventListener('click', sortBy);
  th.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      sortBy();
    }
  });
}

function rowToken(event) {
  return event.target.closest('tr[data-token]')?.dataset.token;
}
$('#token-table tbody').addEventListener('click', (event) => select(rowToken(event)));
$('#token-table tbody').addEventListener('keydown', (event) => {
  if (event.key === 'Enter') select(rowToken(event));
});

for (const button of document.querySelectorAll('#intervals button')) {
  button.addEventListener('click', () => chooseInterval(button.dataset.interval));
}
chooseInterval(DEFAULT_INTERVAL);

live.start();
schedule(refresh, POLL_CONNECTED_MS, POLL_DISCONNECTED_MS);
schedule(refreshDetail, POLL_CONNECTED_MS, POLL_DISCONNECTED_MS);
schedule(refreshMetrics, METRICS_MS, METRICS_MS);
