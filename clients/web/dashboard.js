/**
 * The dashboard served by the relay at `/`: two meters with their burn rate
 * and projection, a summary line, alerts, a refresh button, freshness, banners
 * and a chart of the last 24 hours of usage, all fed by one {@link UsageClient}
 * through the store.
 *
 * @module dashboard
 */

import { CHART_SPAN_MS, renderChart } from './chart.js';
import {
  BUCKET_NAMES,
  clampPercent,
  describeAlert,
  describeRefreshError,
  describeStatus,
  formatForecast,
  formatPercent,
  formatResetLabel,
  formatSummary,
  formatUpdatedAgo,
  isLimitReached,
} from './format.js';
import { createUsageStore } from './store.js';
import { UsageClient, UsageRequestError } from './usage-client.js';

/**
 * @typedef {import('./usage-client.js').Alert} Alert
 * @typedef {import('./usage-client.js').Bucket} Bucket
 * @typedef {import('./usage-client.js').WindowForecast} WindowForecast
 * @typedef {import('./chart.js').Reading} Reading
 */

/** At most this many readings are charted, however often the relay polls. */
const MAX_READINGS = 5000;
/** Stored points asked for to fill the chart; the relay thins a longer history evenly. */
const SEED_POINTS = 500;

/**
 * @template {Element} [T=HTMLElement]
 * @param {string} testId
 * @returns {T}
 */
const byTestId = (testId) => document.querySelector(`[data-testid="${testId}"]`);

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
 * Replaces the meter template with one card per window, in the order of
 * BUCKET_NAMES, so that the markup and the names each exist once. The
 * window's name prefixes the template's test ids ("daily-percent") and names
 * the heading that labels the meter.
 * @returns {HTMLElement[]}
 */
function buildMeterCards() {
  const template = /** @type {HTMLTemplateElement} */ (document.getElementById('meter-template'));
  const cards = Object.entries(BUCKET_NAMES).map(([bucket, name]) => {
    const card = instantiate(template);
    const prefix = name.toLowerCase();
    card.dataset.bucket = bucket;
    for (const element of card.querySelectorAll('[data-testid]')) {
      element.setAttribute('data-testid', `${prefix}-${element.getAttribute('data-testid')}`);
    }
    const title = part(card, 'h2');
    title.id = `${prefix}-title`;
    title.textContent = name;
    part(card, '[role="meter"]').setAttribute('aria-labelledby', title.id);
    return card;
  });
  template.replaceWith(...cards);
  return cards;
}

/** Names the chart's legend entries, like the cards, from BUCKET_NAMES. */
function nameLegend() {
  for (const item of document.querySelectorAll('[data-legend]')) {
    const bucket = /** @type {Bucket} */ (item.getAttribute('data-legend'));
    item.textContent = BUCKET_NAMES[bucket];
  }
}

const ui = {
  product: byTestId('product'),
  summary: byTestId('summary'),
  connectionBanner: byTestId('connection-banner'),
  statusBanner: byTestId('status-banner'),
  refreshButton: /** @type {HTMLButtonElement} */ (byTestId('refresh-button')),
  refreshOutcome: byTestId('refresh-outcome'),
  freshness: byTestId('freshness'),
  chart: /** @type {SVGSVGElement} */ (byTestId('usage-chart')),
  cards: buildMeterCards(),
  alertList: byTestId('alert-list'),
  alertTemplate: /** @type {HTMLTemplateElement} */ (document.getElementById('alert-template')),
};

const client = new UsageClient();
const store = createUsageStore(client);
/** @type {Reading[]} oldest first */
let history = [];
/** @type {Map<Alert, HTMLElement>} the notice shown for each alert */
const alertItems = new Map();
/** Numbers the notices, whose text describes their Dismiss button. */
let alertCount = 0;
let refreshing = false;

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
 * @param {HTMLElement} card a `.meter-card` with `data-bucket`
 * @param {import('./usage-client.js').UsageWindow | undefined} window
 * @param {number} now
 */
function renderMeter(card, window, now) {
  const meter = part(card, '[role="meter"]');
  const fill = part(card, '.bar-fill');
  const limit = window !== undefined && isLimitReached(window);
  card.classList.toggle('is-limit', limit);
  part(card, '.limit-badge').hidden = !limit;
  if (window === undefined) {
    setText(part(card, '.percent'), '—');
    setText(part(card, '.reset'), '');
    meter.removeAttribute('aria-valuenow');
    meter.setAttribute('aria-valuetext', 'No data yet');
    fill.style.width = '0%';
    return;
  }
  const percent = formatPercent(window.used_percent);
  const reset = formatResetLabel(window.reset_at, now);
  setText(part(card, '.percent'), percent);
  setText(part(card, '.reset'), reset);
  const used = clampPercent(window.used_percent);
  meter.setAttribute('aria-valuenow', String(used));
  meter.setAttribute('aria-valuetext', `${percent} used${limit ? ', limit reached' : ''}. ${reset}`);
  fill.style.width = `${used}%`;
}

/**
 * Shows the window's burn rate and projection, or nothing at all when there
 * is no forecast or no burn rate yet.
 * @param {HTMLElement} card
 * @param {WindowForecast | null | undefined} forecast
 * @param {number} now
 */
function renderForecast(card, forecast, now) {
  const line = part(card, '.forecast');
  const text = formatForecast(forecast, now);
  line.hidden = text === null;
  line.classList.toggle('is-warning', text?.limitBeforeReset ?? false);
  setText(part(card, '.burn-rate'), text?.rate ?? '');
  setText(part(card, '.outlook'), text?.outlook ?? '');
}

/**
 * One dismissible notice.
 * @param {Alert} alert
 * @param {number} now
 */
function alertItem(alert, now) {
  const item = instantiate(ui.alertTemplate);
  const text = part(item, '.alert-text');
  const dismiss = part(item, '.alert-dismiss');
  item.dataset.kind = alert.kind;
  text.id = `alert-${(alertCount += 1)}`;
  setText(text, describeAlert(alert, now));
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
 */
function renderAlerts(alerts, now) {
  const current = alerts.filter((alert) => Date.parse(alert.reset_at) > now);
  for (const [alert, item] of alertItems) {
    if (current.includes(alert)) continue;
    item.remove();
    alertItems.delete(alert);
  }
  for (const alert of current.toReversed()) {
    if (alertItems.has(alert)) continue;
    const item = alertItem(alert, now);
    alertItems.set(alert, item);
    ui.alertList.prepend(item);
  }
}

/**
 * @param {import('./usage-client.js').UsageState} state
 * @param {number} now
 */
function render({ snapshot, status, connection, alerts }, now = Date.now()) {
  document.body.dataset.connection = connection;
  const usage = snapshot?.usage;
  setText(ui.product, usage ? `Product: ${usage.product}` : '');
  setText(ui.summary, usage ? formatSummary(usage, now) : 'Waiting for data…');
  for (const card of ui.cards) {
    const bucket = /** @type {Bucket} */ (card.dataset.bucket);
    const window = usage?.[bucket];
    renderMeter(card, window, now);
    // A limit already reached is no longer a forecast; the meter says so.
    const reached = window !== undefined && isLimitReached(window);
    renderForecast(card, reached ? null : snapshot?.derived?.[bucket], now);
  }
  renderAlerts(alerts, now);

  setBanner(
    ui.connectionBanner,
    connection === 'reconnecting'
      ? 'Connection to the relay lost — reconnecting… The numbers shown may be out of date.'
      : null,
  );
  setBanner(ui.statusBanner, describeStatus(status));
  ui.refreshButton.disabled = refreshing || connection !== 'open';

  let freshness = 'Connecting…';
  if (snapshot) freshness = formatUpdatedAgo(snapshot.fetched_at, now);
  else if (connection === 'open') freshness = 'No data yet';
  setText(ui.freshness, freshness);
}

/** Draws the readings of the last 24 hours, dropping older ones. */
function drawChart() {
  const since = Date.now() - CHART_SPAN_MS;
  history = history.filter((reading) => reading.t >= since).slice(-MAX_READINGS);
  renderChart(ui.chart, history);
}

/** @param {import('./usage-client.js').Snapshot} snapshot */
function record(snapshot) {
  const { burst, sustained } = snapshot.usage;
  history.push({
    t: Date.parse(snapshot.fetched_at),
    burst: burst.used_percent,
    sustained: sustained.used_percent,
  });
  drawChart();
}

/**
 * Fills the chart from the relay's stored history, so that it is not empty
 * after a reload and has no gap after a reconnect. Live readings newer than
 * the newest stored point are kept.
 */
async function seedChart() {
  let points;
  try {
    const since = new Date(Date.now() - CHART_SPAN_MS);
    points = await client.getHistory({ since, limit: SEED_POINTS });
  } catch (error) {
    // A relay without history, or a lost connection: the chart keeps its live readings.
    if (error instanceof UsageRequestError) return;
    throw error;
  }
  const stored = points.map((point) => ({
    t: Date.parse(point.fetched_at),
    burst: point.burst_percent,
    sustained: point.sustained_percent,
  }));
  const newest = stored.at(-1)?.t ?? -Infinity;
  history = [...stored, ...history.filter((reading) => reading.t > newest)];
  drawChart();
}

async function refresh() {
  refreshing = true;
  ui.refreshOutcome.dataset.outcome = 'pending';
  setText(ui.refreshOutcome, 'Refreshing…');
  render(store.getSnapshot());
  try {
    await client.refresh();
    ui.refreshOutcome.dataset.outcome = 'ok';
    setText(ui.refreshOutcome, 'Updated');
  } catch (error) {
    ui.refreshOutcome.dataset.outcome = 'error';
    setText(ui.refreshOutcome, describeRefreshError(error));
  } finally {
    refreshing = false;
    render(store.getSnapshot());
  }
}

client.addEventListener('snapshot', (event) => record(event.detail));
client.addEventListener('statechange', (event) => {
  if (event.detail.state === 'open') seedChart();
});
nameLegend();
store.subscribe((state) => render(state));
ui.refreshButton.addEventListener('click', refresh);
// Reset labels, freshness and the alerts of windows that reset are relative to now.
setInterval(() => render(store.getSnapshot()), 1000);
// The chart draws in pixels: redraw it when its width changes.
new ResizeObserver(() => renderChart(ui.chart, history)).observe(ui.chart);
render(store.getSnapshot());
client.start();
