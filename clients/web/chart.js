/**
 * The dashboard's history chart: the percent meters of one source over the
 * last 24 hours, drawn into the inline SVG of index.html (no library). The
 * drawing uses the SVG's own pixel size, so text and dots keep their size at
 * any width; the SVG's aria-label carries the same information as text.
 *
 * @module chart
 */

import { BUCKET_NAMES, clampPercent, formatPercent } from './format.js';

/**
 * @typedef {{t: number, values: Record<string, number>}} Reading
 *   `t` is the snapshot's fetched_at in milliseconds; `values` the used_percent
 *   of each meter that has one, by meter id.
 * @typedef {{id: string, label: string}} Series one line: a meter id and its name
 */

/** The time the chart covers: readings older than this before now are not drawn. */
export const CHART_SPAN_MS = 24 * 60 * 60_000;

/** The lines of a PostHog source, the chart's lines before anything else is known. */
export const WINDOW_SERIES = Object.freeze(
  Object.entries(BUCKET_NAMES).map(([id, label]) => Object.freeze({ id, label })),
);

/** Lines are styled by their position (colour and dash pattern): `series-0` to `series-3`. */
const STYLES = 4;
/** Room around the plot, in pixels: the y labels sit left, the times below. */
const PAD = Object.freeze({ left: 40, right: 8, top: 8, bottom: 22 });
const SVG_NS = 'http://www.w3.org/2000/svg';

/** @type {Map<string, {seconds: Intl.DateTimeFormat, minutes: Intl.DateTimeFormat, days: Intl.DateTimeFormat}>} */
const formatsByZone = new Map();

/**
 * Clock formats in `timeZone` (the browser's own when undefined).
 * @param {string} [timeZone]
 */
function formatsFor(timeZone) {
  const key = timeZone ?? '';
  let formats = formatsByZone.get(key);
  if (formats === undefined) {
    const clock = { hour: '2-digit', minute: '2-digit', timeZone };
    formats = {
      minutes: new Intl.DateTimeFormat(undefined, /** @type {any} */ (clock)),
      seconds: new Intl.DateTimeFormat(undefined, { ...clock, second: '2-digit' }),
      days: new Intl.DateTimeFormat(undefined, { ...clock, weekday: 'short' }),
    };
    formatsByZone.set(key, formats);
  }
  return formats;
}

/**
 * Clock times precise enough to tell the ends of the history apart, with the
 * weekday for histories of half a day or more.
 * @param {Reading[]} history
 * @param {string} [timeZone]
 */
function timeFormatFor(history, timeZone) {
  const formats = formatsFor(timeZone);
  const span = history.length > 0 ? history[history.length - 1].t - history[0].t : 0;
  if (span < 10 * 60_000) return formats.seconds;
  return span < 12 * 60 * 60_000 ? formats.minutes : formats.days;
}

/**
 * The readings that have a value for `id`.
 * @param {Reading[]} history
 * @param {string} id
 */
const readingsOf = (history, id) => history.filter((reading) => id in reading.values);

/**
 * A sentence for screen readers, e.g. "Usage in the last 24 hours, 4 readings
 * from 12:00 to 12:03: Daily 20% to 37%, Monthly 12% to 12%."
 * @param {Reading[]} history
 * @param {readonly Series[]} [series]
 * @param {string} [timeZone]
 */
export function describeHistory(history, series = WINDOW_SERIES, timeZone = undefined) {
  if (series.length === 0) return 'Usage in the last 24 hours: no meter with a limit to chart.';
  if (history.length === 0) return 'Usage in the last 24 hours: no readings yet.';
  const first = history[0];
  const last = history[history.length - 1];
  const readings = history.length === 1 ? '1 reading' : `${history.length} readings`;
  const time = timeFormatFor(history, timeZone);
  const range = `from ${time.format(first.t)} to ${time.format(last.t)}`;
  const lines = series
    .map(({ id, label }) => {
      const values = readingsOf(history, id);
      if (values.length === 0) return null;
      const [from, to] = [values[0].values[id], values[values.length - 1].values[id]];
      return `${label} ${formatPercent(from)} to ${formatPercent(to)}`;
    })
    .filter((line) => line !== null)
    .join(', ');
  return `Usage in the last 24 hours, ${readings} ${range}: ${lines}.`;
}

/**
 * Makes `parent`'s children one `tag` per series, in order, each with
 * `data-<key>` set to the series id and the series' style class.
 * @param {Element} parent
 * @param {string} tag
 * @param {string} key
 * @param {string} className
 * @param {readonly Series[]} series
 * @param {string} [namespace]
 * @returns {Element[]}
 */
function syncChildren(parent, tag, key, className, series, namespace = SVG_NS) {
  const existing = [...parent.children];
  const wanted = series.map(({ id }, index) => {
    let element = existing.find((child) => child.getAttribute(`data-${key}`) === id);
    if (element === undefined) {
      element = document.createElementNS(namespace, tag);
      element.setAttribute(`data-${key}`, id);
    }
    element.setAttribute('class', `${className} series-${index % STYLES}`);
    return element;
  });
  parent.replaceChildren(...wanted);
  return wanted;
}

/**
 * Names the chart's lines in its legend (a `<ul>`), styled like the lines.
 * @param {HTMLElement} legend
 * @param {readonly Series[]} series
 */
export function renderLegend(legend, series) {
  const items = syncChildren(legend, 'li', 'legend', 'legend-item', series, legend.namespaceURI);
  items.forEach((item, index) => {
    if (item.textContent !== series[index].label) item.textContent = series[index].label;
  });
}

/**
 * Draws `history` (oldest first) into the chart's SVG at its current size:
 * one line per series, through the readings that have a value for it.
 * @param {SVGSVGElement} svg
 * @param {Reading[]} history
 * @param {readonly Series[]} [series]
 * @param {string} [timeZone] an IANA zone for the times; the browser's own by default
 */
export function renderChart(svg, history, series = WINDOW_SERIES, timeZone = undefined) {
  const width = Math.max(120, svg.clientWidth);
  const height = Math.max(80, svg.clientHeight);
  const [left, right] = [PAD.left, width - PAD.right];
  const [top, bottom] = [PAD.top, height - PAD.bottom];
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('aria-label', describeHistory(history, series, timeZone));
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
  const lines = syncChildren(svg.querySelector('[data-lines]'), 'polyline', 'line', 'line', series);
  const dots = syncChildren(svg.querySelector('[data-dots]'), 'circle', 'dot', 'dot', series);
  series.forEach(({ id }, index) => {
    const readings = readingsOf(history, id);
    const points = readings.map((p) => `${x(p).toFixed(1)},${y(p.values[id]).toFixed(1)}`);
    lines[index].setAttribute('points', points.join(' '));
    const dot = dots[index];
    dot.setAttribute('r', '3.5');
    dot.toggleAttribute('hidden', readings.length === 0);
    if (readings.length > 0) {
      const newest = readings[readings.length - 1];
      dot.setAttribute('cx', x(newest).toFixed(1));
      dot.setAttribute('cy', y(newest.values[id]).toFixed(1));
    }
  });

  const start = svg.querySelector('[data-time="start"]');
  const end = svg.querySelector('[data-time="end"]');
  start.setAttribute('x', String(left));
  end.setAttribute('x', String(right));
  for (const label of [start, end]) label.setAttribute('y', String(height - 6));
  const time = timeFormatFor(history, timeZone);
  // A single reading sits at the right edge, and so does its time.
  start.textContent = span > 0 ? time.format(first) : '';
  end.textContent = history.length > 0 ? time.format(first + span) : '';
}
