/**
 * Browser client for the usage relay, wire protocol v1 (docs/protocol.md).
 *
 * One `UsageClient` keeps one WebSocket to the relay: it subscribes to the
 * `usage` topic, bootstraps from the subscribe reply, follows `usage.updated`,
 * `usage.status` and the alert events, reconnects by itself with capped,
 * jittered exponential backoff and detects dead connections with the
 * protocol's `ping`.
 * Plain ES module, no dependencies; works in browsers and Electron renderers.
 *
 * @module usage-client
 */

/** The WebSocket subprotocol the client offers. */
export const SUBPROTOCOL = 'usage-relay.v1';

/**
 * @typedef {import('./usage-client.js').Snapshot} Snapshot
 * @typedef {import('./usage-client.js').Status} Status
 * @typedef {import('./usage-client.js').Alert} Alert
 * @typedef {import('./usage-client.js').HistoryPoint} HistoryPoint
 * @typedef {import('./usage-client.js').HistoryQuery} HistoryQuery
 * @typedef {import('./usage-client.js').ConnectionState} ConnectionState
 * @typedef {import('./usage-client.js').UsageClientOptions} UsageClientOptions
 */

/** @type {Required<UsageClientOptions>} */
const DEFAULT_OPTIONS = Object.freeze({
  topic: 'usage',
  requestTimeoutMs: 15_000,
  connectTimeoutMs: 10_000,
  pingIntervalMs: 25_000,
  pingTimeoutMs: 10_000,
  reconnectDelayMs: 500,
  maxReconnectDelayMs: 30_000,
});

/**
 * What a request rejects with: an error reply from the relay (`code` is the
 * protocol's error code, `data` its `error.data`), or one of the client's own
 * codes: `timeout` (no reply in time), `disconnected` (the connection was lost
 * or is not open) and `closed` (`close()` was called).
 */
export class UsageRequestError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {unknown} [data]
   */
  constructor(code, message, data) {
    super(message);
    this.name = 'UsageRequestError';
    /** @type {string} */
    this.code = code;
    /** @type {unknown} */
    this.data = data;
  }
}

/**
 * The alert events (a v1 extension) and the `kind` of alert each carries.
 * @type {ReadonlyMap<string, Alert['kind']>}
 */
const ALERT_KINDS = new Map([
  ['usage.threshold_crossed', 'threshold_crossed'],
  ['usage.limit_projected', 'limit_projected'],
]);

/** `ws://` or `wss://` plus this page's host, path `/ws`. */
function defaultUrl() {
  const scheme = globalThis.location?.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${globalThis.location.host}/ws`;
}

/**
 * A time as the protocol wants it: ISO 8601 with a zone.
 * @param {Date | string | null | undefined} time
 */
function toIso(time) {
  return time instanceof Date ? time.toISOString() : time;
}

/**
 * @param {Snapshot | null} a
 * @param {Snapshot | null} b
 */
function sameSnapshot(a, b) {
  return a !== null && b !== null && a.source === b.source && a.seq === b.seq
    && (a.epoch ?? null) === (b.epoch ?? null)
    && a.fetched_at === b.fetched_at;
}

/**
 * A live view of the relay's usage topic.
 *
 * Events (all `CustomEvent`s):
 * - `snapshot`: `detail` is a new {@link Snapshot}; never one whose `seq` is
 *   not above the last one delivered for its source.
 * - `status`: `detail` is the monitor's {@link Status}, on every change and
 *   after every (re)subscription.
 * - `alert`: `detail` is an {@link Alert} (`usage.threshold_crossed` or
 *   `usage.limit_projected`), as the relay sends it: once per bucket,
 *   threshold and window. Alerts raised while disconnected are not replayed.
 * - `statechange`: `detail` is `{state, previous}` (see {@link UsageClient#state}).
 */
export class UsageClient extends EventTarget {
  /** @type {string} */ #url;
  /** @type {Required<UsageClientOptions>} */ #options;
  /** @type {ConnectionState} */ #state = 'closed';
  /** @type {WebSocket | null} */ #ws = null;
  /** @type {Snapshot | null} */ #latest = null;
  /** @type {Status | null} */ #status = null;
  /** @type {Map<string, {epoch: string | null, seq: number}>} newest seen per source */
  #newestBySource = new Map();
  /** @type {Map<number, {resolve: (r: any) => void, reject: (e: Error) => void, timer: ReturnType<typeof setTimeout>}>} */
  #pending = new Map();
  #nextId = 1;
  #attempt = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #reconnectTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #connectTimer;
  /** @type {ReturnType<typeof setInterval> | undefined} */ #pingTimer;

  /**
   * @param {string | URL} [url] the relay's WebSocket URL; defaults to
   *   `ws(s)://<location.host>/ws`. Never put a secret in it: URLs end up in logs.
   * @param {UsageClientOptions} [options]
   */
  constructor(url = defaultUrl(), options = {}) {
    super();
    this.#url = String(url);
    this.#options = { ...DEFAULT_OPTIONS, ...options };
  }

  /**
   * The connection state: `connecting` (first connection), `open`
   * (subscribed, events flowing), `reconnecting` (connection lost, retrying
   * with backoff) or `closed` (before `start()` and after `close()`).
   * @returns {ConnectionState}
   */
  get state() {
    return this.#state;
  }

  /**
   * The last snapshot delivered, or null before the relay has one.
   * @returns {Snapshot | null}
   */
  getLatest() {
    return this.#latest;
  }

  /**
   * The monitor's last known status, or null before the first subscription.
   * @returns {Status | null}
   */
  getStatus() {
    return this.#status;
  }

  /** Connects and subscribes; reconnects by itself until `close()`. No-op unless closed. */
  start() {
    if (this.#state !== 'closed') return;
    this.#attempt = 0;
    this.#connect('connecting');
  }

  /** Closes the connection for good, rejecting requests in flight with code `closed`. */
  close() {
    if (this.#state === 'closed') return;
    clearTimeout(this.#reconnectTimer);
    this.#teardown(new UsageRequestError('closed', 'the client was closed'));
    this.#setState('closed');
  }

  /**
   * Asks the relay for an immediate poll of the gateway (joining one already
   * in flight) and resolves with the snapshot that poll produced. Rejects with
   * a {@link UsageRequestError}: code `upstream_unavailable` (then
   * `error.data.latest` is the last good snapshot or null), `rate_limited`,
   * `timeout`, `disconnected`, ...
   * @param {{timeoutMs?: number}} [options] overrides `requestTimeoutMs`
   * @returns {Promise<Snapshot>}
   */
  async refresh({ timeoutMs } = {}) {
    const result = await this.#request('refresh', { topic: this.#options.topic }, timeoutMs);
    this.#accept(result.latest);
    return result.latest;
  }

  /**
   * Reads stored usage history (the protocol's `get_history` extension):
   * points in `[since, until]`, oldest first, evenly thinned to `limit`
   * (1 to 5000, default 500) with the newest always kept. Rejects with a
   * {@link UsageRequestError}: `bad_request` for invalid parameters,
   * `unknown_op` from a relay without history, `timeout`, `disconnected`, ...
   * @param {HistoryQuery} [query]
   * @returns {Promise<HistoryPoint[]>}
   */
  async getHistory({ since, until, limit, timeoutMs } = {}) {
    const params = { topic: this.#options.topic, since: toIso(since), until: toIso(until), limit };
    const result = await this.#request('get_history', params, timeoutMs);
    return result.points;
  }

  /** @param {ConnectionState} state */
  #connect(state) {
    const ws = new WebSocket(this.#url, SUBPROTOCOL);
    this.#ws = ws;
    this.#newestBySource.clear();
    ws.addEventListener('open', () => this.#onOpen(ws));
    ws.addEventListener('message', (event) => this.#onMessage(ws, event));
    // An 'error' event is always followed by 'close'.
    ws.addEventListener('close', () => this.#lose(ws, 'the connection closed'));
    this.#connectTimer = setTimeout(
      () => this.#lose(ws, 'connecting timed out'),
      this.#options.connectTimeoutMs,
    );
    this.#setState(state);
  }

  /** @param {WebSocket} ws */
  async #onOpen(ws) {
    if (ws !== this.#ws) return;
    clearTimeout(this.#connectTimer);
    this.#pingTimer = setInterval(() => this.#ping(ws), this.#options.pingIntervalMs);
    let result;
    try {
      result = await this.#request('subscribe', { topic: this.#options.topic });
    } catch (error) {
      this.#lose(ws, `subscribe failed: ${error.message}`);
      return;
    }
    this.#attempt = 0;
    if (result.latest) this.#accept(result.latest);
    this.#setStatus(result.status);
    this.#setState('open');
  }

  /** @param {WebSocket} ws */
  async #ping(ws) {
    try {
      await this.#request('ping', {}, this.#options.pingTimeoutMs);
    } catch (error) {
      // Any reply, even an error, proves the connection alive; silence does not.
      if (error.code === 'timeout') this.#lose(ws, 'no reply to ping');
    }
  }

  /**
   * @param {WebSocket} ws
   * @param {MessageEvent} event
   */
  #onMessage(ws, event) {
    if (ws !== this.#ws || typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message?.type === 'result') {
      this.#settle(message);
    } else if (message?.type === 'event' && message.topic === this.#options.topic) {
      const alertKind = ALERT_KINDS.get(message.event);
      if (message.event === 'usage.updated') this.#accept(message.data);
      else if (message.event === 'usage.status') this.#setStatus(message.data);
      else if (alertKind) this.#alert({ ...message.data, kind: alertKind });
      // Events added by later relay versions are ignored.
    }
  }

  /** @param {{id: unknown, ok: boolean, result?: any, error?: {code: string, message: string, data?: unknown}}} reply */
  #settle(reply) {
    const pending = this.#pending.get(/** @type {number} */ (reply.id));
    // Replies to requests that already timed out, and `id: null` errors, match nothing.
    if (!pending) return;
    this.#pending.delete(/** @type {number} */ (reply.id));
    clearTimeout(pending.timer);
    if (reply.ok) {
      pending.resolve(reply.result);
    } else {
      const { code = 'internal', message = 'request failed', data } = reply.error ?? {};
      pending.reject(new UsageRequestError(code, message, data));
    }
  }

  /**
   * @param {string} op
   * @param {Record<string, unknown>} params
   * @param {number} [timeoutMs]
   * @returns {Promise<any>}
   */
  #request(op, params, timeoutMs = this.#options.requestTimeoutMs) {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new UsageRequestError('disconnected', 'not connected to the relay'));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new UsageRequestError('timeout', `${op} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, op, ...params }));
    });
  }

  /**
   * Delivers a snapshot unless its `seq` is not above the last one seen for its
   * source on this connection within the same `epoch`; a snapshot of another
   * epoch (the relay's store was replaced) starts the count again. The
   * baseline also restarts with each connection; the subscribe reply then
   * re-sends the current snapshot, which is not delivered again if it is the
   * one already held.
   * @param {Snapshot} snapshot
   */
  #accept(snapshot) {
    const epoch = snapshot.epoch ?? null;
    const newest = this.#newestBySource.get(snapshot.source);
    if (newest !== undefined && newest.epoch === epoch && !(snapshot.seq > newest.seq)) return;
    this.#newestBySource.set(snapshot.source, { epoch, seq: snapshot.seq });
    if (sameSnapshot(snapshot, this.#latest)) return;
    this.#latest = snapshot;
    this.dispatchEvent(new CustomEvent('snapshot', { detail: snapshot }));
  }

  /** @param {Status} status */
  #setStatus(status) {
    this.#status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: status }));
  }

  /** @param {Alert} alert */
  #alert(alert) {
    this.dispatchEvent(new CustomEvent('alert', { detail: alert }));
  }

  /** @param {ConnectionState} state */
  #setState(state) {
    const previous = this.#state;
    if (state === previous) return;
    this.#state = state;
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state, previous } }));
  }

  /**
   * Gives up on `ws` (if it is still the current socket) and schedules a reconnect.
   * @param {WebSocket} ws
   * @param {string} reason
   */
  #lose(ws, reason) {
    if (ws !== this.#ws) return;
    this.#teardown(new UsageRequestError('disconnected', reason));
    const { reconnectDelayMs, maxReconnectDelayMs } = this.#options;
    const ceiling = Math.min(maxReconnectDelayMs, reconnectDelayMs * 2 ** this.#attempt);
    this.#attempt += 1;
    // "Equal jitter": between half the ceiling and the ceiling, so clients spread out.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.#reconnectTimer = setTimeout(() => this.#connect('reconnecting'), delay);
    this.#setState('reconnecting');
  }

  /**
   * Detaches and closes the current socket and rejects every request in flight.
   * @param {UsageRequestError} error
   */
  #teardown(error) {
    const ws = this.#ws;
    this.#ws = null;
    clearTimeout(this.#connectTimer);
    clearInterval(this.#pingTimer);
    ws?.close();
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.#pending.clear();
  }
}
