/**
 * Pure formatting for the dashboard: percentages, reset labels, the one-line
 * summary, freshness and status texts. No DOM, no clock of its own: every
 * function that depends on time takes `now` (milliseconds since the epoch).
 *
 * @module format
 */

/**
 * @typedef {import('./usage-client.js').Usage} Usage
 * @typedef {import('./usage-client.js').UsageWindow} UsageWindow
 * @typedef {import('./usage-client.js').Status} Status
 */

/** How people name the gateway's two windows. */
export const BUCKET_NAMES = Object.freeze({ burst: 'Daily', sustained: 'Monthly' });

/** Absorbs binary floating-point noise such as 37.49999999 before rounding down. */
const EPSILON = 1e-9;

/**
 * Percent used as people expect to read it: whole numbers from 10 % up
 * ("37%"), one decimal below ("0.4%", "5%"). Rounds down, so "100%" appears
 * only when the window is full.
 * @param {number} value used_percent, 0 to 100
 * @returns {string}
 */
export function formatPercent(value) {
  const percent = Math.min(100, Math.max(0, Number(value) || 0));
  if (percent >= 10) return `${Math.floor(percent + EPSILON)}%`;
  const tenths = Math.floor(percent * 10 + EPSILON);
  return `${tenths % 10 === 0 ? tenths / 10 : (tenths / 10).toFixed(1)}%`;
}

/**
 * Whether a window shows "Limit reached": exceeded, or at 100 %.
 * @param {UsageWindow} window
 */
export function isLimitReached(window) {
  return window.exceeded || window.used_percent >= 100;
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
  const day = at.toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone });
  const time = at.toLocaleTimeString('en-US', { hour: 'numeric', minute: '2-digit', timeZone });
  // Recent ICU puts a narrow no-break space before "AM"; people type a plain one.
  return `Resets ${day} at ${time}`.replace(/[\u202f\u00a0]/g, ' ');
}

/**
 * The bucket with the higher used_percent; "burst" on a tie.
 * @param {Usage} usage
 * @returns {'burst' | 'sustained'}
 */
export function dominantBucket(usage) {
  return usage.sustained.used_percent > usage.burst.used_percent ? 'sustained' : 'burst';
}

/**
 * The one-line summary driven by the dominant bucket: "37% used · Resets in 5h 59m",
 * or "Daily limit reached · Resets in 2h" when that bucket is at its limit.
 * @param {Usage} usage
 * @param {number} now
 * @returns {string}
 */
export function formatSummary(usage, now) {
  const bucket = dominantBucket(usage);
  const window = usage[bucket];
  const used = isLimitReached(window)
    ? `${BUCKET_NAMES[bucket]} limit reached`
    : `${formatPercent(window.used_percent)} used`;
  return `${used} · ${formatResetLabel(window.reset_at, now)}`;
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
