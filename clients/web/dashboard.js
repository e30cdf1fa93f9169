/**
 * The dashboard served by the relay at `/`: two meters, a summary line, a
 * refresh button, freshness, banners and a chart of usage since the page
 * opened, all fed by one {@link UsageClient} through the store.
 *
 * @module dashboard
 */

import { renderChart } from './chart.js';
import {
  describeRefreshError,
  describeStatus,
  formatPercent,
  formatResetLabel,
  formatSummary,
  formatUpdatedAgo,
  isLimitReached,
} from './format.js';
import { createUsageStore } from './store.js';
import { UsageClient } from './usage-client.js';

/** At most this many readings are charted (six hours at the relay's 30 s cadence). */
const HISTORY_LIMIT = 720;

/**
 * @template {Element} [T=HTMLElement]
 * @param {string} testId
 * @returns {T}
 */
const byTestId = (testId) => document.querySelector(`[data-testid="${testId}"]`);

const ui = {
  product: byTestId('product'),
  summary: byTestId('summary'),
  connectionBanner: byTestId('connection-banner'),
  statusBanner: byTestId('status-banner'),
  refreshButton: /** @type {HTMLButtonElement} */ (byTestId('refresh-button')),
  refreshOutcome: byTestId('refresh-outcome'),
  freshness: byTestId('freshness'),
  chart: /** @type {SVGSVGElement} */ (byTestId('usage-chart')),
  cards: /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll('.meter-card')),
};

const client = new UsageClient();
const store = createUsageStore(client);
/** @type {import('./chart.js').HistoryPoint[]} */
const history = [];
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
 * @param {HTMLElement} card
 * @param {string} selector
 */
const part = (card, selector) => /** @type {HTMLElement} */ (card.querySelector(selector));

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
  meter.setAttribute('aria-valuenow', String(Math.min(100, window.used_percent)));
  meter.setAttribute('aria-valuetext', `${percent} used${limit ? ', limit reached' : ''}. ${reset}`);
  fill.style.width = `${Math.min(100, Math.max(0, window.used_percent))}%`;
}

/**
 * @param {import('./usage-client.js').UsageState} state
 * @param {number} now
 */
function render({ snapshot, status, connection }, now = Date.now()) {
  document.body.dataset.connection = connection;
  const usage = snapshot?.usage;
  setText(ui.product, usage ? `Product: ${usage.product}` : '');
  setText(ui.summary, usage ? formatSummary(usage, now) : 'Waiting for data…');
  for (const card of ui.cards) {
    const bucket = /** @type {'burst' | 'sustained'} */ (card.dataset.bucket);
    renderMeter(card, usage?.[bucket], now);
  }

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

/** @param {import('./usage-client.js').Snapshot} snapshot */
function record(snapshot) {
  const { burst, sustained } = snapshot.usage;
  history.push({
    t: Date.parse(snapshot.fetched_at),
    burst: burst.used_percent,
    sustained: sustained.used_percent,
  });
  if (history.length > HISTORY_LIMIT) history.shift();
  renderChart(ui.chart, history);
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
store.subscribe((state) => render(state));
ui.refreshButton.addEventListener('click', refresh);
// Reset labels and freshness are relative to now: keep them ticking.
setInterval(() => render(store.getSnapshot()), 1000);
// The chart draws in pixels: redraw it when its width changes.
new ResizeObserver(() => renderChart(ui.chart, history)).observe(ui.chart);
render(store.getSnapshot());
client.start();
