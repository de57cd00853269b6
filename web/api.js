// The REST side: relative URLs (so the page works behind a proxy prefix and
// with TLS) and the API key, kept for this tab in sessionStorage and sent as
// `X-API-Key` (REST) or `?api_key=` (WebSocket, where browsers cannot set
// headers).

const KEY = 'swapstream.apiKey';

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage disabled: the key lives as long as nothing reloads the page.
  }
}

/** An HTTP answer that was not 2xx, with the API's error code if it sent one. */
export class HttpError extends Error {
  constructor(status, code, message, sentKey) {
    super(message);
    this.status = status;
    this.code = code;
    this.sentKey = sentKey;
  }

  /** Refused for want of a key, and not merely sent before the key changed. */
  get needsKey() {
    return (this.status === 401 || this.status === 403) && this.sentKey === apiKey();
  }
}

function url(path) {
  return new URL(path, document.baseURI);
}

async function get(path, accept) {
  const headers = { Accept: accept };
  const key = apiKey();
  if (key) headers['X-API-Key'] = key;
  const response = await fetch(url(path), { headers, cache: 'no-store' });
  if (!response.ok) {
    let code = 'http_' + response.status;
    let message = response.statusText || code;
    try {
      const body = await response.json();
      code = body.error?.code ?? code;
      message = body.error?.message ?? message;
    } catch {
      // Not the API's JSON error shape: keep the status line.
    }
    throw new HttpError(response.status, code, message, key);
  }
  return response;
}

export async function getJSON(path) {
  return (await get(path, 'application/json')).json();
}

export async function getText(path) {
  return (await get(path, 'text/plain')).text();
}

export const rest = {
  tokens: () => getJSON('v1/tokens'),
  stats: (token) => getJSON(`v1/tokens/${encodeURIComponent(token)}/stats`),
  candles: (token, interval, limit) =>
    getJSON(`v1/tokens/${encodeURIComponent(token)}/candles?interval=${interval}&limit=${limit}`),
  swaps: (token, limit) => getJSON(`v1/tokens/${encodeURIComponent(token)}/swaps?limit=${limit}`),
  metrics: () => getText('metrics'),
};

/** `ws:` or `wss:` URL of the WebSocket endpoint, with the key if there is one. */
export function socketUrl() {
  const u = url('v1/ws');
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  const key = apiKey();
  if (key) u.searchParams.set('api_key', key);
  return u.toString();
}

/**
 * Prometheus text format to a list of samples {name, labels, value}.
 * Comments, blank lines and unparsable lines are skipped.
 */
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    const labelText = match[3] ?? '';
    for (const pair of labelText.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

/** Sum of every series of one metric, or null when the metric is absent. */
export function sumOf(samples, name) {
  const matching = samples.filter((s) => s.name === name && Number.isFinite(s.value));
  return matching.length ? matching.reduce((total, s) => total + s.value, 0) : null;
}
