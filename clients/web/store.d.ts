import type { UsageClient, UsageStore } from './usage-client.js';

export type { UsageState, UsageStore } from './usage-client.js';

/** Creates a store that follows `client` for as long as the client lives. */
export declare function createUsageStore(client: UsageClient): UsageStore;
