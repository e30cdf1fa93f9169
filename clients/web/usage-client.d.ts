/**
 * Types for the usage relay's browser client and store, wire protocol v1 with
 * sources (accounting-v1). The JSON shapes mirror docs/protocol.md; timestamps
 * are ISO 8601 strings.
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

/** The dialect a source speaks. */
export type SourceKind = 'posthog' | 'openrouter' | 'litellm';

/** `percent`: the source reports only how full a window is; `usd`: money spent. */
export type MeterUnit = 'percent' | 'usd';

/**
 * One quantity a source reports, normalized: what clients draw. PostHog's
 * meters are `burst` ("Daily") and `sustained` ("Monthly"), percent only;
 * OpenRouter's `limit`, `today` and `month`, LiteLLM's `budget`, in usd.
 */
export interface Meter {
  /** Unique within its snapshot; alerts and `derived` are keyed by it. */
  id: string;
  label: string;
  unit: MeterUnit;
  /** Null when the source reports only a percentage. */
  used: number | null;
  /** Null when there is no limit (or only a percentage). */
  limit: number | null;
  /** Null when there is no limit. */
  used_percent: number | null;
  /** Null when the meter never resets. */
  reset_at: string | null;
  exceeded: boolean;
}

/** Where one window is heading at its recent burn rate. */
export interface WindowForecast {
  /** Percent per hour over the last hour; null until the window has five minutes of data. */
  burn_rate_percent_per_hour: number | null;
  /** When the window reaches 100 % at that rate; null when not before it resets. */
  projected_limit_at: string | null;
  limit_before_reset: boolean;
}

/** Values the monitor derives from recent snapshots (a v1 extension), keyed by meter id. */
export type Derived = Partial<Record<string, WindowForecast>>;

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
  /** The source's dialect; absent from relays older than sources (then PostHog). */
  kind?: SourceKind;
  fetched_at: string;
  /**
   * The source's own answer: PostHog's `Usage` (the v1 shape, kept for the
   * default source), or the fields the other dialects read.
   */
  usage: Usage | Record<string, unknown>;
  /** The normalized meters; absent from relays older than sources (then `usage.burst`/`sustained`). */
  meters?: Meter[];
  /** Burn rate and projection per meter id; absent or null from a relay that derives none. */
  derived?: Derived | null;
}

/** `usage.threshold_crossed`: a meter first reached `threshold` percent in its window. */
export interface ThresholdCrossed {
  kind: 'threshold_crossed';
  /** The source whose meter it is (absent from relays older than sources). */
  source?: string;
  /** The meter's id: `burst` or `sustained` for PostHog, as in v1. */
  bucket: Bucket | (string & {});
  /** The meter's label (absent from relays older than sources). */
  label?: string | null;
  threshold: number;
  used_percent: number;
  /** When the window the alert belongs to resets; null for a meter that never resets. */
  reset_at: string | null;
  /** The id of the alert rule that fired it; null (or absent) for a configured threshold. */
  rule?: string | null;
}

/** `usage.limit_projected`: at the current burn rate the meter reaches 100 % before it resets. */
export interface LimitProjected {
  kind: 'limit_projected';
  source?: string;
  bucket: Bucket | (string & {});
  label?: string | null;
  projected_at: string;
  reset_at: string | null;
  burn_rate_percent_per_hour: number;
}

/** An alert event's data (a v1 extension), sent once per source, meter, threshold and window. */
export type Alert = ThresholdCrossed | LimitProjected;

/** One meter's value at one point of history. */
export interface MeterReading {
  used_percent: number | null;
  used: number | null;
  reset_at: string | null;
}

/** One point of one source's stored usage history, detailed or downsampled. */
export interface HistoryPoint {
  fetched_at: string;
  seq: number;
  /** Every meter of the snapshot by id (absent from relays older than sources). */
  meters?: Record<string, MeterReading>;
  /** PostHog's windows as v1 sent them; null for other kinds of source. */
  burst_percent: number | null;
  sustained_percent: number | null;
  burst_reset_at: string | null;
  sustained_reset_at: string | null;
}

/** What `getHistory()` asks for; every field is optional. */
export interface HistoryQuery {
  /** The source whose history to read; default: the client's `topic` option's. */
  source?: string | null;
  /** Oldest point wanted: a `Date` or an ISO 8601 string with a zone. */
  since?: Date | string | null;
  /** Newest point wanted. */
  until?: Date | string | null;
  /** 1 to 5000, default 500; more points in the range are thinned evenly, keeping the newest. */
  limit?: number;
  /** Overrides `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** What `getBreakdown()` may group by, nested in this order whatever order they are given in. */
export type BreakdownGroup = 'source' | 'meter' | 'hour' | 'day' | 'month';

/** What `getBreakdown()` asks for; every field is optional. */
export interface BreakdownQuery {
  /**
   * Start of the range (inclusive): a `Date`, an ISO 8601 string with a zone, or
   * `YYYY-MM-DD` (that day's start in the relay's `timezone`). Default: 24 hours before `until`.
   */
  since?: Date | string | null;
  /** End of the range, as `since`. Default: now. */
  until?: Date | string | null;
  /** `"source,day"` or `['source', 'day']`; default: no grouping (only the totals' one row). */
  groupBy?: string | readonly BreakdownGroup[] | null;
  /** Overrides `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** What was used: dollars of `usd` meters, percent points of meters with a limit. */
export interface Consumed {
  /** Null when no `usd` meter is in the group. */
  usd: number | null;
  /** Null when no meter with a limit is in the group. */
  percent: number | null;
}

/** One group of a breakdown: the keys it is grouped by (the others are absent), and its sums. */
export interface BreakdownRow {
  source?: string;
  meter?: string;
  /** ISO 8601 start of the hour, with the relay's offset. */
  hour?: string;
  /** `YYYY-MM-DD`: a calendar day in the relay's `timezone` (23 or 25 hours on a DST day). */
  day?: string;
  /** `YYYY-MM`. */
  month?: string;
  consumed: Consumed;
  polls: number;
  failed_polls: number;
}

/** What `getBreakdown()` resolves with: `GET /api/v1/usage/breakdown`'s object. */
export interface Breakdown {
  period: { start: string; end: string };
  /** The IANA zone days and months are counted in. */
  timezone: string;
  group_by: BreakdownGroup[];
  /** One row per group, in the order of the groups' nesting. */
  breakdown: BreakdownRow[];
  /** The sums over every row, without keys. */
  totals: BreakdownRow;
}

/** What `listReports()` asks for; every field is optional. */
export interface ReportQuery {
  /** The first usage day, `YYYY-MM-DD` in the relay's zone; default: the last 14 closed days. */
  since?: string | null;
  /** One source's reports only. Default: every source. */
  source?: string | null;
  /** Overrides `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** Where daily reports go: an HTTP endpoint (POST), a directory (a file per source and day). */
export type ReportDestination = 'report_url' | 'report_dir';

/**
 * A daily report's state: `failed` waits for someone to act (a destination
 * refused it); `pending` is retried by itself (or the report is not built yet).
 */
export type ReportState = 'pending' | 'delivered' | 'failed';

/** One daily report at one destination. */
export interface ReportDelivery {
  state: ReportState;
  attempts: number;
  last_error: string | null;
  delivered_at: string | null;
}

/** One (source, usage day): its report's state at its destinations (`list_reports`, report events). */
export interface ReportEntry {
  /** `<source>:<usage_day>`. */
  report_id: string;
  source: string;
  /** `YYYY-MM-DD`: the calendar day (in the relay's `timezone`) whose usage the report counts. */
  usage_day: string;
  /** `failed` if a destination failed, else `pending` if one is (or not built), else `delivered`. */
  state: ReportState;
  /** Whether the report is built and saved. */
  saved: boolean;
  /** The tries at every destination. */
  attempts: number;
  /** The latest error of a destination still pending or failed. */
  last_error: string | null;
  /** When the last destination took it (null unless delivered). */
  delivered_at: string | null;
  destinations: Partial<Record<ReportDestination, ReportDelivery>>;
}

/** What `listReports()` resolves with: `GET /api/v1/reports`'s object. */
export interface ReportList {
  /** The IANA zone usage days are counted in. */
  timezone: string;
  /** The destinations configured; empty when reports are only saved. */
  destinations: ReportDestination[];
  /** By usage day, then by source in the relay's order. */
  reports: ReportEntry[];
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

/** One source, as `list_sources` describes it. */
export interface SourceInfo {
  name: string;
  kind: SourceKind;
  /** `usage:<name>`. */
  topic: string;
  status: Status;
  latest: Snapshot | null;
}

/** What `listSources()` resolves with. */
export interface SourceList {
  /** In the relay's configured order. */
  sources: SourceInfo[];
  /** The IANA zone the relay counts days in, e.g. "Europe/London". */
  timezone?: string;
  /** The source behind the `usage` topic. */
  default_source?: string;
}

/** What `subscribe()` resolves with: the relay's subscribe reply, plus the source. */
export interface Subscription {
  topic: string;
  /** The source subscribed to; for `usage`, the default source once known, else null. */
  source: string | null;
  latest: Snapshot | null;
  status: Status;
}

/**
 * `connecting`: first connection; `open`: subscribed, events flowing;
 * `reconnecting`: connection lost, retrying with backoff; `closed`: before
 * `start()` and after `close()`.
 */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface UsageClientOptions {
  /**
   * Topic subscribed at start, and the one calls without a `source` use.
   * Default `"usage"` (the default source); null subscribes nothing at start.
   */
  topic?: string | null;
  /** Sources subscribed at start instead of `topic` (`usage:<source>` each). */
  sources?: readonly string[] | null;
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

/** The client's events: `detail` as in v1, plus where the event comes from. */
export declare class UsageEvent<T> extends CustomEvent<T> {
  constructor(type: string, init: { detail: T; topic: string; source: string | null });
  /** The topic the event came under: `usage` or `usage:<source>`. */
  readonly topic: string;
  /** The source it is about; null while the default source's name is not known. */
  readonly source: string | null;
}

export interface UsageClientEventMap {
  snapshot: UsageEvent<Snapshot>;
  status: UsageEvent<Status>;
  alert: UsageEvent<Alert>;
  /** `usage.report_delivered` (state `delivered`) or `usage.report_failed` (state `failed`). */
  report: UsageEvent<ReportEntry>;
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
export declare const DEFAULT_TOPIC: 'usage';

/** `usage:<source>`, or `usage` without a source. */
export declare function topicFor(source?: string | null): string;
/** The source of `usage:<source>`; null for `usage` and other topics. */
export declare function sourceOfTopic(topic: string): string | null;

/** What a request rejects with. For `upstream_unavailable`, `data` is `{latest: Snapshot | null}`. */
export declare class UsageRequestError extends Error {
  constructor(code: string, message: string, data?: unknown);
  readonly code: UsageErrorCode | (string & {});
  readonly data: unknown;
}

/** A live view of one or more of the relay's sources over one self-healing WebSocket. */
export declare class UsageClient extends EventTarget {
  /** @param url defaults to `ws(s)://<location.host>/ws`; never put a secret in it. */
  constructor(url?: string | URL, options?: UsageClientOptions);
  readonly state: ConnectionState;
  /** The topics subscribed, and subscribed again on every connection. */
  readonly topics: string[];
  /** The source behind the `usage` topic, once known. */
  readonly defaultSource: string | null;
  /** The last snapshot delivered: of `source`, or of any source. From what the client holds. */
  getLatest(options?: { source?: string | null }): Snapshot | null;
  /** The last status delivered: of `source`, or of any source. */
  getStatus(options?: { source?: string | null }): Status | null;
  start(): void;
  close(): void;
  /** Follows `usage:<source>` (or the `topic` option's topic) on this and every later connection. */
  subscribe(source?: string | null): Promise<Subscription>;
  unsubscribe(source?: string | null): Promise<void>;
  listSources(options?: { timeoutMs?: number }): Promise<SourceList>;
  refresh(options?: { source?: string | null; timeoutMs?: number }): Promise<Snapshot>;
  getHistory(query?: HistoryQuery): Promise<HistoryPoint[]>;
  /** Usage summed from the relay's hourly ledger (`get_breakdown`), grouped as asked. */
  getBreakdown(query?: BreakdownQuery): Promise<Breakdown>;
  /** The daily usage reports' states (`list_reports`), by day then source. */
  listReports(query?: ReportQuery): Promise<ReportList>;

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

/** One source's part of a {@link UsageState}. */
export interface SourceState {
  readonly snapshot: Snapshot | null;
  readonly status: Status | null;
}

/** What a {@link UsageStore} holds; a new object on every change. */
export interface UsageState {
  /** The last snapshot delivered, of any source. */
  readonly snapshot: Snapshot | null;
  /** The last status delivered, of any source. */
  readonly status: Status | null;
  /** Per source name, its last snapshot and status. */
  readonly sources: Readonly<Record<string, SourceState>>;
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
