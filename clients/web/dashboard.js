/**
 * The dashboard served by the relay at `/`: one group per source the relay
 * serves (its name, kind, status, meters with their burn rate and
 * projection, summary, freshness and its own refresh button), alerts,
 * banners and a chart of one source's last 24 hours, all fed by one
 * {@link UsageClient} through the store, the "Usage by day" view (daychart.js) of
 * the last 14 days from the relay's metering ledger, and the "Daily reports" panel
 * (reports.js) of the last 14 closed days' usage reports. With a single source the group
 * has no header or frame, so the page looks as it did before sources.
 *
 * @module dashboard
 */

import { CHART_SPAN_MS, WINDOW_SERIES, renderChart, renderLegend } from './chart.js';
import {
  BY_DAY_DAYS,
  addDays,
  breakdownCsv,
  calendarDay,
  defaultUnit,
  formatAmount,
  formatPolls,
  hasUnit,
  lastDays,
  renderDayChart,
  renderDayLegend,
  sourcesOf,
  totalsBySource,
} from './daychart.js';
import {
  KIND_NAMES,
  STATE_NAMES,
  clampPercent,
  describeAlert,
  describeRefreshError,
  describeStatus,
  formatForecast,
  formatMeterAmount,
  formatMeterValue,
  formatMetersSummary,
  formatResetLabel,
  formatSummary,
  formatUpdatedAgo,
  hasPercent,
  isLimitReached,
  windowMeters,
} from './format.js';
import {
  countStates,
  formatCounts,
  renderReportGrid,
  reportDays,
  reportSources,
} from './reports.js';
import { createUsageStore } from './store.js';
import {
  DEFAULT_TOPIC,
  UsageClient,
  UsageRequestError,
  sourceOfTopic,
  topicFor,
} from './usage-client.js';

/**
 * @typedef {import('./usage-client.js').Alert} Alert
 * @typedef {import('./usage-client.js').Meter} Meter
 * @typedef {import('./usage-client.js').Snapshot} Snapshot
 * @typedef {import('./usage-client.js').Status} Status
 * @typedef {import('./usage-client.js').UsageState} UsageState
 * @typedef {import('./chart.js').Reading} Reading
 * @typedef {import('./chart.js').Series} Series
 *
 * @typedef {object} Group one source's part of the page
 * @property {string | null} name the source's name; null for the one source of a
 *   relay without sources (or before the relay said which it has)
 * @property {string} kind
 * @property {HTMLElement} element
 * @property {string} id prefix of the element ids inside the group
 * @property {HTMLElement[]} cards
 * @property {string} cardsKey which meters the cards were built for
 * @property {boolean} refreshing
 */

/** At most this many readings are charted per source, however often the relay polls. */
const MAX_READINGS = 5000;
/** Stored points asked for to fill the chart; the relay thins a longer history evenly. */
const SEED_POINTS = 500;
/** The by-day view is read again this often, and whenever the day changes in the relay's zone. */
const BY_DAY_REFRESH_MS = 5 * 60_000;
/** How often the page checks whether the by-day view is due, or the day has changed. */
const BY_DAY_CHECK_MS = 30_000;
/**
 * A report event asks for the report list this long after it, with the events that
 * follow meanwhile: a catch-up delivers dozens of reports in a burst, read once.
 */
const REPORTS_SETTLE_MS = 1000;
/** Below this width the report grid turns its days into rows: 14 columns no longer fit. */
const REPORTS_WIDE_PX = 600;

/**
 * @template {Element} [T=HTMLElement]
 * @param {string} testId
 * @param {ParentNode} [root]
 * @returns {T}
 */
const byTestId = (testId, root = document) => root.querySelector(`[data-testid="${testId}"]`);

/**
 * @param {Element} root
 * @param {string} selector
 */
const part = (root, selector) => /** @type {HTMLElement} */ (root.querySelector(selector));

/**
 * A fresh copy of a template's element.
 * @param {HTMLTemplateElement} template
 */
const instantiate = (template) =>
  /** @type {HTMLElement} */ (template.content.firstElementChild.cloneNode(true));

/**
 * A name as it appears in test ids and element ids: "Key limit" -> "key-limit".
 * @param {string} name
 */
const slug = (name) =>
  name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '') || 'meter';

/** @param {string} id */
const template = (id) => /** @type {HTMLTemplateElement} */ (document.getElementById(id));

const ui = {
  product: byTestId('product'),
  summary: byTestId('summary'),
  connectionBanner: byTestId('connection-banner'),
  sources: byTestId('sources'),
  chart: /** @type {SVGSVGElement} */ (byTestId('usage-chart')),
  legend: byTestId('chart-legend'),
  chartSource: /** @type {HTMLSelectElement} */ (byTestId('chart-source')),
  chartSourceLabel: byTestId('chart-source-label'),
  alertList: byTestId('alert-list'),
  alertTemplate: template('alert-template'),
  sourceTemplate: template('source-template'),
  meterTemplate: template('meter-template'),
  byDay: byTestId('by-day'),
  byDayChart: /** @type {SVGSVGElement} */ (byTestId('by-day-chart')),
  byDayLegend: byTestId('by-day-legend'),
  byDayRange: byTestId('by-day-range'),
  byDayStatus: byTestId('by-day-status'),
  byDayTotals: /** @type {HTMLTableElement} */ (byTestId('by-day-totals')),
  byDayCsv: /** @type {HTMLButtonElement} */ (byTestId('by-day-csv')),
  byDayUnits: /** @type {NodeListOf<HTMLInputElement>} */ (
    document.querySelectorAll('input[name="by-day-unit"]')
  ),
  reports: byTestId('reports'),
  reportsSummary: byTestId('reports-summary'),
  reportsRange: byTestId('reports-range'),
  reportsStatus: byTestId('reports-status'),
  reportsFrame: byTestId('reports-frame'),
  reportsGrid: /** @type {HTMLTableElement} */ (byTestId('reports-grid')),
};

// The client starts on the `usage` topic (the default source, as in v1), so that the page
// shows data and a relay that refuses the connection is retried with backoff; once the relay
// has listed its sources, the page follows each of them by name instead.
const client = new UsageClient();
const store = createUsageStore(client);
/** @type {Map<string | null, Group>} in the relay's order */
let groups = new Map();
/** The relay's zone for reset labels and times; the browser's own until it says. */
let timeZone = /** @type {string | undefined} */ (undefined);
/** @type {Map<string | null, Reading[]>} readings per group, oldest first */
const histories = new Map();
/** @type {string | null | undefined} the group whose history is charted; undefined: the first */
let chartKey;
/** @type {Map<Alert, HTMLElement>} the notice shown for each alert */
const alertItems = new Map();
/** Numbers the notices, whose text describes their Dismiss button, and the groups. */
let alertCount = 0;
let groupCount = 0;
/**
 * The by-day view: the last breakdown read (null before one), the days it
 * covers, when it was last asked for (successfully or not) and the unit the
 * viewer chose (null: the default of the data).
 * @type {{breakdown: import('./usage-client.js').Breakdown | null, days: string[],
 *   askedDay: string | null, askedAt: number, loading: boolean,
 *   unit: import('./daychart.js').DayUnit | null}}
 */
const byDay = { breakdown: null, days: [], askedDay: null, askedAt: -Infinity, loading: false, unit: null };
/**
 * The reports panel: the last list read (null before one), the days it covers, the day
 * it was asked on, whether a read is running or another is wanted after it, and the
 * timer of a read that events asked for.
 * @type {{list: import('./usage-client.js').ReportList | null, days: string[],
 *   askedDay: string | null, loading: boolean, again: boolean,
 *   timer: ReturnType<typeof setTimeout> | undefined}}
 */
const reports = {
  list: null,
  days: [],
  askedDay: null,
  loading: false,
  again: false,
  timer: undefined,
};
/** The relay answers one stored read (history, breakdown, reports) per connection at a time. */
let storedReads = Promise.resolve();

/**
 * Sets text only when it changes, so live regions do not repeat themselves.
 * @param {Element} element
 * @param {string} text
 */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/**
 * @param {HTMLElement} banner
 * @param {string | null} text null hides the banner
 */
function setBanner(banner, text) {
  setText(banner, text ?? '');
  banner.hidden = text === null;
}

/**
 * @param {Element} element
 * @param {string} name
 * @param {string | null} value null removes the attribute
 */
function setAttribute(element, name, value) {
  if (value === null) element.removeAttribute(name);
  else if (element.getAttribute(name) !== value) element.setAttribute(name, value);
}

/**
 * `name` if this browser knows it as a time zone, else undefined (the browser's own).
 * @param {unknown} name
 * @returns {string | undefined}
 */
function knownZone(name) {
  if (typeof name !== 'string' || name === '') return undefined;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: name });
    return name;
  } catch {
    return undefined;
  }
}

// -- groups -----------------------------------------------------------------

/**
 * A new group for a source, with its refresh button wired.
 * @param {{name: string | null, kind: string}} source
 * @returns {Group}
 */
function createGroup({ name, kind }) {
  const element = instantiate(ui.sourceTemplate);
  const id = `source-${(groupCount += 1)}`;
  if (name !== null) element.dataset.source = name;
  const title = part(element, '.source-name');
  title.id = `${id}-title`;
  element.setAttribute('aria-labelledby', title.id);
  /** @type {Group} */
  const group = { name, kind, element, id, cards: [], cardsKey: '', refreshing: false };
  part(element, '.refresh').addEventListener('click', () => refresh(group));
  return group;
}

/**
 * Shows one group per source, in this order, keeping the groups (and the
 * chart's readings) of sources already shown.
 * @param {{name: string | null, kind: string}[]} sources
 */
function setGroups(sources) {
  /** @type {Map<string | null, Group>} */
  const next = new Map();
  for (const source of sources) {
    const group = groups.get(source.name) ?? createGroup(source);
    group.kind = source.kind;
    next.set(source.name, group);
  }
  for (const [key, group] of groups) {
    if (next.has(key)) continue;
    group.element.remove();
    histories.delete(key);
  }
  groups = next;
  // Moving an element takes the focus off its buttons: only when the order changed.
  const elements = [...next.values()].map((group) => group.element);
  const shown = [...ui.sources.querySelectorAll(':scope > .source')];
  if (elements.some((element, index) => element !== shown[index])) ui.sources.append(...elements);
  const options = [...next.values()].map((group) => {
    const option = document.createElement('option');
    option.value = group.name ?? '';
    option.textContent = group.name ?? 'default';
    return option;
  });
  ui.chartSource.replaceChildren(...options);
  ui.chartSource.value = chartGroup()?.name ?? '';
  render(store.getSnapshot());
  drawChart();
}

/**
 * The group a snapshot belongs to: its source's, else the group of a relay
 * without sources.
 * @param {Snapshot} snapshot
 * @returns {string | null}
 */
function groupKeyOf(snapshot) {
  return groups.has(snapshot.source) || !groups.has(null) ? snapshot.source : null;
}

/**
 * A group's snapshot and status.
 * @param {Group} group
 * @param {UsageState} state
 * @returns {{snapshot: Snapshot | null, status: Status | null}}
 */
function sourceState(group, state) {
  if (group.name === null) return { snapshot: state.snapshot, status: state.status };
  return state.sources[group.name] ?? { snapshot: null, status: null };
}

/**
 * A snapshot's meters; from its `usage` for a relay that sends none.
 * @param {Snapshot | null} snapshot
 * @returns {Meter[]}
 */
function metersOf(snapshot) {
  if (!snapshot) return [];
  if (Array.isArray(snapshot.meters) && snapshot.meters.length > 0) return snapshot.meters;
  return windowMeters(/** @type {any} */ (snapshot.usage));
}

/**
 * Builds the group's meter cards from the meter template, unless they were
 * built for the same meters. The meter's name prefixes the template's test
 * ids ("daily-percent") and names the heading that labels the meter.
 * @param {Group} group
 * @param {Pick<Meter, 'id' | 'label' | 'unit'>[]} meters
 */
function buildCards(group, meters) {
  const key = JSON.stringify(meters.map(({ id, label, unit }) => [id, label, unit]));
  if (key === group.cardsKey) return;
  const prefixes = new Set();
  group.cards = meters.map((meter, index) => {
    const card = instantiate(ui.meterTemplate);
    let prefix = slug(meter.label);
    if (prefixes.has(prefix)) prefix = `${prefix}-${slug(meter.id)}`;
    prefixes.add(prefix);
    card.dataset.bucket = meter.id;
    card.dataset.unit = meter.unit;
    card.dataset.series = String(index % 4);
    for (const element of card.querySelectorAll('[data-testid]')) {
      element.setAttribute('data-testid', `${prefix}-${element.getAttribute('data-testid')}`);
    }
    const title = part(card, 'h3');
    title.id = `${group.id}-${prefix}-title`;
    title.textContent = meter.label;
    part(card, '[role="meter"]').setAttribute('aria-labelledby', title.id);
    return card;
  });
  group.cardsKey = key;
  part(group.element, '.meters').replaceChildren(...group.cards);
}

/**
 * @param {HTMLElement} card
 * @param {Meter | undefined} meter undefined before there is data
 * @param {number} now
 */
function renderMeter(card, meter, now) {
  const bar = part(card, '[role="meter"]');
  const fill = part(card, '.bar-fill');
  const amount = part(card, '.amount');
  const limit = meter !== undefined && isLimitReached(meter);
  card.classList.toggle('is-limit', limit);
  part(card, '.limit-badge').hidden = !limit;
  if (meter === undefined) {
    setText(part(card, '.percent'), '—');
    setText(part(card, '.reset'), '');
    amount.hidden = true;
    bar.hidden = card.dataset.unit !== 'percent';
    bar.removeAttribute('aria-valuenow');
    bar.setAttribute('aria-valuetext', 'No data yet');
    fill.style.width = '0%';
    return;
  }
  const value = formatMeterValue(meter);
  const amountText = formatMeterAmount(meter);
  const reset = meter.reset_at ? formatResetLabel(meter.reset_at, now, timeZone) : '';
  setText(part(card, '.percent'), value);
  setText(part(card, '.reset'), reset);
  setText(amount, amountText ?? '');
  amount.hidden = amountText === null;
  // A usd meter without a limit has an amount but nothing to fill.
  bar.hidden = !hasPercent(meter);
  const used = clampPercent(meter.used_percent ?? 0);
  const spent = amountText === null ? '' : ` (${amountText})`;
  bar.setAttribute('aria-valuenow', String(used));
  bar.setAttribute(
    'aria-valuetext',
    `${value} used${spent}${limit ? ', limit reached' : ''}.${reset ? ` ${reset}` : ''}`,
  );
  fill.style.width = `${used}%`;
}

/**
 * Shows the meter's burn rate and projection, or nothing at all when there
 * is no forecast or no burn rate yet.
 * @param {HTMLElement} card
 * @param {import('./usage-client.js').WindowForecast | null | undefined} forecast
 * @param {number} now
 */
function renderForecast(card, forecast, now) {
  const line = part(card, '.forecast');
  const text = formatForecast(forecast, now, timeZone);
  line.hidden = text === null;
  line.classList.toggle('is-warning', text?.limitBeforeReset ?? false);
  setText(part(card, '.burn-rate'), text?.rate ?? '');
  setText(part(card, '.outlook'), text?.outlook ?? '');
}

/**
 * The group's one-line summary: PostHog's as it always was, any other
 * source's from its dominant meter.
 * @param {Snapshot | null} snapshot
 * @param {Meter[]} meters
 * @param {number} now
 */
function summaryOf(snapshot, meters, now) {
  if (!snapshot) return 'Waiting for data…';
  const usage = /** @type {any} */ (snapshot.usage);
  if ((snapshot.kind ?? 'posthog') === 'posthog' && usage?.burst && usage?.sustained) {
    return formatSummary(usage, now, timeZone);
  }
  return formatMetersSummary(meters, now, timeZone);
}

/**
 * @param {Group} group
 * @param {UsageState} state
 * @param {number} now
 * @param {boolean} several whether the page shows several groups
 */
function renderGroup(group, state, now, several) {
  const { snapshot, status } = sourceState(group, state);
  const { element } = group;
  const kind = snapshot?.kind ?? group.kind;
  const meters = metersOf(snapshot);
  // Before the first snapshot, a PostHog source shows its two windows empty.
  buildCards(group, meters.length === 0 && kind === 'posthog' ? placeholderWindows() : meters);
  group.cards.forEach((card, index) => {
    const meter = meters[index];
    renderMeter(card, meter, now);
    // A limit already reached is no longer a forecast; the meter says so.
    const reached = meter !== undefined && isLimitReached(meter);
    const forecast = meter && hasPercent(meter) && !reached ? snapshot?.derived?.[meter.id] : null;
    renderForecast(card, forecast, now);
  });

  const name = group.name ?? snapshot?.source ?? '';
  element.dataset.kind = kind;
  setText(part(element, '.source-name'), name);
  setText(part(element, '.source-kind'), KIND_NAMES[kind] ?? kind);
  const badge = part(element, '.source-state');
  setText(badge, status ? (STATE_NAMES[status.state] ?? status.state) : '');
  badge.dataset.state = status?.state ?? '';
  setText(part(element, '.source-summary'), summaryOf(snapshot, meters, now));
  setBanner(byTestId('status-banner', element), describeStatus(status));

  const button = /** @type {HTMLButtonElement} */ (part(element, '.refresh'));
  button.disabled = group.refreshing || state.connection !== 'open';
  setAttribute(button, 'aria-label', several ? `Refresh ${name} now` : null);
  setAttribute(
    part(element, '.meters'),
    'aria-label',
    several ? `Usage windows of ${name}` : 'Usage windows',
  );

  let freshness = 'Connecting…';
  if (snapshot) freshness = formatUpdatedAgo(snapshot.fetched_at, now);
  else if (state.connection === 'open') freshness = 'No data yet';
  setText(byTestId('freshness', element), freshness);
}

/** PostHog's two windows, before a source has sent its first snapshot. */
function placeholderWindows() {
  return WINDOW_SERIES.map(({ id, label }) => ({ id, label, unit: /** @type {const} */ ('percent') }));
}

// -- alerts -----------------------------------------------------------------

/**
 * One dismissible notice.
 * @param {Alert} alert
 * @param {number} now
 * @param {boolean} several whether to name the alert's source
 */
function alertItem(alert, now, several) {
  const item = instantiate(ui.alertTemplate);
  const text = part(item, '.alert-text');
  const dismiss = part(item, '.alert-dismiss');
  item.dataset.kind = alert.kind;
  if (alert.source) item.dataset.source = alert.source;
  text.id = `alert-${(alertCount += 1)}`;
  setText(text, describeAlert(alert, now, timeZone, { withSource: several }));
  dismiss.setAttribute('aria-describedby', text.id);
  dismiss.addEventListener('click', () => {
    const neighbour = item.nextElementSibling ?? item.previousElementSibling;
    store.dismissAlert(alert);
    neighbour?.querySelector('button')?.focus();
  });
  return item;
}

/**
 * Keeps one notice per alert, newest first, minus those whose window has reset
 * since. Notices stay in place rather than being redrawn, so that the live
 * region announces each alert once.
 * @param {readonly Alert[]} alerts newest first
 * @param {number} now
 * @param {boolean} several
 */
function renderAlerts(alerts, now, several) {
  const current = alerts.filter(
    (alert) => alert.reset_at === null || alert.reset_at === undefined || Date.parse(alert.reset_at) > now,
  );
  for (const [alert, item] of alertItems) {
    if (current.includes(alert)) continue;
    item.remove();
    alertItems.delete(alert);
  }
  for (const alert of current.toReversed()) {
    if (alertItems.has(alert)) continue;
    const item = alertItem(alert, now, several);
    alertItems.set(alert, item);
    ui.alertList.prepend(item);
  }
}

// -- the page ---------------------------------------------------------------

/**
 * @param {UsageState} state
 * @param {number} now
 */
function render(state, now = Date.now()) {
  document.body.dataset.connection = state.connection;
  const several = groups.size > 1;
  ui.sources.dataset.layout = several ? 'multi' : 'single';
  for (const group of groups.values()) renderGroup(group, state, now, several);

  // One source: its product and summary head the page, as before sources.
  const only = several ? undefined : groups.values().next().value;
  const { snapshot } = only ? sourceState(only, state) : { snapshot: null };
  const product = /** @type {any} */ (snapshot?.usage)?.product;
  setText(ui.product, typeof product === 'string' ? `Product: ${product}` : '');
  ui.summary.hidden = several;
  setText(ui.summary, only ? summaryOf(snapshot, metersOf(snapshot), now) : '');
  renderAlerts(state.alerts, now, several);

  setBanner(
    ui.connectionBanner,
    state.connection === 'reconnecting'
      ? 'Connection to the relay lost — reconnecting… The numbers shown may be out of date.'
      : null,
  );
  ui.chartSourceLabel.hidden = !several;
}

/**
 * Refreshes one source only.
 * @param {Group} group
 */
async function refresh(group) {
  const outcome = byTestId('refresh-outcome', group.element);
  group.refreshing = true;
  outcome.dataset.outcome = 'pending';
  setText(outcome, 'Refreshing…');
  render(store.getSnapshot());
  try {
    await client.refresh({ source: group.name });
    outcome.dataset.outcome = 'ok';
    setText(outcome, 'Updated');
  } catch (error) {
    outcome.dataset.outcome = 'error';
    setText(outcome, describeRefreshError(error));
  } finally {
    group.refreshing = false;
    render(store.getSnapshot());
  }
}

// -- the chart --------------------------------------------------------------

/** The group whose history is charted: the one chosen, else the first. */
function chartGroup() {
  if (chartKey !== undefined && groups.has(chartKey)) return groups.get(chartKey);
  return groups.values().next().value;
}

/**
 * The lines to draw for a group: its percent meters, styled like their cards.
 * @param {Group} group
 * @returns {Series[]}
 */
function seriesOf(group) {
  const { snapshot } = sourceState(group, store.getSnapshot());
  const meters = metersOf(snapshot);
  if (meters.length === 0) return group.kind === 'posthog' ? [...WINDOW_SERIES] : [];
  return meters
    .map((meter, index) => ({ id: meter.id, label: meter.label, style: index, meter }))
    .filter(({ meter }) => hasPercent(meter))
    .map(({ id, label, style }) => ({ id, label, style }));
}

/** Draws the charted group's readings of the last 24 hours, dropping older ones. */
function drawChart() {
  const group = chartGroup();
  const key = group?.name ?? null;
  const since = Date.now() - CHART_SPAN_MS;
  const history = (histories.get(key) ?? []).filter((reading) => reading.t >= since);
  histories.set(key, history.slice(-MAX_READINGS));
  const series = group ? seriesOf(group) : [...WINDOW_SERIES];
  renderChart(ui.chart, histories.get(key), series, timeZone);
  renderLegend(ui.legend, series);
}

/**
 * The percent of each meter that has one, by id.
 * @param {Meter[]} meters
 */
const percents = (meters) =>
  Object.fromEntries(meters.filter(hasPercent).map((meter) => [meter.id, meter.used_percent]));

/** @param {Snapshot} snapshot */
function record(snapshot) {
  const key = groupKeyOf(snapshot);
  const history = histories.get(key) ?? [];
  history.push({ t: Date.parse(snapshot.fetched_at), values: percents(metersOf(snapshot)) });
  histories.set(key, history);
  if (key === (chartGroup()?.name ?? null)) drawChart();
}

/**
 * A stored point's percents: from its `meters`, or its v1 fields.
 * @param {import('./usage-client.js').HistoryPoint} point
 * @returns {Record<string, number>}
 */
function pointPercents(point) {
  if (point.meters) {
    const entries = Object.entries(point.meters).filter(
      ([, reading]) => typeof reading?.used_percent === 'number',
    );
    return Object.fromEntries(entries.map(([id, reading]) => [id, reading.used_percent]));
  }
  /** @type {Record<string, number>} */
  const values = {};
  if (typeof point.burst_percent === 'number') values.burst = point.burst_percent;
  if (typeof point.sustained_percent === 'number') values.sustained = point.sustained_percent;
  return values;
}

/**
 * Fills the charted group's history from the relay's stored history, so that
 * the chart is not empty after a reload and has no gap after a reconnect.
 * Live readings newer than the newest stored point are kept.
 */
async function seedChart() {
  const group = chartGroup();
  if (!group) return;
  const key = group.name;
  let points;
  try {
    const since = new Date(Date.now() - CHART_SPAN_MS);
    points = await storedRead(() => client.getHistory({ source: key, since, limit: SEED_POINTS }));
  } catch (error) {
    // A relay without history, or a lost connection: the chart keeps its live readings.
    if (error instanceof UsageRequestError) return;
    throw error;
  }
  if (!groups.has(key)) return;
  const stored = points.map((point) => ({
    t: Date.parse(point.fetched_at),
    values: pointPercents(point),
  }));
  const newest = stored.at(-1)?.t ?? -Infinity;
  const live = (histories.get(key) ?? []).filter((reading) => reading.t > newest);
  histories.set(key, [...stored, ...live]);
  drawChart();
}

/**
 * Runs `read` once the stored reads queued before it have settled.
 * @template T
 * @param {() => Promise<T>} read
 * @returns {Promise<T>}
 */
function storedRead(read) {
  const run = storedReads.then(read, read);
  storedReads = run.catch(() => {});
  return run;
}

// -- usage by day -----------------------------------------------------------

/** The zone days are counted in: the relay's, as listed or as its last breakdown or reports said. */
const relayZone = () =>
  timeZone ?? knownZone(byDay.breakdown?.timezone ?? reports.list?.timezone);

/** Today in the relay's zone: the by-day view and the reports are read again when it changes. */
const relayToday = () => calendarDay(Date.now(), relayZone());

/** The source names the relay listed, in its order (none for a relay without sources). */
const listedSources = () => [...groups.keys()].filter((name) => name !== null);

/**
 * Reads the last 14 days (today and the 13 before it, calendar days in the
 * relay's zone) grouped by source and day, and draws them. A relay without a
 * ledger (`unknown_op`) hides the view; a lost connection leaves it to the
 * next connection; other failures say so and keep what is shown.
 */
async function loadByDay() {
  if (byDay.loading) return;
  byDay.loading = true;
  const today = relayToday();
  const since = addDays(today, 1 - BY_DAY_DAYS);
  try {
    const breakdown = await storedRead(() =>
      client.getBreakdown({ since, groupBy: ['source', 'day'] }),
    );
    Object.assign(byDay, { breakdown, days: lastDays(today), askedDay: today, askedAt: Date.now() });
    ui.byDay.hidden = false;
    ui.byDay.dataset.state = 'ready';
    setBanner(ui.byDayStatus, null);
  } catch (error) {
    if (!(error instanceof UsageRequestError)) throw error;
    if (error.code === 'unknown_op') {
      ui.byDay.hidden = true;
      ui.byDay.dataset.state = 'unsupported';
      Object.assign(byDay, { askedDay: today, askedAt: Date.now() });
    } else if (error.code !== 'disconnected' && error.code !== 'closed') {
      Object.assign(byDay, { askedDay: today, askedAt: Date.now() });
      ui.byDay.hidden = false;
      ui.byDay.dataset.state = 'error';
      setBanner(ui.byDayStatus, `Usage by day is unavailable: ${error.message}`);
    }
  } finally {
    byDay.loading = false;
  }
  drawByDay();
}

/**
 * Reads the by-day view again when the day has changed in the relay's zone, or every few
 * minutes; the reports panel when the day has changed (its events tell it of the rest).
 */
function checkDays() {
  if (client.state !== 'open') return;
  const today = relayToday();
  if (today !== byDay.askedDay || Date.now() - byDay.askedAt >= BY_DAY_REFRESH_MS) loadByDay();
  if (today !== reports.askedDay) loadReports();
}

/** The unit the bars show: the viewer's choice, else dollars when any source has some. */
function byDayUnit() {
  const { breakdown, unit } = byDay;
  if (unit !== null && hasUnit(breakdown, unit)) return unit;
  return defaultUnit(breakdown);
}

/** Draws the by-day chart, its legend, its totals and the state of its controls. */
function drawByDay() {
  const { breakdown, days } = byDay;
  ui.byDayCsv.disabled = breakdown === null;
  if (breakdown === null || ui.byDay.hidden) return;
  const sources = sourcesOf(breakdown, listedSources());
  const unit = byDayUnit();
  for (const input of ui.byDayUnits) {
    input.checked = input.value === unit;
    input.disabled = !hasUnit(breakdown, /** @type {any} */ (input.value)) && input.value !== unit;
  }
  const [first, last] = [days[0], days.at(-1)];
  setText(ui.byDayRange, `${dayLabel(first)} to ${dayLabel(last)}, days in ${breakdown.timezone}`);
  renderDayChart(ui.byDayChart, { breakdown, days, sources, unit });
  renderDayLegend(ui.byDayLegend, sources);
  renderTotals(sources);
}

/**
 * "Nov 9" for 2026-11-09.
 * @param {string} day
 */
const dayLabel = (day) =>
  new Date(`${day}T12:00:00Z`).toLocaleDateString('en-US', {
    month: 'short',
    day: 'numeric',
    timeZone: 'UTC',
  });

/**
 * One row of the totals' table.
 * @param {string} name
 * @param {{usd: number | null, percent: number | null, polls: number, failed_polls: number}} total
 * @param {string} [source] the source it is about (none for the row of all sources)
 */
function totalRow(name, total, source = undefined) {
  const row = document.createElement('tr');
  if (source !== undefined) row.dataset.source = source;
  const head = document.createElement('th');
  head.scope = 'row';
  head.textContent = name;
  const cells = [
    formatAmount(total.usd, 'usd'),
    formatAmount(total.percent, 'percent'),
    formatPolls(total.polls, total.failed_polls),
  ].map((text) => {
    const cell = document.createElement('td');
    cell.textContent = text;
    return cell;
  });
  row.append(head, ...cells);
  return row;
}

/**
 * The totals per source over the 14 days, and of all sources (the breakdown's `totals`).
 * @param {string[]} sources
 */
function renderTotals(sources) {
  const { breakdown } = byDay;
  const totals = totalsBySource(breakdown, sources);
  ui.byDayTotals.tBodies[0].replaceChildren(
    ...sources.map((source) => totalRow(source, totals.get(source), source)),
  );
  const all = breakdown?.totals;
  const footer = all
    ? [totalRow('All sources', { ...all.consumed, polls: all.polls, failed_polls: all.failed_polls })]
    : [];
  ui.byDayTotals.tFoot.replaceChildren(...footer);
}

/** Downloads the rows shown as CSV, through a Blob. */
function downloadCsv() {
  const { breakdown, days } = byDay;
  if (breakdown === null) return;
  const blob = new Blob([breakdownCsv(breakdown)], { type: 'text/csv;charset=utf-8' });
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = `usage-by-day-${days[0]}-to-${days.at(-1)}.csv`;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // Revoked once the browser has surely started the download.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// -- daily reports ------------------------------------------------------------

/**
 * Reads the reports of the last 14 closed days in the relay's zone and draws them. A
 * read asked for while one runs is made once that one is done. A relay without reports
 * (`unknown_op`) hides the panel; a lost connection leaves it to the next connection;
 * other failures say so and keep what is shown.
 */
async function loadReports() {
  if (reports.loading) {
    reports.again = true;
    return;
  }
  reports.loading = true;
  const today = relayToday();
  const days = reportDays(today);
  try {
    const list = await storedRead(() => client.listReports({ since: days[0] }));
    Object.assign(reports, { list, days, askedDay: today });
    setReportsState('ready', null);
  } catch (error) {
    if (!(error instanceof UsageRequestError)) throw error;
    if (error.code === 'unknown_op') {
      reports.askedDay = today;
      setReportsState('unsupported', null);
    } else if (error.code !== 'disconnected' && error.code !== 'closed') {
      reports.askedDay = today;
      setReportsState('error', `Daily reports are unavailable: ${error.message}`);
    }
  } finally {
    reports.loading = false;
  }
  drawReports();
  if (reports.again) {
    reports.again = false;
    loadReports();
  }
}

/**
 * Shows the panel in `state` (hidden when `unsupported`), with `problem` or no status line.
 * @param {'ready' | 'error' | 'unsupported'} state
 * @param {string | null} problem
 */
function setReportsState(state, problem) {
  ui.reports.hidden = state === 'unsupported';
  ui.reports.dataset.state = state;
  setBanner(ui.reportsStatus, problem);
}

/** A report was delivered or failed: read the list again once the burst it may open is over. */
function scheduleReports() {
  if (reports.timer !== undefined) return;
  reports.timer = setTimeout(() => {
    reports.timer = undefined;
    loadReports();
  }, REPORTS_SETTLE_MS);
}

/** Whether the grid's days go in rows: 14 columns do not fit its frame (a phone). */
const reportDaysAsRows = () => ui.reportsFrame.clientWidth < REPORTS_WIDE_PX;

/** Draws the report grid, its summary and its range, the days as rows when columns do not fit. */
function drawReports() {
  const { list, days } = reports;
  if (list === null || ui.reports.hidden) return;
  const sources = reportSources(list, listedSources());
  setText(ui.reportsSummary, formatCounts(countStates(list, days, sources)));
  const { destinations } = list;
  const where = destinations.length > 0 ? `to ${destinations.join(' and ')}` : 'saved only';
  setText(
    ui.reportsRange,
    `${dayLabel(days[0])} to ${dayLabel(days.at(-1))}, days in ${list.timezone}; ${where}`,
  );
  const daysAsRows = reportDaysAsRows();
  renderReportGrid(ui.reportsGrid, { list, days, sources, timeZone: relayZone(), daysAsRows });
}

/** Draws the grid again when its frame crosses the width where 14 day columns fit. */
function fitReports() {
  const layout = reportDaysAsRows() ? 'days-as-rows' : 'days-as-columns';
  if (ui.reportsGrid.dataset.layout !== undefined && ui.reportsGrid.dataset.layout !== layout) {
    drawReports();
  }
}

// -- sources ----------------------------------------------------------------

/**
 * Subscribes to a source, leaving failures (a source gone, a lost connection)
 * to the next listing.
 * @param {string | null} source
 */
async function follow(source) {
  try {
    await client.subscribe(source);
  } catch (error) {
    if (!(error instanceof UsageRequestError)) throw error;
  }
}

/**
 * Asks the relay which sources it serves, shows a group for each and follows
 * them all by name (the client subscribes them again by itself after a
 * reconnect), then leaves the `usage` topic. A relay from before sources
 * answers `unknown_op`: its one source stays followed on the `usage` topic.
 */
async function discover() {
  let listing;
  try {
    listing = await client.listSources();
  } catch (error) {
    if (!(error instanceof UsageRequestError)) throw error;
    if (error.code !== 'unknown_op') return; // lost again: the next connection asks again
    setGroups([{ name: null, kind: 'posthog' }]);
    if (!client.topics.includes(DEFAULT_TOPIC)) await follow(null);
    await seedChart();
    await loadByDay();
    await loadReports();
    return;
  }
  timeZone = knownZone(listing.timezone);
  const sources = listing.sources.map(({ name, kind }) => ({ name, kind }));
  if (sources.length === 0) return;
  setGroups(sources);
  const followed = new Set(client.topics);
  await Promise.all(
    sources.filter(({ name }) => !followed.has(topicFor(name))).map(({ name }) => follow(name)),
  );
  // Only now, so that no event falls between leaving one topic and joining the other.
  const names = new Set(sources.map(({ name }) => name));
  for (const topic of client.topics) {
    const source = sourceOfTopic(topic);
    if (source === null || !names.has(source)) client.unsubscribe(source).catch(() => {});
  }
  await seedChart();
  // On every (re)connection: the sources, the zone or the day may have changed meanwhile.
  await loadByDay();
  await loadReports();
}

client.addEventListener('snapshot', (event) => record(event.detail));
client.addEventListener('report', scheduleReports);
client.addEventListener('statechange', (event) => {
  if (event.detail.state === 'open') discover();
});
ui.chartSource.addEventListener('change', () => {
  chartKey = [...groups.keys()].find((key) => (key ?? '') === ui.chartSource.value);
  drawChart();
  seedChart();
});
store.subscribe((state) => render(state));
// Before the relay says which sources it has: one group, as the page always started.
setGroups([{ name: null, kind: 'posthog' }]);
// Reset labels, freshness and the alerts of windows that reset are relative to now.
setInterval(() => render(store.getSnapshot()), 1000);
// The chart draws in pixels: redraw it when its width changes.
new ResizeObserver(() => drawChart()).observe(ui.chart);
new ResizeObserver(() => drawByDay()).observe(ui.byDayChart);
new ResizeObserver(fitReports).observe(ui.reportsFrame);
for (const input of ui.byDayUnits) {
  input.addEventListener('change', () => {
    byDay.unit = /** @type {any} */ (input.value);
    drawByDay();
  });
}
ui.byDayCsv.addEventListener('click', downloadCsv);
// Not on every update: when the day changes, and (by day) every few minutes.
setInterval(checkDays, BY_DAY_CHECK_MS);
client.start();
