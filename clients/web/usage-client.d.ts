/**
 * Types for the usage relay's browser client and store, wire protocol v1.
 * The JSON shapes mirror docs/protocol.md; timestamps are ISO 8601 strings.
 */

/** One cost window: `burst` (shown as "Daily") or `sustained` ("Monthly"). */
export interface UsageWindow {
  /** 0 to 100, rounded to 0.1 by the gateway; 100 for a window without a limit. */
  used_percent: number;
  /** When the window resets (always present, ISO 8601 with an offset). */
  reset_at: string;
  exceeded: boolean;
  /** Fields a newer gateway adds are passed through. */
  [extra: string]: unknown;
}

/** The gateway's usage object for one product and user. */
export interface Usage {
  product: string;
  user_id: number | string | null;
  burst: UsageWindow;
  sustained: UsageWindow;
  /** `burst.exceeded || sustained.exceeded`. */
  is_rate_limited: boolean;
  is_pro: boolean | null;
  billing_period_end: string | null;
  /** Fields a newer gateway adds (`ai_credits`, ...) are passed through. */
  [extra: string]: unknown;
}

export type Bucket = 'burst' | 'sustained';

/** Where one window is heading at its recent burn rate. */
export interface WindowForecast {
  /** Percent per hour over the last hour; null until the window has five minutes of data. */
  burn_rate_percent_per_hour: number | null;
  /** When the window reaches 100 % at that rate; null when not before it resets. */
  projected_limit_at: string | null;
  limit_before_reset: boolean;
}

/** Values the monitor derives from recent snapshots (a v1 extension). */
export interface Derived {
  burst: WindowForecast;
  sustained: WindowForecast;
}

/** What the relay sends after each successful poll of a source. */
export interface Snapshot {
  /** Rises by one with each successful poll of `source`, within one `epoch`. */
  seq: number;
  /**
   * The relay store's random id (a v1 extension): when it changes, the store
   * was replaced and `seq` may start again from 1. Absent from older relays.
   */
  epoch?: string | null;
  source: string;
  fetched_at: string;
  usage: Usage;
  /** Burn rate and projection per window; absent or null from a relay that derives none. */
  derived?: Derived | null;
}

/** `usage.threshold_crossed`: a bucket first reached `threshold` percent in its window. */
export interface ThresholdCrossed {
  kind: 'threshold_crossed';
  bucket: Bucket;
  threshold: number;
  used_percent: number;
  /** When the window the alert belongs to resets. */
  reset_at: string;
}

/** `usage.limit_projected`: at the current burn rate the bucket reaches 100 % before it resets. */
export interface LimitProjected {
  kind: 'limit_projected';
  bucket: Bucket;
  projected_at: string;
  reset_at: string;
  burn_rate_percent_per_hour: number;
}

/** An alert event's data (a v1 extension), sent once per bucket, threshold and window. */
export type Alert = ThresholdCrossed | LimitProjected;

/** One point of stored usage history, detailed or downsampled. */
export interface HistoryPoint {
  fetched_at: string;
  seq: number;
  burst_percent: number;
  sustained_percent: number;
  burst_reset_at: string;
  sustained_reset_at: string;
}

/** What `getHistory()` asks for; every field is optional. */
export interface HistoryQuery {
  /** Oldest point wanted: a `Date` or an ISO 8601 string with a zone. */
  since?: Date | string | null;
  /** Newest point wanted. */
  until?: Date | string | null;
  /** 1 to 5000, default 500; more points in the range are thinned evenly, keeping the newest. */
  limit?: number;
  /** Overrides `requestTimeoutMs`. */
  timeoutMs?: number;
}

export type MonitorState = 'starting' | 'ok' | 'degraded' | 'auth_error' | 'stopped';

/** The monitor's health, as carried by `usage.status` events. */
export interface Status {
  state: MonitorState;
  consecutive_failures: number;
  last_error: string | null;
  last_success_at: string | null;
  next_poll_at: string | null;
}

/**
 * `connecting`: first connection; `open`: subscribed, events flowing;
 * `reconnecting`: connection lost, retrying with backoff; `closed`: before
 * `start()` and after `close()`.
 */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface UsageClientOptions {
  /** Topic to subscribe to. Default `"usage"`. */
  topic?: string;
  /** Default time a request waits for its reply. Default 15 000 ms. */
  requestTimeoutMs?: number;
  /** Time a connection attempt may take before it is abandoned. Default 10 000 ms. */
  connectTimeoutMs?: number;
  /** How often the protocol's `ping` is sent. Default 25 000 ms. */
  pingIntervalMs?: number;
  /** A `ping` without a reply in this time drops the connection. Default 10 000 ms. */
  pingTimeoutMs?: number;
  /** Ceiling of the first reconnect delay; it doubles per failed attempt. Default 500 ms. */
  reconnectDelayMs?: number;
  /** Cap of the reconnect delay ceiling. Default 30 000 ms. */
  maxReconnectDelayMs?: number;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
}

export interface UsageClientEventMap {
  snapshot: CustomEvent<Snapshot>;
  status: CustomEvent<Status>;
  alert: CustomEvent<Alert>;
  statechange: CustomEvent<StateChange>;
}

/** Error codes from the protocol, plus the client's own `timeout`, `disconnected`, `closed`. */
export type UsageErrorCode =
  | 'bad_request'
  | 'unknown_op'
  | 'unknown_topic'
  | 'upstream_unavailable'
  | 'rate_limited'
  | 'unauthorized'
  | 'internal'
  | 'timeout'
  | 'disconnected'
  | 'closed';

export declare const SUBPROTOCOL: 'usage-relay.v1';

/** What a request rejects with. For `upstream_unavailable`, `data` is `{latest: Snapshot | null}`. */
export declare class UsageRequestError extends Error {
  constructor(code: string, message: string, data?: unknown);
  readonly code: UsageErrorCode | (string & {});
  readonly data: unknown;
}

/** A live view of the relay's usage topic over one self-healing WebSocket. */
export declare class UsageClient extends EventTarget {
  /** @param url defaults to `ws(s)://<location.host>/ws`; never put a secret in it. */
  constructor(url?: string | URL, options?: UsageClientOptions);
  readonly state: ConnectionState;
  getLatest(): Snapshot | null;
  getStatus(): Status | null;
  start(): void;
  close(): void;
  refresh(options?: { timeoutMs?: number }): Promise<Snapshot>;
  getHistory(query?: HistoryQuery): Promise<HistoryPoint[]>;

  addEventListener<K extends keyof UsageClientEventMap>(
    type: K,
    listener: (this: UsageClient, event: UsageClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof UsageClientEventMap>(
    type: K,
    listener: (this: UsageClient, event: UsageClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** What a {@link UsageStore} holds; a new object on every change. */
export interface UsageState {
  readonly snapshot: Snapshot | null;
  readonly status: Status | null;
  readonly connection: ConnectionState;
  /** The latest alerts not dismissed, newest first (at most 10). */
  readonly alerts: readonly Alert[];
}

/** A framework-agnostic store over a client (see store.js); fits React's `useSyncExternalStore`. */
export interface UsageStore {
  getSnapshot(): UsageState;
  /** Calls `listener` after every change; returns the function that unsubscribes it. */
  subscribe(listener: (state: UsageState) => void): () => void;
  /** Removes `alert` (an element of `alerts`) from the state. */
  dismissAlert(alert: Alert): void;
}
