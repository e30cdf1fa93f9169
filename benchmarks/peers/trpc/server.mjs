// tRPC v11 peer for the usage-monitor benchmarks.
//
// A `ws` WebSocketServer with tRPC's `applyWSSHandler`, serving:
//   - subscription `usage`: yields the current snapshot, then every new one;
//   - query `latest`: the current snapshot;
//   - mutation `refresh`: polls the gateway (one request shared by concurrent
//     callers), publishes the result to every subscriber and returns it.
//     Without --gateway-url it only makes the next snapshot locally.
//
// Control hook on stdin, one command a line, answered on stdout as
// `BENCH {json}` (the same as the Python peers):
//   publish -> {"published": seq}    stats -> {"connections": n}
// End of input stops the server.
//
//   node server.mjs --port 8767 [--gateway-url http://127.0.0.1:P --token T]

import { EventEmitter, on } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

import { initTRPC } from '@trpc/server';
import { applyWSSHandler } from '@trpc/server/adapters/ws';
import { WebSocketServer } from 'ws';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    'gateway-url': { type: 'string' },
    token: { type: 'string', default: process.env.USAGE_MONITOR_GATEWAY_TOKEN ?? 'sim-token' },
    product: { type: 'string', default: 'posthog_code' },
  },
});

const base = JSON.parse(
  readFileSync(new URL('../snapshot.json', import.meta.url), 'utf8'),
);
let seq = base.seq;
let current = makeSnapshot(base.usage, seq);
const updates = new EventEmitter();
updates.setMaxListeners(0);

function makeSnapshot(usage, n) {
  return { ...base, seq: n, fetched_at: new Date().toISOString(), usage };
}

function publish(usage) {
  seq += 1;
  current = makeSnapshot(usage, seq);
  updates.emit('update', current);
  return current;
}

function nextLocalUsage() {
  const used = ((seq + 1) % 1000) / 10;
  return { ...base.usage, burst: { ...base.usage.burst, used_percent: used } };
}

let inflight = null;

async function pollGateway() {
  const url = `${args['gateway-url'].replace(/\/$/, '')}/v1/usage/${args.product}`;
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${args.token}`, Accept: 'application/json' },
    signal: AbortSignal.timeout(10_000),
  });
  if (!response.ok) {
    throw new Error(`gateway answered HTTP ${response.status}`);
  }
  return publish(await response.json());
}

function refresh() {
  if (!args['gateway-url']) {
    return publish(nextLocalUsage());
  }
  inflight ??= pollGateway().finally(() => {
    inflight = null;
  });
  return inflight;
}

const t = initTRPC.create();
const router = t.router({
  usage: t.procedure.subscription(async function* ({ signal }) {
    // Listen before yielding the current snapshot so no update falls between.
    const events = on(updates, 'update', { signal });
    yield current;
    for await (const [snapshot] of events) {
      yield snapshot;
    }
  }),
  latest: t.procedure.query(() => current),
  refresh: t.procedure.mutation(() => refresh()),
});

const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
applyWSSHandler({ wss, router });

function emit(message) {
  process.stdout.write(`BENCH ${JSON.stringify(message)}\n`);
}

server.listen({ host: args.host, port: Number(args.port), backlog: 4096 }, () => {
  emit({ ready: true, port: Number(args.port) });
});

const commands = readline.createInterface({ input: process.stdin });
commands.on('line', (line) => {
  const command = line.trim();
  if (command === 'publish') {
    emit({ published: publish(nextLocalUsage()).seq });
  } else if (command === 'stats') {
    emit({ connections: wss.clients.size });
  } else if (command) {
    emit({ error: `unknown command ${command}` });
  }
});
commands.on('close', () => {
  for (const client of wss.clients) client.terminate();
  wss.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});
