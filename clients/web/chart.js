/**
 * The dashboard's history chart: usage of both buckets over the last 24 hours,
 * drawn into the inline SVG of index.html (no library). The drawing uses the
 * SVG's own pixel size, so text and dots keep their size at any width; the
 * SVG's aria-label carries the same information as text.
 *
 * @module chart
 */

import { BUCKET_NAMES, clampPercent, formatPercent } from './format.js';

/**
 * @typedef {{t: number, burst: number, sustained: number}} Reading
 *   `t` is the snapshot's fetched_at in milliseconds, the others used_percent.
 */

/** The time the chart covers: readings older than this before now are not drawn. */
export const CHART_SPAN_MS = 24 * 60 * 60_000;

/** The windows, in the order the page names them. */
const BUCKETS = /** @type {import('./usage-client.js').Bucket[]} */ (Object.keys(BUCKET_NAMES));
/** Room around the plot, in pixels: the y labels sit left, the times below. */
const PAD = Object.freeze({ left: 40, right: 8, top: 8, bottom: 22 });

const minutes = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const seconds = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});
const days = new Intl.DateTimeFormat(undefined, {
  weekday: 'short',
  hour: '2-digit',
  minute: '2-digit',
});

/**
 * Clock times precise enough to tell the ends of the history apart, with the
 * weekday for histories of half a day or more.
 * @param {Reading[]} history
 */
function timeFormatFor(history) {
  const span = history.length > 0 ? history[history.length - 1].t - history[0].t : 0;
  if (span < 10 * 60_000) return seconds;
  return span < 12 * 60 * 60_000 ? minutes : days;
}

/**
 * A sentence for screen readers, e.g. "Usage in the last 24 hours, 4 readings
 * from 12:00 to 12:03: Daily 20% to 37%, Monthly 12% to 12%."
 * @param {Reading[]} history
 */
export function describeHistory(history) {
  if (history.length === 0) return 'Usage in the last 24 hours: no readings yet.';
  const first = history[0];
  const last = history[history.length - 1];
  const readings = history.length === 1 ? '1 reading' : `${history.length} readings`;
  const time = timeFormatFor(history);
  const range = `from ${time.format(first.t)} to ${time.format(last.t)}`;
  const buckets = BUCKETS.map(
    (b) => `${BUCKET_NAMES[b]} ${formatPercent(first[b])} to ${formatPercent(last[b])}`,
  ).join(', ');
  return `Usage in the last 24 hours, ${readings} ${range}: ${buckets}.`;
}

/**
 * Draws `history` (oldest first) into the chart's SVG at its current size.
 * @param {SVGSVGElement} svg
 * @param {Reading[]} history
 */
export function renderChart(svg, history) {
  const width = Math.max(120, svg.clientWidth);
  const height = Math.max(80, svg.clientHeight);
  const [left, right] = [PAD.left, width - PAD.right];
  const [top, bottom] = [PAD.top, height - PAD.bottom];
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('aria-label', describeHistory(history));
  svg.dataset.points = String(history.length);

  /** @param {number} percent */
  const y = (percent) => bottom - (clampPercent(percent) / 100) * (bottom - top);
  for (const line of svg.querySelectorAll('[data-grid]')) {
    const level = y(Number(line.getAttribute('data-grid')));
    line.setAttribute('x1', String(left));
    line.setAttribute('x2', String(right));
    line.setAttribute('y1', String(level));
    line.setAttribute('y2', String(level));
  }
  for (const label of svg.querySelectorAll('[data-grid-label]')) {
    label.setAttribute('x', String(left - 6));
    label.setAttribute('y', String(y(Number(label.getAttribute('data-grid-label'))) + 4));
  }

  const first = history[0]?.t ?? 0;
  const span = (history[history.length - 1]?.t ?? 0) - first;
  /** @param {Reading} point */
  const x = (point) => (span > 0 ? left + ((point.t - first) / span) * (right - left) : right);
  for (const bucket of BUCKETS) {
    const points = history.map((p) => `${x(p).toFixed(1)},${y(p[bucket]).toFixed(1)}`);
    svg.querySelector(`[data-line="${bucket}"]`).setAttribute('points', points.join(' '));
    const dot = svg.querySelector(`[data-dot="${bucket}"]`);
    dot.toggleAttribute('hidden', history.length === 0);
    if (history.length > 0) {
      const last = history[history.length - 1];
      dot.setAttribute('cx', x(last).toFixed(1));
      dot.setAttribute('cy', y(last[bucket]).toFixed(1));
    }
  }

  const start = svg.querySelector('[data-time="start"]');
  const end = svg.querySelector('[data-time="end"]');
  start.setAttribute('x', String(left));
  end.setAttribute('x', String(right));
  for (const label of [start, end]) label.setAttribute('y', String(height - 6));
  const time = timeFormatFor(history);
  // A single reading sits at the right edge, and so does its time.
  start.textContent = span > 0 ? time.format(first) : '';
  end.textContent = history.length > 0 ? time.format(first + span) : '';
}
