// A candle chart on a canvas: OHLC candles above, USD volume bars below,
// price axis on the right, time axis at the bottom, a crosshair with the
// hovered candle's values. The canvas carries what it shows as data
// attributes (token, interval, candles, drawn, last-close) so tests and tools can read it.

import { intervalSeconds, num, price, usd } from './format.js';

const COLORS = {
  up: '#16a34a', down: '#dc2626', grid: '#e5e7eb', text: '#6b7280', cross: '#9ca3af',
  volUp: 'rgba(22,163,74,0.35)', volDown: 'rgba(220,38,38,0.35)',
};
const AXIS_W = 72;
const TIME_H = 20;
const VOLUME_SHARE = 0.22;

export class CandleChart {
  constructor(canvas, tip) {
    this.canvas = canvas;
    this.tip = tip;
    this.candles = [];
    this.token = '';
    this.interval = '1m';
    this.layout = null;
    this.hoverX = null;
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener('mousemove', (e) => {
      this.hoverX = e.offsetX;
      this.draw();
    });
    canvas.addEventListener('mouseleave', () => {
      this.hoverX = null;
      this.draw();
    });
  }

  loading(token, interval) {
    this.canvas.dataset.status = 'loading';
    this.canvas.dataset.token = token;
    this.canvas.dataset.interval = interval;
  }

  /** REST candles (oldest first, decimal strings) replace what is shown. */
  set(token, interval, candles) {
    this.token = token;
    this.interval = interval;
    this.candles = candles.map((c) => ({
      t: c.t, open: num(c.open), high: num(c.high), low: num(c.low), close: num(c.close),
      volume: num(c.volume_usd), swaps: c.swaps,
    }));
    this.draw();
  }

  /**
   * A candle frame (REST's candle object): replaces its bucket, or adds it
   * in time order. Late swaps revise older buckets the same way.
   */
  putCandle(c) {
    const candle = {
      t: c.t, open: num(c.open), high: num(c.high), low: num(c.low), close: num(c.close),
      volume: num(c.volume_usd), swaps: c.swaps,
    };
    const at = this.candles.findIndex((known) => known.t >= candle.t);
    if (at === -1) this.candles.push(candle);
    else if (this.candles[at].t === candle.t) this.candles[at] = candle;
    else this.candles.splice(at, 0, candle);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = '11px system-ui, sans-serif';

    const plotW = width - AXIS_W;
    // Wide candles while there are few, at least 5 px each when many.
    const slot = Math.min(24, Math.max(5, Math.floor(plotW / Math.max(this.candles.length, 40))));
    const shown = this.candles.slice(-Math.max(1, Math.floor(plotW / slot)));
    canvas.dataset.token = this.token;
    canvas.dataset.interval = this.interval;
    canvas.dataset.candles = String(this.candles.length);
    canvas.dataset.drawn = String(shown.length);
    canvas.dataset.status = shown.length ? 'ready' : 'empty';
    canvas.dataset.lastClose = shown.length ? String(shown[shown.length - 1].close) : '';
    canvas.dataset.closes = shown.map((c) => `${c.t}:${c.close}`).join(',');
    if (!shown.length) {
      g.fillStyle = COLORS.text;
      g.fillText('No candles yet for this interval', 12, 20);
      this.tip.hidden = true;
      return;
    }

    const priceH = (height - TIME_H) * (1 - VOLUME_SHARE);
    const volTop = priceH + 6;
    const volH = height - TIME_H - volTop;
    let lo = Math.min(...shown.map((c) => c.low));
    let hi = Math.max(...shown.map((c) => c.high));
    if (hi === lo) {
      hi += Math.abs(hi) * 0.001 || 1;
      lo -= Math.abs(lo) * 0.001 || 1;
    }
    const pad = (hi - lo) * 0.06;
    lo -= pad;
    hi += pad;
    const maxVol = Math.max(...shown.map((c) => c.volume), 1e-9);
    const y = (p) => 6 + (priceH - 12) * (1 - (p - lo) / (hi - lo));
    const x = (i) => plotW - (shown.length - i) * slot + slot / 2;

    // Grid and price axis.
    g.strokeStyle = COLORS.grid;
    g.fillStyle = COLORS.text;
    g.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const p = lo + ((hi - lo) * k) / 4;
      const py = Math.round(y(p)) + 0.5;
      g.beginPath();
      g.moveTo(0, py);
      g.lineTo(plotW, py);
      g.stroke();
      // Leave room for the last price marker drawn over the axis.
      if (Math.abs(py - y(shown[shown.length - 1].close)) > 14) g.fillText(price(p), plotW + 6, py + 4);
    }
    g.beginPath();
    g.moveTo(0, volTop - 3.5);
    g.lineTo(plotW, volTop - 3.5);
    g.stroke();

    // Time axis: a label about every 90 px.
    const every = Math.max(1, Math.round(90 / slot));
    const daily = intervalSeconds(this.interval) >= 86400;
    shown.forEach((c, i) => {
      if ((shown.length - 1 - i) % every !== 0) return;
      const iso = new Date(c.t * 1000).toISOString();
      const label = daily ? iso.slice(5, 10) : iso.slice(11, 16);
      g.fillText(label, Math.min(Math.max(0, x(i) - 14), plotW - 30), height - 6);
    });

    // Volume bars, then candles.
    const body = Math.max(1, Math.round(slot * 0.7));
    shown.forEach((c, i) => {
      const vh = (c.volume / maxVol) * volH;
      g.fillStyle = c.close >= c.open ? COLORS.volUp : COLORS.volDown;
      g.fillRect(Math.round(x(i) - body / 2), volTop + volH - vh, body, vh);
    });
    shown.forEach((c, i) => {
      const color = c.close >= c.open ? COLORS.up : COLORS.down;
      const cx = Math.round(x(i)) + 0.5;
      g.strokeStyle = color;
      g.fillStyle = color;
      g.beginPath();
      g.moveTo(cx, y(c.high));
      g.lineTo(cx, y(c.low));
      g.stroke();
      const top = y(Math.max(c.open, c.close));
      const h = Math.max(1, y(Math.min(c.open, c.close)) - top);
      g.fillRect(Math.round(x(i) - body / 2), top, body, h);
    });

    // Last price marker.
    const last = shown[shown.length - 1];
    g.fillStyle = last.close >= last.open ? COLORS.up : COLORS.down;
    g.fillRect(plotW + 2, y(last.close) - 8, AXIS_W - 4, 16);
    g.fillStyle = '#fff';
    g.fillText(price(last.close), plotW + 6, y(last.close) + 4);

    this.drawHover(g, shown, x, slot, plotW, height);
  }

  drawHover(g, shown, x, slot, plotW, height) {
    if (this.hoverX === null || this.hoverX > plotW) {
      this.tip.hidden = true;
      return;
    }
    const i = Math.round((this.hoverX - x(0)) / slot);
    const c = shown[i];
    if (!c) {
      this.tip.hidden = true;
      return;
    }
    g.strokeStyle = COLORS.cross;
    g.setLineDash([3, 3]);
    g.beginPath();
    g.moveTo(Math.round(x(i)) + 0.5, 0);
    g.lineTo(Math.round(x(i)) + 0.5, height - TIME_H);
    g.stroke();
    g.setLineDash([]);
    const when = new Date(c.t * 1000).toISOString().replace('T', ' ').slice(0, 16);
    this.tip.textContent =
      `${when} UTC  O ${price(c.open)}  H ${price(c.high)}  L ${price(c.low)}  C ${price(c.close)}  ` +
      `Vol ${usd(c.volume)}  ${c.swaps} swaps`;
    this.tip.hidden = false;
  }
}
