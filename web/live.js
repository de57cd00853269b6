// The WebSocket side (README "WebSocket"): one connection, channels
// `token:<SYMBOL>`, frames checked for gaps by `seq`, reconnects with
// exponential backoff and resumes each channel from the last position it
// saw, so swaps sent while it was away still reach the tape. Everything it
// learns goes to the handlers; the page keeps working from REST while it
// is down.

import { socketUrl } from './api.js';

const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const PING_MS = 20000;
// Channels per subscribe message, well under the server's per-request cap.
const CHANNELS_PER_MESSAGE = 20;

export class Live {
  /**
   * handlers: state(state, detail), stats(channel, stats),
   * swap(channel, swap), candle(channel, candle), gap(channel), error(frame)
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.channels = new Set();
    this.seq = new Map();
    // Per channel, where it was in the server's history: {epoch, offset}.
    this.positions = new Map();
    this.attempt = 0;
    this.socket = null;
    this.retryTimer = null;
    this.pingTimer = null;
    this.heardSincePing = true;
    this.state = 'connecting';
  }

  start() {
    this.connect();
  }

  /** Reconnects now (e.g. after the API key changed). */
  restart() {
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    this.connect();
  }

  get connected() {
    return this.state === 'connected';
  }

  /**
   * Keeps these channels subscribed, now and after every reconnect, in the
   * order first asked for (so the shown token goes first when a server caps
   * the channels of a connection).
   */
  want(channels) {
    const fresh = channels.filter((c) => !this.channels.has(c));
    fresh.forEach((c) => this.channels.add(c));
    if (this.connected) this.subscribe(fresh);
  }

  /** No longer keeps these channels subscribed. */
  unwant(channels) {
    const known = channels.filter((c) => this.channels.delete(c));
    known.forEach((c) => this.positions.delete(c));
    if (this.connected && known.length > 0) this.send({ op: 'unsubscribe', channels: known });
  }

  subscribe(channels) {
    for (let i = 0; i < channels.length; i += CHANNELS_PER_MESSAGE) {
      const chunk = channels.slice(i, i + CHANNELS_PER_MESSAGE);
      const since = Object.fromEntries(chunk.filter((c) => this.positions.has(c)).map((c) => [c, this.positions.get(c)]));
      const message = { op: 'subscribe', channels: chunk };
      if (Object.keys(since).length > 0) message.since = since;
      this.send(message);
    }
  }

  /** Remembers the newest position a frame gave for its channel. */
  advance(frame) {
    const position = this.positions.get(frame.channel);
    if (position && typeof frame.offset === 'string') position.offset = frame.offset;
  }

  setState(state, detail = '') {
    this.state = state;
    this.handlers.state(state, detail);
  }

  connect() {
    this.setState('connecting');
    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (error) {
      this.scheduleRetry(String(error));
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.seq.clear();
      this.setState('connected');
      this.subscribe([...this.channels]);
      this.heardSincePing = true;
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.ping(), PING_MS);
    };
    socket.onmessage = (event) => {
      this.heardSincePing = true;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.dispatch(frame);
    };
    socket.onclose = (event) => {
      clearInterval(this.pingTimer);
      this.socket = null;
      const why =
        event.code === 4008 ? 'dropped as a slow consumer' : event.code === 1006 ? 'cannot connect' : event.reason || `closed (${event.code})`;
      this.scheduleRetry(why);
    };
    // An error is always followed by close, which retries.
    socket.onerror = () => {};
  }

  scheduleRetry(why) {
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.setState('disconnected', `${why}; retry in ${Math.round(delay / 1000)}s`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  ping() {
    if (!this.heardSincePing) {
      // Nothing since the last ping, not even a pong: the peer is gone.
      this.socket?.close();
      return;
    }
    this.heardSincePing = false;
    this.send({ op: 'ping' });
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  /** Frames on a channel carry seq 0, 1, 2...; a jump means frames were lost. */
  inOrder(frame) {
    if (typeof frame.seq !== 'number') return true;
    const last = this.seq.get(frame.channel);
    this.seq.set(frame.channel, frame.seq);
    if (frame.type === 'subscribed' || last === undefined || frame.seq === last + 1) return true;
    this.handlers.gap(frame.channel);
    return false;
  }

  dispatch(frame) {
    switch (frame.type) {
      case 'subscribed':
        if (frame.already) break;
        this.inOrder(frame);
        if (typeof frame.epoch === 'string') this.positions.set(frame.channel, { epoch: frame.epoch, offset: frame.offset });
        if (frame.snapshot) this.handlers.stats(frame.channel, frame.snapshot);
        // The swaps missed while away could not be had: take REST's truth.
        if (frame.recovered === false) this.handlers.gap(frame.channel);
        break;
      case 'stats':
        this.inOrder(frame);
        this.handlers.stats(frame.channel, frame.stats);
        break;
      case 'swap':
        this.inOrder(frame);
        this.advance(frame);
        this.handlers.swap(frame.channel, frame.swap);
        break;
      case 'candle':
        this.inOrder(frame);
        this.handlers.candle(frame.channel, frame.candle);
        break;
      case 'skipped':
        // Frames dropped for a slow reader: the newest stats, then REST.
        this.seq.set(frame.channel, frame.seq);
        this.advance(frame);
        if (frame.stats) this.handlers.stats(frame.channel, frame.stats);
        this.handlers.gap(frame.channel);
        break;
      case 'unsubscribed':
        this.seq.delete(frame.channel);
        this.positions.delete(frame.channel);
        break;
      case 'error':
        this.handlers.error(frame);
        break;
      default:
        break;
    }
  }
}
