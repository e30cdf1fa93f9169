/**
 * The dashboard's "Usage by day" view: what each source consumed on each of
 * the last 14 calendar days (in the relay's zone), from the relay's
 * `get_breakdown` grouped by source and day, as stacked bars in the inline
 * SVG of index.html (no library), one colour per source; plus the CSV of the
 * same rows. Like chart.js, the drawing uses the SVG's own pixel size, and the
 * SVG's aria-label carries the same information as text.
 *
 * @module daychart
 */

/**
 * @typedef {import('./usage-client.js').Breakdown} Breakdown
 * @typedef {import('./usage-client.js').BreakdownRow} BreakdownRow
 * @typedef {'usd' | 'percent'} DayUnit what the bars measure: dollars or percent points
 * @typedef {{usd: number | null, percent: number | null, polls: number, failed_polls: number}} SourceTotal
 */

/** How many calendar days the view covers, today included. */
export const BY_DAY_DAYS = 14;

/** The CSV's header: one row per breakdown row follows, numbers as the API gives them. */
export const CSV_HEADER = Object.freeze([
  'day',
  'source',
  'consumed_usd',
  'consumed_percent',
  'polls',
  'failed_polls',
]);

/** Sources are coloured by their position, `source-0` to `source-5`, then again from 0. */
const COLOURS = 6;
/** Room around the plot, in pixels: the axis name above, the amounts left, the days below. */
const PAD = Object.freeze({ left: 48, right: 8, top: 22, bottom: 22 });
/** Below this width per day, only every other day is labelled (today always is). */
const MIN_LABEL_SLOT = 22;
const SVG_NS = 'http://www.w3.org/2000/svg';

/** What the axis and the unit switch call each unit. */
export const UNIT_NAMES = Object.freeze({ usd: '$ per day', percent: '% points per day' });

const USD_TICK = new Intl.NumberFormat('en-US', {
  style: 'currency',
  currency: 'USD',
  maximumFractionDigits: 2,
  minimumFractionDigits: 0,
});
const USD = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
const POINTS = new Intl.NumberFormat('en-US', {
  minimumFractionDigits: 1,
  maximumFractionDigits: 1,
});
const COUNT = new Intl.NumberFormat('en-US');

/** @type {Map<string, Intl.DateTimeFormat>} */
const dayFormats = new Map();

/**
 * The calendar day `ms` falls on in `timeZone` (the browser's own when undefined).
 * @param {number} ms
 * @param {string} [timeZone]
 * @returns {string} YYYY-MM-DD
 */
export function calendarDay(ms, timeZone = undefined) {
  const key = timeZone ?? '';
  let format = dayFormats.get(key);
  if (format === undefined) {
    format = new Intl.DateTimeFormat('en-CA', {
      timeZone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
    });
    dayFormats.set(key, format);
  }
  const parts = Object.fromEntries(format.formatToParts(ms).map(({ type, value }) => [type, value]));
  return `${parts.year}-${parts.month}-${parts.day}`;
}

/**
 * The calendar day `count` days after `day` (before, when negative).
 * @param {string} day YYYY-MM-DD
 * @param {number} count
 * @returns {string}
 */
export function addDays(day, count) {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + count);
  return date.toISOString().slice(0, 10);
}

/**
 * The `count` calendar days that end with `today`, oldest first.
 * @param {string} today YYYY-MM-DD
 * @param {number} [count]
 * @returns {string[]}
 */
export function lastDays(today, count = BY_DAY_DAYS) {
  return Array.from({ length: count }, (_, index) => addDays(today, index - count + 1));
}

/**
 * Which quantity the bars show by default: dollars when any source has usd
 * meters (any row has a `consumed.usd`), else percent points.
 * @param {Breakdown | null} breakdown
 * @returns {DayUnit}
 */
export function defaultUnit(breakdown) {
  return hasUnit(breakdown, 'usd') || !hasUnit(breakdown, 'percent') ? 'usd' : 'percent';
}

/**
 * Whether any row of `breakdown` has a value in `unit`.
 * @param {Breakdown | null} breakdown
 * @param {DayUnit} unit
 */
export function hasUnit(breakdown, unit) {
  return (breakdown?.breakdown ?? []).some((row) => typeof row.consumed?.[unit] === 'number');
}

/**
 * The sources to colour, in order: `known` (the relay's order), then any
 * other source the rows name, in the order they appear.
 * @param {Breakdown | null} breakdown
 * @param {readonly string[]} [known]
 * @returns {string[]}
 */
export function sourcesOf(breakdown, known = []) {
  const names = new Set(known);
  for (const row of breakdown?.breakdown ?? []) {
    if (typeof row.source === 'string') names.add(row.source);
  }
  return [...names];
}

/**
 * Each source's sums over the rows: dollars and percent points (null when
 * none of its rows has one), polls and failed polls.
 * @param {Breakdown | null} breakdown
 * @param {readonly string[]} sources
 * @returns {Map<string, SourceTotal>}
 */
export function totalsBySource(breakdown, sources) {
  /** @type {Map<string, SourceTotal>} */
  const totals = new Map(
    sources.map((name) => [name, { usd: null, percent: null, polls: 0, failed_polls: 0 }]),
  );
  for (const row of breakdown?.breakdown ?? []) {
    const total = totals.get(row.source ?? '');
    if (total === undefined) continue;
    for (const unit of /** @type {const} */ (['usd', 'percent'])) {
      const value = row.consumed?.[unit];
      if (typeof value === 'number') total[unit] = (total[unit] ?? 0) + value;
    }
    total.polls += row.polls ?? 0;
    total.failed_polls += row.failed_polls ?? 0;
  }
  return totals;
}

/**
 * An amount as the totals and the bars' tooltips read it: "$12.50", "41.5 pts";
 * "—" for none.
 * @param {number | null | undefined} value
 * @param {DayUnit} unit
 */
export function formatAmount(value, unit) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '—';
  return unit === 'usd' ? USD.format(value) : `${POINTS.format(value)} pts`;
}

/**
 * Polls, with the failed ones when there are any: "2,880", "2,880 (3 failed)".
 * @param {number} polls
 * @param {number} failed
 */
export function formatPolls(polls, failed) {
  return failed > 0 ? `${COUNT.format(polls)} (${COUNT.format(failed)} failed)` : COUNT.format(polls);
}

/**
 * A CSV field: as is, or quoted (RFC 4180) when it holds a comma, a quote or a line break.
 * @param {unknown} value null and undefined are empty
 */
function csvField(value) {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/**
 * The breakdown's rows as CSV (RFC 4180, CRLF line ends): the header
 * {@link CSV_HEADER}, then one line per row in the API's order; numbers as
 * the API gives them (JSON's shortest form), an empty field for null.
 * @param {Breakdown} breakdown
 * @returns {string}
 */
export function breakdownCsv(breakdown) {
  const lines = [CSV_HEADER.join(',')];
  for (const row of breakdown.breakdown) {
    const fields = [
      row.day,
      row.source,
      row.consumed?.usd,
      row.consumed?.percent,
      row.polls,
      row.failed_polls,
    ];
    lines.push(fields.map(csvField).join(','));
  }
  return `${lines.join('\r\n')}\r\n`;
}

/**
 * The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value`.
 * @param {number} value > 0
 */
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((factor) => factor * power >= value * (1 - 1e-9)) ?? 10;
  return step * power;
}

/**
 * A day as the axis and the aria-label read it: "Nov 21".
 * @param {string} day YYYY-MM-DD
 */
function dayName(day) {
  return new Date(`${day}T12:00:00Z`).toLocaleDateString('en-US', {
    month: 'short',
    day: 'numeric',
    timeZone: 'UTC',
  });
}

/**
 * @param {string} tag
 * @param {Record<string, string | number>} attributes
 * @param {string} [text]
 */
function svgElement(tag, attributes, text = undefined) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/**
 * Each day's value per source in `unit`, from the rows: `values[day][source]`.
 * Rows of other days, and values that are null or not above zero, are left out.
 * @param {Breakdown | null} breakdown
 * @param {readonly string[]} days
 * @param {DayUnit} unit
 */
function valuesByDay(breakdown, days, unit) {
  /** @type {Map<string, Map<string, number>>} */
  const values = new Map(days.map((day) => [day, new Map()]));
  for (const row of breakdown?.breakdown ?? []) {
    const value = row.consumed?.[unit];
    const ofDay = values.get(row.day ?? '');
    if (ofDay === undefined || typeof row.source !== 'string') continue;
    if (typeof value !== 'number' || !(value > 0)) continue;
    ofDay.set(row.source, (ofDay.get(row.source) ?? 0) + value);
  }
  return values;
}

/**
 * A sentence for screen readers, e.g. "Usage by day in $ from Nov 9 to Nov 22:
 * router $12.50, team $3.10; busiest day Nov 20 with $4.00."
 * @param {Map<string, Map<string, number>>} values
 * @param {readonly string[]} days
 * @param {readonly string[]} sources
 * @param {DayUnit} unit
 */
function describeDays(values, days, sources, unit) {
  const range = `from ${dayName(days[0])} to ${dayName(days[days.length - 1])}`;
  const name = unit === 'usd' ? '$' : 'percent points';
  const sums = sources
    .map((source) => {
      let sum = 0;
      for (const ofDay of values.values()) sum += ofDay.get(source) ?? 0;
      return sum > 0 ? `${source} ${formatAmount(sum, unit)}` : null;
    })
    .filter((text) => text !== null);
  if (sums.length === 0) return `Usage by day in ${name} ${range}: nothing used.`;
  let busiest = days[0];
  let most = -1;
  for (const day of days) {
    let sum = 0;
    for (const value of values.get(day).values()) sum += value;
    if (sum > most) [busiest, most] = [day, sum];
  }
  const peak = `busiest day ${dayName(busiest)} with ${formatAmount(most, unit)}`;
  return `Usage by day in ${name} ${range}: ${sums.join(', ')}; ${peak}.`;
}

/**
 * Draws the breakdown's rows into the SVG at its current size: one slot per
 * day of `days`, in it one stacked segment per source with a value above zero
 * in `unit` (a `rect.day-bar.source-<n>` with `data-day`, `data-source` and
 * `data-value`), the sources stacked in `sources`' order from the bottom,
 * heights proportional to the values. The axis is named and scaled in `unit`.
 * @param {SVGSVGElement} svg
 * @param {{breakdown: Breakdown | null, days: readonly string[], sources: readonly string[], unit: DayUnit}} view
 */
export function renderDayChart(svg, { breakdown, days, sources, unit }) {
  const width = Math.max(160, svg.clientWidth);
  const height = Math.max(100, svg.clientHeight);
  const [left, right] = [PAD.left, width - PAD.right];
  const [top, bottom] = [PAD.top, height - PAD.bottom];
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.dataset.unit = unit;

  const values = valuesByDay(breakdown, days, unit);
  const stacks = days.map((day) => [...values.get(day).values()].reduce((a, b) => a + b, 0));
  const scale = niceCeiling(Math.max(...stacks, unit === 'usd' ? 0.01 : 0.1));
  svg.dataset.scale = String(scale);
  /** @param {number} value */
  const y = (value) => bottom - (value / scale) * (bottom - top);
  const tick = (/** @type {number} */ value) =>
    unit === 'usd' ? USD_TICK.format(value) : POINTS.format(value).replace(/\.0$/, '');

  const axis = svg.querySelector('[data-axis]');
  const grid = [0, scale / 2, scale].flatMap((level) => [
    svgElement('line', { x1: left, x2: right, y1: y(level), y2: y(level) }),
    svgElement('text', { x: left - 6, y: y(level) + 4, class: 'tick' }, tick(level)),
  ]);
  const title = svgElement(
    'text',
    { x: 0, y: 12, class: 'axis-name', 'data-testid': 'by-day-axis' },
    UNIT_NAMES[unit],
  );
  axis.replaceChildren(title, ...grid);

  const slot = (right - left) / days.length;
  const barWidth = Math.max(2, slot * 0.7);
  const every = slot < MIN_LABEL_SLOT ? 2 : 1;
  const bars = [];
  const labels = [];
  days.forEach((day, index) => {
    const x = left + index * slot + (slot - barWidth) / 2;
    let base = 0;
    for (const [position, source] of sources.entries()) {
      const value = values.get(day).get(source);
      if (value === undefined) continue;
      const rect = svgElement('rect', {
        x: x.toFixed(2),
        y: y(base + value).toFixed(2),
        width: barWidth.toFixed(2),
        height: (y(base) - y(base + value)).toFixed(3),
        class: `day-bar source-${position % COLOURS}`,
        'data-day': day,
        'data-source': source,
        'data-value': value,
      });
      rect.append(svgElement('title', {}, `${source}, ${dayName(day)}: ${formatAmount(value, unit)}`));
      bars.push(rect);
      base += value;
    }
    if ((days.length - 1 - index) % every === 0) {
      const center = left + (index + 0.5) * slot;
      const label = String(Number(day.slice(8)));
      labels.push(
        svgElement('text', { x: center.toFixed(1), y: height - 6, class: 'day', 'data-day': day }, label),
      );
    }
  });
  svg.querySelector('[data-bars]').replaceChildren(...bars);
  svg.querySelector('[data-days]').replaceChildren(...labels);
  svg.dataset.bars = String(bars.length);
  svg.setAttribute('aria-label', describeDays(values, days, sources, unit));
}

/**
 * Names the sources in the legend (a `<ul>`), each with its colour.
 * @param {HTMLElement} legend
 * @param {readonly string[]} sources
 */
export function renderDayLegend(legend, sources) {
  const items = sources.map((source, position) => {
    const item = document.createElement('li');
    item.className = `legend-item source-${position % COLOURS}`;
    item.dataset.source = source;
    item.textContent = source;
    return item;
  });
  legend.replaceChildren(...items);
}
