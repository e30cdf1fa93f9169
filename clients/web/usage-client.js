/**
 * Browser client for the usage relay, wire protocol v1 (docs/protocol.md) with
 * its sources (accounting-v1: topics `usage` and `usage:<source>`).
 *
 * One `UsageClient` keeps one WebSocket to the relay: it subscribes to the
 * `usage` topic (the default source) or to any number of sources' topics,
 * bootstraps from the subscribe replies, follows `usage.updated`,
 * `usage.status`, the alert and the daily report events of each,
 * resubscribes every topic after a reconnect (capped, jittered exponential
 * backoff) and detects dead connections with the protocol's `ping`.
 * Plain ES module, no dependencies; works in browsers and Electron renderers.
 *
 * @module usage-client
 */

/** The WebSocket subprotocol the client offers. */
export const SUBPROTOCOL = 'usage-relay.v1';

/** The topic of the relay's default source, exactly as in v1. */
export const DEFAULT_TOPIC = 'usage';
const SOURCE_TOPIC_PREFIX = `${DEFAULT_TOPIC}:`;

/**
 * The topic of one source: `usage:<source>`; `usage` (the default source)
 * when `source` is null or undefined.
 * @param {string | null | undefined} source
 * @returns {string}
 */
export function topicFor(source) {
  return source === null || source === undefined ? DEFAULT_TOPIC : SOURCE_TOPIC_PREFIX + source;
}

/**
 * The source a topic names: `eu` for `usage:eu`, null for `usage` (whose
 * source is whichever one the relay serves by default) and for other topics.
 * @param {string} topic
 * @returns {string | null}
 */
export function sourceOfTopic(topic) {
  return topic.startsWith(SOURCE_TOPIC_PREFIX) ? topic.slice(SOURCE_TOPIC_PREFIX.length) : null;
}

/**
 * What the client's events are: a `CustomEvent` whose `detail` is as before,
 * plus the `topic` the event came under and the `source` it is about (null
 * while the name of the default source is not known).
 * @template T
 * @extends {CustomEvent<T>}
 */
export class UsageEvent extends CustomEvent {
  /**
   * @param {string} type
   * @param {{detail: T, topic: string, source: string | null}} init
   */
  constructor(type, { detail, topic, source }) {
    super(type, { detail });
    /** @type {string} */
    this.topic = topic;
    /** @type {string | null} */
    this.source = source;
  }
}

/**
 * @typedef {import('./usage-client.js').Snapshot} Snapshot
 * @typedef {import('./usage-client.js').Status} Status
 * @typedef {import('./usage-client.js').Alert} Alert
 * @typedef {import('./usage-client.js').HistoryPoint} HistoryPoint
 * @typedef {import('./usage-client.js').HistoryQuery} HistoryQuery
 * @typedef {import('./usage-client.js').Breakdown} Breakdown
 * @typedef {import('./usage-client.js').BreakdownQuery} BreakdownQuery
 * @typedef {import('./usage-client.js').ReportEntry} ReportEntry
 * @typedef {import('./usage-client.js').ReportList} ReportList
 * @typedef {import('./usage-client.js').ReportQuery} ReportQuery
 * @typedef {import('./usage-client.js').SourceList} SourceList
 * @typedef {import('./usage-client.js').Subscription} Subscription
 * @typedef {import('./usage-client.js').ConnectionState} ConnectionState
 * @typedef {import('./usage-client.js').UsageClientOptions} UsageClientOptions
 */

/** @type {Required<UsageClientOptions>} */
const DEFAULT_OPTIONS = Object.freeze({
  topic: DEFAULT_TOPIC,
  sources: null,
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

/**
 * The daily report events (accounting-v1 section 3), both delivered as `report`:
 * the entry's `state` (`delivered` or `failed`) tells them apart.
 */
const REPORT_EVENTS = new Set(['usage.report_delivered', 'usage.report_failed']);

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
 * @param {Snapshot | null | undefined} a
 * @param {Snapshot | null | undefined} b
 */
function sameSnapshot(a, b) {
  return Boolean(a) && Boolean(b) && a.source === b.source && a.seq === b.seq
    && (a.epoch ?? null) === (b.epoch ?? null)
    && a.fetched_at === b.fetched_at;
}

/**
 * A live view of one or more of the relay's sources.
 *
 * Events (all {@link UsageEvent}s but `statechange`: `event.topic` is the
 * topic the event came under, `event.source` the source it is about):
 * - `snapshot`: `detail` is a new {@link Snapshot}; never one whose `seq` is
 *   not above the last one delivered for its source (within one `epoch`).
 * - `status`: `detail` is the monitor's {@link Status} for that source, on
 *   every change and after every (re)subscription.
 * - `alert`: `detail` is an {@link Alert} (`usage.threshold_crossed` or
 *   `usage.limit_projected`), as the relay sends it: once per source, meter,
 *   threshold and window. Alerts raised while disconnected are not replayed.
 * - `report`: `detail` is the {@link ReportEntry} of one source's daily usage
 *   report (`usage.report_delivered`, state `delivered`, or
 *   `usage.report_failed`, state `failed`). Not replayed either: read
 *   `listReports()` after a reconnect.
 * - `statechange`: a `CustomEvent` whose `detail` is `{state, previous}`
 *   (see {@link UsageClient#state}).
 */
export class UsageClient extends EventTarget {
  /** @type {string} */ #url;
  /** @type {Required<UsageClientOptions>} */ #options;
  /** @type {ConnectionState} */ #state = 'closed';
  /** @type {WebSocket | null} */ #ws = null;
  /** @type {Set<string>} the topics subscribed, and subscribed again on every connection */
  #topics;
  /** @type {Set<string>} the topics whose subscription the relay confirmed on this connection */
  #confirmed = new Set();
  /** @type {Map<string, {resolve: (s: Subscription) => void, reject: (e: Error) => void}[]>} */
  #waiters = new Map();
  /** @type {Snapshot | null} the last snapshot delivered, of any source */
  #latest = null;
  /** @type {Status | null} the last status delivered, of any source */
  #status = null;
  /** @type {Map<string, Snapshot>} the last snapshot delivered per source */
  #latestBySource = new Map();
  /** @type {Map<string, Status>} the last status delivered per topic */
  #statusByTopic = new Map();
  /** @type {string | null} the name of the source behind the `usage` topic, once known */
  #defaultSource = null;
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
    const { sources, topic } = this.#options;
    this.#topics = new Set(sources ? sources.map(topicFor) : topic === null ? [] : [topic]);
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
   * The topics subscribed (and subscribed again after every reconnect), in
   * the order they were first subscribed.
   * @returns {string[]}
   */
  get topics() {
    return [...this.#topics];
  }

  /**
   * The name of the relay's default source (the one behind the `usage`
   * topic), once a snapshot on that topic or `listSources()` told it; else null.
   * @returns {string | null}
   */
  get defaultSource() {
    return this.#defaultSource;
  }

  /**
   * The last snapshot delivered: of `source`, or of any source without one.
   * Null before there is one. Answers from what the client holds, without
   * asking the relay.
   * @param {{source?: string | null}} [options]
   * @returns {Snapshot | null}
   */
  getLatest({ source } = {}) {
    if (source === undefined || source === null) return this.#latest;
    return this.#latestBySource.get(source) ?? null;
  }

  /**
   * The monitor's last known status: of `source`, or the last one delivered
   * of any source without one. Null before the first subscription.
   * @param {{source?: string | null}} [options]
   * @returns {Status | null}
   */
  getStatus({ source } = {}) {
    if (source === undefined || source === null) return this.#status;
    const own = this.#statusByTopic.get(topicFor(source));
    if (own !== undefined) return own;
    return source === this.#defaultSource ? (this.#statusByTopic.get(DEFAULT_TOPIC) ?? null) : null;
  }

  /**
   * Subscribes to a source's topic (`usage:<source>`; without `source`, the
   * client's `topic` option, `usage` by default) on this and every later
   * connection. Idempotent. Resolves with the subscribe reply once it is made:
   * at once while connected, else on the next connection (so it may be called
   * before `start()`). Its snapshot and status are also delivered as events.
   * Rejects with a {@link UsageRequestError}: `unknown_topic` (the topic is
   * then dropped), `disconnected` (the topic stays and is subscribed again on
   * the next connection), `closed` (`close()` was called before it was made), ...
   * @param {string | null} [source]
   * @returns {Promise<Subscription>}
   */
  subscribe(source) {
    const topic = this.#topicOf(source);
    this.#topics.add(topic);
    if (this.#ws?.readyState === WebSocket.OPEN) return this.#subscribeTopic(topic);
    return new Promise((resolve, reject) => {
      const waiting = this.#waiters.get(topic) ?? [];
      waiting.push({ resolve, reject });
      this.#waiters.set(topic, waiting);
    });
  }

  /**
   * Stops following a source's topic (the same topic `subscribe(source)`
   * names); its events are no longer delivered. Resolves once the relay
   * confirmed it, or at once when not connected.
   * @param {string | null} [source]
   * @returns {Promise<void>}
   */
  async unsubscribe(source) {
    const topic = this.#topicOf(source);
    if (!this.#topics.delete(topic)) return;
    this.#confirmed.delete(topic);
    this.#settleWaiters(topic, null, new UsageRequestError('closed', `unsubscribed from ${topic}`));
    if (this.#ws?.readyState !== WebSocket.OPEN) return;
    await this.#request('unsubscribe', { topic });
  }

  /**
   * The relay's sources (the `list_sources` op): each with its name, kind,
   * topic, status and latest snapshot, plus the relay's `timezone` and its
   * `default_source`. Rejects with `unknown_op` from a relay that has only
   * its one v1 source, and like any request with `timeout`, `disconnected`, ...
   * @param {{timeoutMs?: number}} [options] overrides `requestTimeoutMs`
   * @returns {Promise<SourceList>}
   */
  async listSources({ timeoutMs } = {}) {
    const result = await this.#request('list_sources', {}, timeoutMs);
    if (typeof result.default_source === 'string') this.#defaultSource = result.default_source;
    return result;
  }

  /** Connects and subscribes; reconnects by itself until `close()`. No-op unless closed. */
  start() {
    if (this.#state !== 'closed') return;
    this.#attempt = 0;
    this.#connect('connecting');
  }

  /**
   * Closes the connection for good, rejecting requests in flight and
   * subscriptions not yet made with code `closed`. The topics are kept: a
   * later `start()` subscribes them again.
   */
  close() {
    if (this.#state === 'closed') return;
    clearTimeout(this.#reconnectTimer);
    const error = new UsageRequestError('closed', 'the client was closed');
    this.#teardown(error);
    for (const topic of [...this.#waiters.keys()]) this.#settleWaiters(topic, null, error);
    this.#setState('closed');
  }

  /**
   * Asks the relay for an immediate poll of one source (`source`, else the
   * client's `topic` option's), joining one already in flight, and resolves
   * with the snapshot that poll produced. Other sources are not polled.
   * Rejects with a {@link UsageRequestError}: code `upstream_unavailable`
   * (then `error.data.latest` is the last good snapshot or null),
   * `unknown_topic`, `rate_limited`, `timeout`, `disconnected`, ...
   * @param {{source?: string | null, timeoutMs?: number}} [options] `timeoutMs`
   *   overrides `requestTimeoutMs`
   * @returns {Promise<Snapshot>}
   */
  async refresh({ source, timeoutMs } = {}) {
    const topic = this.#topicOf(source);
    const result = await this.#request('refresh', { topic }, timeoutMs);
    this.#accept(result.latest, topic);
    return result.latest;
  }

  /**
   * Reads stored usage history (the protocol's `get_history` extension):
   * points in `[since, until]`, oldest first, evenly thinned to `limit`
   * (1 to 5000, default 500) with the newest always kept. Rejects with a
   * {@link UsageRequestError}: `bad_request` for invalid parameters,
   * `unknown_topic`, `unknown_op` from a relay without history, `timeout`,
   * `disconnected`, ... Of `source`, else of the client's `topic` option's.
   * @param {HistoryQuery} [query]
   * @returns {Promise<HistoryPoint[]>}
   */
  async getHistory({ source, since, until, limit, timeoutMs } = {}) {
    const topic = this.#topicOf(source);
    const params = { topic, since: toIso(since), until: toIso(until), limit };
    const result = await this.#request('get_history', params, timeoutMs);
    return result.points;
  }

  /**
   * Reads usage summed from the relay's hourly metering ledger (the
   * `get_breakdown` op, accounting-v1 section 2): every source's consumption
   * from `since` to `until`, grouped by any of `source`, `meter`, `hour`, `day`,
   * `month` (nested in that order), with the totals. `since` and `until` are
   * `Date`s, ISO 8601 strings with a zone, or `YYYY-MM-DD` (that day's start
   * in the relay's `timezone`); without them, the last 24 hours. Days and
   * months are calendar days and months in the relay's `timezone`. The relay
   * answers one stored read (history or breakdown) per connection at a time:
   * another one sent meanwhile rejects with `rate_limited`. Rejects with a
   * {@link UsageRequestError}: `bad_request` (an unknown group, a reversed,
   * unparseable or over-400-day range; `message` names the parameter),
   * `unknown_op` from a relay without a ledger, `rate_limited`, `timeout`,
   * `disconnected`, ...
   * @param {BreakdownQuery} [query]
   * @returns {Promise<Breakdown>}
   */
  async getBreakdown({ since, until, groupBy, timeoutMs } = {}) {
    const group_by = Array.isArray(groupBy) ? [...groupBy] : groupBy;
    const params = { since: toIso(since), until: toIso(until), group_by };
    return this.#request('get_breakdown', params, timeoutMs);
  }

  /**
   * Reads the state of the daily usage reports (the `list_reports` op,
   * accounting-v1 section 3, the same object as `GET /api/v1/reports`): one
   * entry per source and usage day due, `pending`, `delivered` or `failed`,
   * ordered by day then source, with the relay's `timezone` and its
   * `destinations`. `since` is a day (`YYYY-MM-DD`, in the relay's zone;
   * default: the last 14 closed days), `source` a source's name (default:
   * every source). A stored read like `getBreakdown()`: one per connection at
   * a time. Rejects with a {@link UsageRequestError}: `bad_request` (a `since`
   * that is not a day), `unknown_topic` (an unknown source), `unknown_op`
   * from a relay without reports, `rate_limited`, `timeout`, `disconnected`, ...
   * @param {ReportQuery} [query]
   * @returns {Promise<ReportList>}
   */
  async listReports({ since, source, timeoutMs } = {}) {
    return this.#request('list_reports', { since, source }, timeoutMs);
  }

  /** @param {ConnectionState} state */
  #connect(state) {
    this.#confirmed.clear();
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

  /**
   * The topic a call means: `usage:<source>`, or without a source the
   * client's `topic` option (`usage` when that is null).
   * @param {string | null | undefined} source
   */
  #topicOf(source) {
    if (source === undefined || source === null) return this.#options.topic ?? DEFAULT_TOPIC;
    return topicFor(source);
  }

  /**
   * Subscribes to every topic, all at once; the connection is `open` once
   * every reply has been handled. A topic the relay does not serve
   * (`unknown_topic`) is dropped; any other failure drops the connection.
   * @param {WebSocket} ws
   */
  async #onOpen(ws) {
    if (ws !== this.#ws) return;
    clearTimeout(this.#connectTimer);
    this.#pingTimer = setInterval(() => this.#ping(ws), this.#options.pingIntervalMs);
    const subscribing = [...this.#topics].map((topic) =>
      this.#subscribeTopic(topic).catch((error) => {
        if (error.code !== 'unknown_topic') throw error;
      }),
    );
    try {
      await Promise.all(subscribing);
    } catch (error) {
      this.#lose(ws, `subscribe failed: ${error.message}`);
      return;
    }
    if (ws !== this.#ws) return;
    this.#attempt = 0;
    this.#setState('open');
  }

  /**
   * Sends `subscribe` for `topic` and delivers its reply's snapshot and status.
   * @param {string} topic
   * @returns {Promise<Subscription>}
   */
  async #subscribeTopic(topic) {
    let result;
    try {
      result = await this.#request('subscribe', { topic });
    } catch (error) {
      if (error.code === 'unknown_topic') {
        this.#topics.delete(topic);
        this.#settleWaiters(topic, null, error);
      }
      throw error;
    }
    // Unsubscribed while the reply was on its way: nothing to deliver.
    if (!this.#topics.has(topic)) return { ...result, topic, source: null };
    this.#confirmed.add(topic);
    if (result.latest) this.#accept(result.latest, topic);
    if (result.status) this.#setStatus(result.status, topic);
    const subscription = { ...result, topic, source: this.#sourceOf(topic, result.latest) };
    this.#settleWaiters(topic, subscription, null);
    return subscription;
  }

  /**
   * Resolves (or with `error`, rejects) everyone waiting for `topic`'s subscription.
   * @param {string} topic
   * @param {Subscription | null} subscription
   * @param {Error | null} error
   */
  #settleWaiters(topic, subscription, error) {
    const waiting = this.#waiters.get(topic);
    if (waiting === undefined) return;
    this.#waiters.delete(topic);
    for (const { resolve, reject } of waiting) {
      if (error) reject(error);
      else resolve(/** @type {Subscription} */ (subscription));
    }
  }

  /**
   * The source an event of `topic` is about: the topic's own for
   * `usage:<source>`; for `usage`, the one its data names, else the default
   * source once known. Learns the default source's name on the way.
   * @param {string} topic
   * @param {{source?: unknown} | null | undefined} [data]
   * @returns {string | null}
   */
  #sourceOf(topic, data) {
    const named = sourceOfTopic(topic);
    if (named !== null) return named;
    if (typeof data?.source === 'string') {
      if (topic === DEFAULT_TOPIC) this.#defaultSource = data.source;
      return data.source;
    }
    return topic === DEFAULT_TOPIC ? this.#defaultSource : null;
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
    } else if (message?.type === 'event' && this.#topics.has(message.topic)) {
      const { topic, data } = message;
      const isSnapshot = message.event === 'usage.updated';
      const isReport = REPORT_EVENTS.has(message.event);
      const named = isSnapshot || isReport || ALERT_KINDS.has(message.event);
      const source = this.#sourceOf(topic, named ? data : null);
      // The default source's events also come under its own topic once the relay has
      // that subscription: from its reply on, every event comes twice.
      if (topic === DEFAULT_TOPIC && source !== null && this.#confirmed.has(topicFor(source))) {
        return;
      }
      const alertKind = ALERT_KINDS.get(message.event);
      if (isSnapshot) this.#accept(data, topic);
      else if (message.event === 'usage.status') this.#setStatus(data, topic);
      else if (alertKind) this.#alert({ ...data, kind: alertKind }, topic, source);
      else if (isReport) this.#report(data, topic, source);
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
   * source on this connection within the same `epoch` (each source counts its
   * own `seq`); a snapshot of another epoch (the relay's store was replaced)
   * starts that source's count again. The baseline also restarts with each
   * connection; the subscribe reply then re-sends the current snapshot, which
   * is not delivered again if it is the one already held.
   * @param {Snapshot} snapshot
   * @param {string} topic the topic it came under
   */
  #accept(snapshot, topic) {
    const source = this.#sourceOf(topic, snapshot) ?? snapshot.source;
    const epoch = snapshot.epoch ?? null;
    const newest = this.#newestBySource.get(snapshot.source);
    if (newest !== undefined && newest.epoch === epoch && !(snapshot.seq > newest.seq)) return;
    this.#newestBySource.set(snapshot.source, { epoch, seq: snapshot.seq });
    if (sameSnapshot(snapshot, this.#latestBySource.get(snapshot.source))) return;
    this.#latestBySource.set(snapshot.source, snapshot);
    this.#latest = snapshot;
    this.dispatchEvent(new UsageEvent('snapshot', { detail: snapshot, topic, source }));
  }

  /**
   * @param {Status} status
   * @param {string} topic
   */
  #setStatus(status, topic) {
    this.#statusByTopic.set(topic, status);
    this.#status = status;
    const source = this.#sourceOf(topic);
    this.dispatchEvent(new UsageEvent('status', { detail: status, topic, source }));
  }

  /**
   * @param {Alert} alert
   * @param {string} topic
   * @param {string | null} source
   */
  #alert(alert, topic, source) {
    this.dispatchEvent(new UsageEvent('alert', { detail: alert, topic, source }));
  }

  /**
   * @param {ReportEntry} entry
   * @param {string} topic
   * @param {string | null} source
   */
  #report(entry, topic, source) {
    this.dispatchEvent(new UsageEvent('report', { detail: entry, topic, source }));
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
