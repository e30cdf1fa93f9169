/**
 * The dashboard's "Daily reports" panel: whether each source's daily usage
 * report (accounting-v1 section 3) of each of the last 14 closed days, in the
 * relay's zone, reached its destinations, from the relay's `list_reports`. A
 * table of days × sources whose cells tell each state by a symbol and a word
 * as well as by colour, with the details in the cell's `title`. The table has
 * the days as columns where they fit, as rows on a narrow screen.
 *
 * @module reports
 */

import { addDays, lastDays } from './daychart.js';

/**
 * @typedef {import('./usage-client.js').ReportEntry} ReportEntry
 * @typedef {import('./usage-client.js').ReportList} ReportList
 * @typedef {import('./usage-client.js').ReportState} ReportState
 * @typedef {ReportState | 'none'} CellState `none`: the relay lists no report for that day
 * @typedef {Record<ReportState, number>} ReportCounts
 */

/** How many closed days the panel shows: the 14 before today. */
export const REPORT_DAYS = 14;

/** What each cell shows besides its colour, so that colour is never the only cue. */
export const STATE_MARKS = Object.freeze({
  delivered: '✓',
  pending: '…',
  failed: '✕',
  none: '—',
});

/** Each state in words: the cells' hidden text, the key and the titles. */
export const STATE_WORDS = Object.freeze({
  delivered: 'delivered',
  pending: 'pending',
  failed: 'failed',
  none: 'no report',
});

const COUNT = new Intl.NumberFormat('en-US');

/**
 * The days the panel shows, oldest first: the {@link REPORT_DAYS} days
 * before `today` (a day gets its report only once it has closed).
 * @param {string} today YYYY-MM-DD in the relay's zone
 * @returns {string[]}
 */
export function reportDays(today) {
  return lastDays(addDays(today, -1), REPORT_DAYS);
}

/**
 * The sources to show, in order: `known` (the relay's order), then any other
 * source the list names, in the order it appears.
 * @param {ReportList | null} list
 * @param {readonly string[]} [known]
 * @returns {string[]}
 */
export function reportSources(list, known = []) {
  const names = new Set(known);
  for (const entry of list?.reports ?? []) names.add(entry.source);
  return [...names];
}

/**
 * @param {string} source
 * @param {string} day
 */
const keyOf = (source, day) => `${source}/${day}`;

/**
 * The list's entries by source and day.
 * @param {ReportList | null} list
 * @returns {Map<string, ReportEntry>}
 */
function entriesByKey(list) {
  const entries = list?.reports ?? [];
  return new Map(entries.map((entry) => [keyOf(entry.source, entry.usage_day), entry]));
}

/**
 * How many of the shown reports (`days` × `sources`) are in each state.
 * @param {ReportList | null} list
 * @param {readonly string[]} days
 * @param {readonly string[]} sources
 * @returns {ReportCounts}
 */
export function countStates(list, days, sources) {
  const shown = new Set(sources.flatMap((source) => days.map((day) => keyOf(source, day))));
  /** @type {ReportCounts} */
  const counts = { delivered: 0, pending: 0, failed: 0 };
  for (const [key, entry] of entriesByKey(list)) {
    if (shown.has(key) && entry.state in counts) counts[entry.state] += 1;
  }
  return counts;
}

/**
 * The panel's summary: "56 delivered, 0 pending, 0 failed".
 * @param {ReportCounts} counts
 */
export function formatCounts(counts) {
  return (/** @type {const} */ (['delivered', 'pending', 'failed']))
    .map((state) => `${COUNT.format(counts[state])} ${state}`)
    .join(', ');
}

/**
 * A day as the titles read it: "Nov 21".
 * @param {string} day YYYY-MM-DD
 */
export function dayName(day) {
  return new Date(`${day}T12:00:00Z`).toLocaleDateString('en-US', {
    month: 'short',
    day: 'numeric',
    timeZone: 'UTC',
  });
}

/**
 * A moment on the wall clock of `timeZone`: "Nov 22, 12:30 AM".
 * @param {string} at ISO 8601
 * @param {string} [timeZone] the browser's own when undefined
 */
function wallClock(at, timeZone) {
  const text = new Date(at).toLocaleString('en-US', {
    month: 'short',
    day: 'numeric',
    hour: 'numeric',
    minute: '2-digit',
    timeZone,
  });
  // Recent ICU puts a narrow no-break space before "AM"; people type a plain one.
  return text.replace(/[\u202f\u00a0]/g, ' ');
}

/**
 * "1 attempt", "3 attempts", "no attempt yet".
 * @param {number} attempts
 */
function formatAttempts(attempts) {
  if (!(attempts > 0)) return 'no attempt yet';
  return attempts === 1 ? '1 attempt' : `${COUNT.format(attempts)} attempts`;
}

/**
 * What a cell's state line says: "Delivered Nov 22, 12:30 AM (Europe/London)",
 * "Failed: a destination refused it", "Pending: not built yet", ...
 * @param {ReportEntry | undefined} entry
 * @param {string} [timeZone]
 */
function stateLine(entry, timeZone) {
  if (entry === undefined) return 'No report: the source had no data yet, or the day is not due';
  if (entry.state === 'delivered') {
    if (!entry.delivered_at) return 'Delivered';
    return `Delivered ${wallClock(entry.delivered_at, timeZone)} (${timeZone ?? 'local time'})`;
  }
  if (entry.state === 'failed') {
    return 'Failed: a destination refused it; it waits for someone to act';
  }
  return entry.saved ? 'Pending: being delivered, retried by itself' : 'Pending: not built yet';
}

/**
 * A cell's hover text, one fact a line: the source and usage day, the
 * state (with when it was delivered, in the relay's zone), the attempts,
 * the last error, and each destination's state when there are several.
 * @param {ReportEntry | undefined} entry undefined: the relay lists none
 * @param {{source: string, day: string, timeZone?: string}} where
 * @returns {string}
 */
export function describeReport(entry, { source, day, timeZone }) {
  const lines = [`${source}, usage day ${dayName(day)}`, stateLine(entry, timeZone)];
  if (entry === undefined) return lines.join('\n');
  // A report delivered without attempts was only to be saved: no destination to try.
  if (entry.attempts > 0 || entry.state !== 'delivered') lines.push(formatAttempts(entry.attempts));
  if (entry.last_error) lines.push(`Last error: ${entry.last_error}`);
  const destinations = Object.entries(entry.destinations ?? {});
  if (destinations.length > 1) {
    for (const [name, delivery] of destinations) {
      lines.push(`${name}: ${delivery.state}, ${formatAttempts(delivery.attempts)}`);
    }
  }
  return lines.join('\n');
}

/**
 * @param {string} text
 * @param {string} [className]
 */
function textSpan(text, className = '') {
  const span = document.createElement('span');
  if (className) span.className = className;
  span.textContent = text;
  return span;
}

/**
 * One cell: the state's symbol (for the eye) and word (for screen readers),
 * its colour by `data-state`, its details in `title`.
 * @param {ReportEntry | undefined} entry
 * @param {{source: string, day: string, timeZone?: string}} where
 */
function reportCell(entry, where) {
  /** @type {CellState} */
  const state = entry?.state ?? 'none';
  const cell = document.createElement('td');
  cell.className = 'report-cell';
  Object.assign(cell.dataset, { source: where.source, day: where.day, state });
  cell.title = describeReport(entry, where);
  const mark = textSpan(STATE_MARKS[state] ?? STATE_MARKS.none, 'report-mark');
  mark.setAttribute('aria-hidden', 'true');
  cell.append(mark, textSpan(STATE_WORDS[state] ?? state, 'visually-hidden'));
  return cell;
}

/**
 * A header cell.
 * @param {'row' | 'col'} scope
 * @param {...(string | Node)} content
 */
function headingCell(scope, ...content) {
  const heading = document.createElement('th');
  heading.scope = scope;
  heading.append(...content);
  return heading;
}

/**
 * A header cell of a day: "Nov 21", the month in a span that CSS puts on a
 * line of its own in a narrow column.
 * @param {string} day
 * @param {'row' | 'col'} scope
 */
function dayHeading(day, scope) {
  const [month, date] = dayName(day).split(' ');
  const heading = headingCell(scope, textSpan(`${month} `, 'report-month'), date);
  heading.dataset.day = day;
  return heading;
}

/**
 * A header cell of a source.
 * @param {string} source
 * @param {'row' | 'col'} scope
 */
function sourceHeading(source, scope) {
  const heading = headingCell(scope, source);
  heading.dataset.source = source;
  // A long name is cut short to fit its column: the whole of it on hover.
  heading.title = source;
  return heading;
}

/** @param {HTMLTableCellElement[]} cells */
function tableRow(cells) {
  const row = document.createElement('tr');
  row.append(...cells);
  return row;
}

/**
 * Draws the list into `table` (a `<table>` with a `<thead>` and a `<tbody>`):
 * a row per source and a column per day of `days`, or with `daysAsRows` a
 * row per day and a column per source; each cell a `td.report-cell` with
 * `data-source`, `data-day` and `data-state` (`delivered`, `pending`,
 * `failed`, or `none` where the list has no entry), and a `title`.
 * `data-layout` says which way it is drawn.
 * @param {HTMLTableElement} table
 * @param {{list: ReportList | null, days: readonly string[], sources: readonly string[],
 *   timeZone?: string, daysAsRows: boolean}} view
 */
export function renderReportGrid(table, { list, days, sources, timeZone, daysAsRows }) {
  const entries = entriesByKey(list);
  /** @param {string} source @param {string} day */
  const cell = (source, day) =>
    reportCell(entries.get(keyOf(source, day)), { source, day, timeZone });
  let head;
  let rows;
  if (daysAsRows) {
    head = [headingCell('col', 'Day'), ...sources.map((source) => sourceHeading(source, 'col'))];
    rows = days.map((day) =>
      tableRow([dayHeading(day, 'row'), ...sources.map((source) => cell(source, day))]),
    );
  } else {
    head = [headingCell('col', 'Source'), ...days.map((day) => dayHeading(day, 'col'))];
    rows = sources.map((source) =>
      tableRow([sourceHeading(source, 'row'), ...days.map((day) => cell(source, day))]),
    );
  }
  table.tHead.replaceChildren(tableRow(head));
  table.tBodies[0].replaceChildren(...rows);
  // The CSS gives the table room for this many columns of cells before its frame scrolls.
  table.style.setProperty('--report-columns', String(head.length - 1));
  table.dataset.layout = daysAsRows ? 'days-as-rows' : 'days-as-columns';
}
