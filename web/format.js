// Number and time formatting for display. Values arrive as exact decimal
// strings; they become floating point only here, to be shown.

const price6 = new Intl.NumberFormat('en-US', { maximumSignificantDigits: 6 });
const usdCompact = new Intl.NumberFormat('en-US', {
  style: 'currency', currency: 'USD', notation: 'compact', maximumFractionDigits: 2,
});
const usdFull = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumFractionDigits: 2 });
const integer = new Intl.NumberFormat('en-US');

/** A decimal string (or number, or null) as a number; NaN when absent. */
export function num(value) {
  if (value === null || value === undefined || value === '') return NaN;
  return Number(value);
}

export function price(value) {
  const n = num(value);
  return Number.isFinite(n) ? price6.format(n) : '–';
}

export function usd(value) {
  const n = num(value);
  if (!Number.isFinite(n)) return '–';
  return Math.abs(n) >= 100000 ? usdCompact.format(n) : usdFull.format(n);
}

export function count(value) {
  const n = num(value);
  return Number.isFinite(n) ? integer.format(n) : '–';
}

export function pct(value) {
  const n = num(value);
  if (!Number.isFinite(n)) return '–';
  return `${n > 0 ? '+' : ''}${n.toFixed(2)}%`;
}

/**
 * Milliseconds of an RFC 3339 time. The API writes up to nine fractional
 * digits; JavaScript dates promise to read three, so the rest is cut.
 */
export function millis(text) {
  return Date.parse(String(text).replace(/(\.\d{3})\d+/, '$1'));
}

export function clock(date) {
  return date.toISOString().slice(11, 19);
}

/** Seconds of a candle interval label (1m .. 1d). */
export function intervalSeconds(label) {
  const unit = { m: 60, h: 3600, d: 86400 }[label.slice(-1)];
  return Number(label.slice(0, -1)) * unit;
}
