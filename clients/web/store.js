/**
 * A framework-agnostic store over a {@link UsageClient}: one immutable state
 * object `{snapshot, status, sources, connection, alerts}`, replaced on every change,
 * and a subscribe function. Its shape fits React's `useSyncExternalStore` as
 * well as plain DOM code.
 *
 * @module store
 */

/**
 * @typedef {import('./usage-client.js').UsageClient} UsageClient
 * @typedef {import('./usage-client.js').UsageState} UsageState
 * @typedef {import('./usage-client.js').UsageStore} UsageStore
 */

/** The store keeps this many of the newest alerts. */
const MAX_ALERTS = 10;

/**
 * Creates a store that follows `client` for as long as the client lives.
 * @param {UsageClient} client
 * @returns {UsageStore}
 */
export function createUsageStore(client) {
  /** @type {UsageState} */
  let state = Object.freeze({
    snapshot: client.getLatest(),
    status: client.getStatus(),
    sources: Object.freeze({}),
    connection: client.state,
    alerts: [],
  });
  /** @type {Set<(state: UsageState) => void>} */
  const listeners = new Set();

  /** @param {Partial<UsageState>} change */
  const update = (change) => {
    state = Object.freeze({ ...state, ...change });
    for (const listener of [...listeners]) listener(state);
  };
  /**
   * `state.sources` with one source's part changed; unchanged when the source is not known.
   * @param {string | null} source
   * @param {Partial<import('./usage-client.js').SourceState>} change
   */
  const withSource = (source, change) => {
    if (source === null) return state.sources;
    const previous = state.sources[source] ?? { snapshot: null, status: null };
    return Object.freeze({ ...state.sources, [source]: Object.freeze({ ...previous, ...change }) });
  };
  client.addEventListener('snapshot', (event) => {
    const snapshot = event.detail;
    update({ snapshot, sources: withSource(snapshot.source, { snapshot }) });
  });
  client.addEventListener('status', (event) => {
    const status = event.detail;
    update({ status, sources: withSource(/** @type {any} */ (event).source ?? null, { status }) });
  });
  client.addEventListener('statechange', (event) => update({ connection: event.detail.state }));
  client.addEventListener('alert', (event) =>
    update({ alerts: [event.detail, ...state.alerts].slice(0, MAX_ALERTS) }),
  );

  return {
    getSnapshot: () => state,
    subscribe(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    dismissAlert(alert) {
      if (!state.alerts.includes(alert)) return;
      update({ alerts: state.alerts.filter((shown) => shown !== alert) });
    },
  };
}
