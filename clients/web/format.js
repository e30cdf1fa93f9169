/**
 * Pure formatting for the dashboard: percentages, dollar amounts, meters,
 * reset labels, the one-line summary, burn rates and projections, alerts,
 * freshness and status texts.
 * No DOM, no clock of its own: every function that depends on time takes
 * `now` (milliseconds since the epoch).
 *
 * @module format
 */

/**
 * @typedef {import('./usage-client.js').Usage} Usage
 * @typedef {import('./usage-client.js').UsageWindow} UsageWindow
 * @typedef {import('./usage-client.js').Status} Status
 * @typedef {import('./usage-client.js').WindowForecast} WindowForecast
 * @typedef {import('./usage-client.js').Alert} Alert
 * @typedef {import('./usage-client.js').Meter} Meter
 * @typedef {import('./usage-client.js').SourceKind} SourceKind
 * @typedef {import('./usage-client.js').MonitorState} MonitorState
 */

/** How people name the gateway's two windows. */
export const BUCKET_NAMES = Object.freeze({ burst: 'Daily', sustained: 'Monthly' });

/** How people name the kinds of source. */
export const KIND_NAMES = Object.freeze({
  posthog: 'PostHog',
  openrouter: 'OpenRouter',
  litellm: 'LiteLLM',
});

/** The monitor's states in a word or two, for a source's badge. */
export const STATE_NAMES = Object.freeze({
  starting: 'Starting',
  ok: 'OK',
  degraded: 'Degraded',
  auth_error: 'Auth error',
  stopped: 'Stopped',
});

/** Absorbs binary floating-point noise such as 37.49999999 before rounding down. */
const EPSILON = 1e-9;

/**
 * A used_percent as the page shows it, in text, bars and the chart: clamped to
 * 0..100, and 0 for anything that is not a number (NaN included).
 * @param {number} value
 * @returns {number}
 */
export function clampPercent(value) {
  return Math.min(100, Math.max(0, Number(value) || 0));
}

/**
 * Percent used as people expect to read it: whole numbers from 10 % up
 * ("37%"), one decimal below ("0.4%", "5%"). Rounds down, so "100%" appears
 * only when the window is full.
 * @param {number} value used_percent, 0 to 100
 * @returns {string}
 */
export function formatPercent(value) {
  const percent = clampPercent(value);
  if (percent >= 10) return `${Math.floor(percent + EPSILON)}%`;
  const tenths = Math.floor(percent * 10 + EPSILON);
  return `${tenths % 10 === 0 ? tenths / 10 : (tenths / 10).toFixed(1)}%`;
}

/**
 * Whether a window or meter shows "Limit reached": exceeded, or at 100 %. A
 * meter without a limit (no used_percent) is never at it.
 * @param {UsageWindow | Meter} window
 */
export function isLimitReached(window) {
  return window.exceeded || (window.used_percent ?? 0) >= 100;
}

/** Dollars with cents and thousands separators; halves of a cent go to the even cent. */
const USD = new Intl.NumberFormat('en-US', {
  style: 'currency',
  currency: 'USD',
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
  roundingMode: 'halfEven',
});

/**
 * An amount in US dollars: "$12.50", "$1,234.50". Negative amounts and
 * anything that is not a number read "$0.00".
 * @param {number} value
 * @returns {string}
 */
export function formatUsd(value) {
  return USD.format(Math.max(0, Number(value) || 0));
}

/**
 * What a meter's number reads: its percent for a meter with one ("37%"), else
 * its amount: "$3.10". A usd meter with a limit reads as both amounts in
 * {@link formatMeterAmount}.
 * @param {Meter} meter
 * @returns {string}
 */
export function formatMeterValue(meter) {
  if (meter.used_percent !== null && meter.used_percent !== undefined) {
    return formatPercent(meter.used_percent);
  }
  if (meter.unit === 'usd' && meter.used !== null && meter.used !== undefined) {
    return formatUsd(meter.used);
  }
  return '—';
}

/**
 * The amounts of a usd meter with a limit: "$12.50 of $50.00"; null for any
 * other meter (a percent-only meter, or one without a limit, whose value
 * {@link formatMeterValue} already shows).
 * @param {Meter} meter
 * @returns {string | null}
 */
export function formatMeterAmount(meter) {
  if (meter.unit !== 'usd' || meter.limit === null || meter.limit === undefined) return null;
  return `${formatUsd(meter.used ?? 0)} of ${formatUsd(meter.limit)}`;
}

/**
 * Whether a meter is drawn as a bar and charted: it has a percent (a percent
 * meter, or a usd meter with a limit).
 * @param {Meter} meter
 */
export function hasPercent(meter) {
  return meter.used_percent !== null && meter.used_percent !== undefined;
}

/**
 * A meter's name: its label, else the window name of a v1 bucket, else its id.
 * @param {{id?: string, bucket?: string, label?: string | null}} meter a meter or an alert
 * @returns {string}
 */
export function meterName(meter) {
  const id = meter.id ?? meter.bucket ?? '';
  return meter.label ?? BUCKET_NAMES[id] ?? id;
}

/**
 * The meter that binds, the rule of v1's two windows for any meters: among
 * those with a used_percent, the fullest, then the exceeded one, then the one
 * that resets later (its limit lifts last; never resetting is latest), the
 * first of equals. With no percent meter, the first meter; null without meters.
 * @template {Meter} M
 * @param {readonly M[]} meters
 * @returns {M | null}
 */
export function dominantMeter(meters) {
  const withPercent = meters.filter(hasPercent);
  if (withPercent.length === 0) return meters[0] ?? null;
  /** @param {M} meter */
  const weight = (meter) => [
    meter.used_percent,
    meter.exceeded ? 1 : 0,
    meter.reset_at ? Date.parse(meter.reset_at) : Infinity,
  ];
  return withPercent.reduce((best, meter) => {
    const [mine, theirs] = [weight(meter), weight(best)];
    const differs = mine.findIndex((value, index) => value !== theirs[index]);
    return differs >= 0 && mine[differs] > theirs[differs] ? meter : best;
  });
}

/**
 * The two windows of a PostHog usage object as meters, for snapshots from a
 * relay that sends no `meters`.
 * @param {Usage} usage
 * @returns {Meter[]}
 */
export function windowMeters(usage) {
  return Object.entries(BUCKET_NAMES)
    .filter(([bucket]) => usage?.[bucket])
    .map(([bucket, label]) => {
      const window = usage[bucket];
      return {
        id: bucket,
        label,
        unit: 'percent',
        used: null,
        limit: null,
        used_percent: window.used_percent,
        reset_at: window.reset_at ?? null,
        exceeded: window.exceeded,
      };
    });
}

/**
 * A local date as people write it: "Dec 1".
 * @param {Date} at
 * @param {string} [timeZone]
 */
function localDay(at, timeZone) {
  return at.toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone });
}

/**
 * A local clock time as people write it: "1:00 AM".
 * @param {Date} at
 * @param {string} [timeZone]
 */
function localTime(at, timeZone) {
  const time = at.toLocaleTimeString('en-US', { hour: 'numeric', minute: '2-digit', timeZone });
  // Recent ICU puts a narrow no-break space before "AM"; people type a plain one.
  return time.replace(/[\u202f\u00a0]/g, ' ');
}

/**
 * When something will happen: "at 3:40 PM" on the same local day as `now`,
 * else "on Nov 23 at 3:40 PM".
 * @param {string | Date} at
 * @param {number} now
 * @param {string} [timeZone]
 */
function formatWhen(at, now, timeZone) {
  const date = new Date(at);
  const day = localDay(date, timeZone);
  const time = `at ${localTime(date, timeZone)}`;
  return day === localDay(new Date(now), timeZone) ? time : `on ${day} ${time}`;
}

/**
 * The reset label: "Resets shortly" (≤ 0 min), "Resets in Nm" (< 60 min),
 * "Resets in Hh" or "Resets in Hh Mm" (< 24 h), else "Resets Dec 1 at 1:00 AM"
 * in the local time zone (or `timeZone`). Whole minutes, rounded down.
 * @param {string | Date} resetAt
 * @param {number} now
 * @param {string} [timeZone] an IANA zone; the runtime's own by default
 * @returns {string}
 */
export function formatResetLabel(resetAt, now, timeZone) {
  const at = new Date(resetAt);
  const minutes = Math.floor((at.getTime() - now) / 60_000);
  if (minutes <= 0) return 'Resets shortly';
  if (minutes < 60) return `Resets in ${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) {
    const rest = minutes % 60;
    return rest === 0 ? `Resets in ${hours}h` : `Resets in ${hours}h ${rest}m`;
  }
  return `Resets ${localDay(at, timeZone)} at ${localTime(at, timeZone)}`;
}

/**
 * The bucket that binds ({@link dominantMeter} over the two windows).
 * @param {Usage} usage
 * @returns {'burst' | 'sustained'}
 */
export function dominantBucket(usage) {
  return /** @type {'burst' | 'sustained'} */ (dominantMeter(windowMeters(usage))?.id ?? 'burst');
}

/**
 * The one-line summary driven by the dominant bucket: "37% used · Resets in 5h 59m",
 * or "Daily limit reached · Resets in 2h" when that bucket is at its limit.
 * @param {Usage} usage
 * @param {number} now
 * @param {string} [timeZone] an IANA zone; the runtime's own by default
 * @returns {string}
 */
export function formatSummary(usage, now, timeZone) {
  const bucket = dominantBucket(usage);
  const window = usage[bucket];
  const used = isLimitReached(window)
    ? `${BUCKET_NAMES[bucket]} limit reached`
    : `${formatPercent(window.used_percent)} used`;
  return `${used} · ${formatResetLabel(window.reset_at, now, timeZone)}`;
}

/**
 * The one-line summary of a source's meters, driven by the dominant meter
 * ({@link dominantMeter}): "37% used · Resets in 5h 59m", "Key limit reached ·
 * Resets Dec 1 at 1:00 AM", "$3.10 used" (no limit, never resets).
 * @param {readonly Meter[]} meters
 * @param {number} now
 * @param {string} [timeZone] an IANA zone; the runtime's own by default
 * @returns {string}
 */
export function formatMetersSummary(meters, now, timeZone) {
  const meter = dominantMeter(meters);
  if (meter === null) return 'No meters';
  const used = isLimitReached(meter)
    ? `${meterName(meter)} limit reached`
    : `${formatMeterValue(meter)} used`;
  return meter.reset_at ? `${used} · ${formatResetLabel(meter.reset_at, now, timeZone)}` : used;
}

/**
 * A burn rate, one decimal with its sign: "+4.2%/h"; a flat window reads "+0.0%/h".
 * @param {number} rate percent per hour
 * @returns {string}
 */
export function formatBurnRate(rate) {
  const tenths = Math.round(rate * 10);
  return `${tenths < 0 ? '' : '+'}${(tenths / 10).toFixed(1)}%/h`;
}

/**
 * Where a window is heading, for its meter: the burn rate ("+4.2%/h") and the
 * outlook ("Limit at 3:40 PM, before reset" or "Not before reset"). Null when
 * there is nothing to show: no forecast (a relay that derives none) or no burn
 * rate yet. `limitBeforeReset` tells whether the outlook is a warning.
 * @param {WindowForecast | null | undefined} forecast
 * @param {number} now
 * @param {string} [timeZone] an IANA zone; the runtime's own by default
 * @returns {{rate: string, outlook: string, limitBeforeReset: boolean} | null}
 */
export function formatForecast(forecast, now, timeZone) {
  const rate = forecast?.burn_rate_percent_per_hour ?? null;
  if (rate === null) return null;
  const at = forecast.limit_before_reset ? forecast.projected_limit_at : null;
  const outlook =
    at === null ? 'Not before reset' : `Limit ${formatWhen(at, now, timeZone)}, before reset`;
  return { rate: formatBurnRate(rate), outlook, limitBeforeReset: at !== null };
}

/**
 * One sentence for an alert: "Daily usage crossed 90% (now 95%)", or "Daily
 * usage is on track to reach its limit at 3:40 PM, before it resets". The
 * meter is named by the alert's `label` (v1 alerts have none: their window
 * name); with `withSource`, the source comes first: "eu: Daily usage ...".
 * @param {Alert} alert
 * @param {number} now
 * @param {string} [timeZone] an IANA zone; the runtime's own by default
 * @param {{withSource?: boolean}} [options]
 * @returns {string}
 */
export function describeAlert(alert, now, timeZone, { withSource = false } = {}) {
  const source = withSource && alert.source ? `${alert.source}: ` : '';
  const usage = `${source}${meterName(alert)} usage`;
  if (alert.kind === 'threshold_crossed') {
    return `${usage} crossed ${alert.threshold}% (now ${formatPercent(alert.used_percent)})`;
  }
  const when = formatWhen(alert.projected_at, now, timeZone);
  return `${usage} is on track to reach its limit ${when}, before it resets`;
}

/**
 * How old a snapshot is: "updated just now", "updated 12 s ago", "updated 3 min ago",
 * "updated 2 h ago".
 * @param {string} fetchedAt
 * @param {number} now
 * @returns {string}
 */
export function formatUpdatedAgo(fetchedAt, now) {
  const seconds = Math.max(0, Math.floor((now - Date.parse(fetchedAt)) / 1000));
  if (seconds < 1) return 'updated just now';
  if (seconds < 60) return `updated ${seconds} s ago`;
  if (seconds < 3600) return `updated ${Math.floor(seconds / 60)} min ago`;
  return `updated ${Math.floor(seconds / 3600)} h ago`;
}

/**
 * The banner text for a monitor that is not `ok`, or null when it is.
 * @param {Status | null} status
 * @returns {string | null}
 */
export function describeStatus(status) {
  switch (status?.state) {
    case undefined:
    case 'ok':
      return null;
    case 'starting':
      return 'Waiting for the first reading from the gateway…';
    case 'degraded': {
      const failures = status.consecutive_failures;
      const polls = failures === 1 ? 'the last poll' : `the last ${failures} polls`;
      const cause = status.last_error ? ` (${status.last_error})` : '';
      return `Gateway unavailable — showing last good data; ${polls} failed${cause}.`;
    }
    case 'auth_error':
      return "The gateway refused the monitor's credentials — showing last good data. Update the token to resume.";
    case 'stopped':
      return 'The monitor has stopped — the data shown is no longer updated.';
    default:
      return `The monitor reports “${status.state}” — the data shown may be out of date.`;
  }
}

/**
 * What the refresh button reports after a failed refresh.
 * @param {{code?: string, message?: string}} error
 * @returns {string}
 */
export function describeRefreshError(error) {
  switch (error.code) {
    case 'upstream_unavailable':
      return 'Gateway unavailable — showing last good data';
    case 'rate_limited':
      return 'Too many refreshes — try again in a moment';
    case 'timeout':
      return 'No answer in time — showing last good data';
    case 'disconnected':
    case 'closed':
      return 'Not connected to the relay';
    default:
      return `Refresh failed: ${error.message ?? 'unknown error'}`;
  }
}
