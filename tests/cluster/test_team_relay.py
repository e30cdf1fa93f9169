"""A team relay (``team-relay.md``): relay processes on one Redis behave as one relay.

Everything is real: ``redis-server``, relay processes (``python -m relay --redis-url``)
and the gateway simulator. The simulator and the webhook receiver are served in an
event loop of their own (a blocking portal's thread), so that one cluster can outlive
a test: the tests that only watch share one cluster per module (and per xdist worker);
a test that kills, pauses or cuts something off gets a cluster of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from common.serving import BackgroundServer
from common.settings import ENV_PREFIX
from common.tokens import CLIENT_TOKEN_ENV, load_or_create_client_token
from simulator import GatewaySimulator, SimulatorServer
from tests.conftest import SIMULATOR_TOKEN
from tests.monitor.test_webhook import Receiver
from tests.redis_server import RedisServer
from tests.relay.process import RelayProcess
from tests.relay.wire import connect, next_event, request, subscribe_with_snapshot

pytestmark = pytest.mark.anyio

CLUSTER = "team"
SOURCE = "default"
TOPIC = f"usage:{SOURCE}"
RELAYS = 3
#: Renewed every 0.67 s, so a relay whose loop stalls for a second on a busy machine keeps it.
LEASE_SECONDS = 2
INTERVAL = 1
#: The longest any one wait may take: only a guard against hanging on two busy cores.
PATIENCE = 20.0
#: Failover within the lease plus one interval (the contract), with room for a busy CI.
FAILOVER_BOUND = LEASE_SECONDS + INTERVAL + 3.0
UNREACHABLE = "the cluster's Redis is unreachable:"
THRESHOLD_CROSSED = "usage.threshold_crossed"


# -- the gateway simulator and the webhook receiver, in a thread of their own ---------------


class Gateway:
    """The simulator served in the portal's event loop; its controls are called there."""

    def __init__(self, portal: BlockingPortal, server: SimulatorServer) -> None:
        self._portal = portal
        self._simulator = server.simulator
        self.url = server.url

    @property
    def requests_served(self) -> int:
        return self._simulator.requests_served

    def hold(self) -> int:
        """Hold every request from now on; returns how many were served before (in the same
        step, so the next request counted is a held one)."""
        return self._portal.call(self._hold)

    def _hold(self) -> int:
        self._simulator.hold()
        return self._simulator.requests_served

    def release(self) -> None:
        self._portal.call(self._simulator.release)

    def set_usage(self, burst_percent: float) -> None:
        self._portal.call(partial(self._simulator.set_usage, burst_percent=burst_percent))

    async def wait_for_requests(self, count: int) -> None:
        """Return once the gateway has been asked ``count`` times in all."""
        await until(lambda: self.requests_served >= count, step=0.01)


async def until(condition: Callable[[], bool], step: float = 0.05) -> None:
    """Poll ``condition``: for what another thread or process does, which no event tells."""
    while True:
        if condition():
            return
        await anyio.sleep(step)


def _simulator_server() -> SimulatorServer:
    return SimulatorServer(GatewaySimulator(token=SIMULATOR_TOKEN))


def _hook_server(receiver: Receiver) -> BackgroundServer:
    config = uvicorn.Config(receiver.app, host="127.0.0.1", port=0, log_level="warning")
    return BackgroundServer(config)


# -- a cluster of relay processes -------------------------------------------------------


class Cluster:
    """Relays of one cluster on one Redis, polling one simulator, posting to one webhook."""

    def __init__(
        self,
        workdir: Path,
        token_file: Path,
        redis: RedisServer,
        gateway: Gateway,
        hooks: Receiver,
        webhook_url: str,
    ) -> None:
        self.workdir = workdir
        self.redis = redis
        self.gateway = gateway
        self.hooks = hooks
        self.relays: list[RelayProcess] = []
        self._started: list[RelayProcess] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        home = workdir / "home"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self._env = {
            **inherited,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            CLIENT_TOKEN_ENV: str(token_file),
            "USAGE_MONITOR_GATEWAY_TOKEN": SIMULATOR_TOKEN,
            "USAGE_MONITOR_LEASE_SECONDS": str(LEASE_SECONDS),
            "USAGE_MONITOR_WEBHOOK_URL": webhook_url,
        }
        self._args = [
            "--gateway-url",
            gateway.url,
            "--port",
            "0",
            "--interval",
            str(INTERVAL),
            "--redis-url",
            redis.url,
            "--cluster",
            CLUSTER,
        ]

    def start_relay(self) -> RelayProcess:
        """Start one more relay with a database of its own; blocks until it listens."""
        with self._lock:
            number = next(self._numbers)
        env = {**self._env, "USAGE_MONITOR_DATABASE": str(self.workdir / f"relay-{number}.db")}
        relay = RelayProcess.start(self._args, env)
        with self._lock:
            self._started.append(relay)
        return relay

    def start_relays(self, count: int) -> list[RelayProcess]:
        """Start ``count`` relays side by side."""
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.start_relay(), range(count)))

    def kill_all(self) -> None:
        for relay in self._started:
            relay.kill()


@contextmanager
def running_cluster(workdir: Path, token_file: Path, relays: int = RELAYS) -> Iterator[Cluster]:
    """A Redis, a simulator, a webhook receiver and ``relays`` relays of one cluster."""
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        redis = stack.enter_context(RedisServer(workdir / "redis"))
        simulator = portal.call(_simulator_server)
        stack.enter_context(portal.wrap_async_context_manager(simulator))
        hooks = portal.call(Receiver)
        hook_server = portal.call(_hook_server, hooks)
        stack.enter_context(portal.wrap_async_context_manager(hook_server))
        cluster = Cluster(
            workdir, token_file, redis, Gateway(portal, simulator), hooks, f"{hook_server.url}/hook"
        )
        stack.callback(cluster.kill_all)  # first of all: relays go before what they use
        cluster.relays = cluster.start_relays(relays)
        yield cluster


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client token file every relay of the module shares."""
    path = tmp_path_factory.mktemp("clients") / "client-token"
    load_or_create_client_token(path)
    return path


@pytest.fixture(autouse=True)
def clients_find_the_token(token_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's clients (``tests.relay.wire``) read the relays' token file."""
    monkeypatch.setenv(CLIENT_TOKEN_ENV, str(token_file))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[Cluster]:
    """One cluster for the tests that only watch it (no kill, pause or outage)."""
    with running_cluster(tmp_path_factory.mktemp("shared"), token_file) as cluster:
        yield cluster


@pytest.fixture
def own(tmp_path: Path, token_file: Path) -> Iterator[Cluster]:
    """A cluster of the test's own, for a test that breaks something."""
    with running_cluster(tmp_path, token_file) as cluster:
        yield cluster


# -- watching the relays --------------------------------------------------------------


class Watcher:
    """A client subscribed to the source on one relay, recording every event it gets."""

    def __init__(self, relay: RelayProcess, ws: ClientConnection, latest: Any) -> None:
        self.relay = relay
        self.ws = ws
        self.initial_seq: int = latest["seq"] if latest is not None else 0
        #: The snapshots of ``usage.updated``, and when each arrived (anyio's clock).
        self.updates: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.events: list[dict[str, Any]] = []
        #: Why the connection ended, if it did.
        self.closed: str | None = None
        self._changed = anyio.Event()

    @property
    def seqs(self) -> list[int]:
        return [update["seq"] for update in self.updates]

    @property
    def last_seq(self) -> int:
        return self.updates[-1]["seq"] if self.updates else self.initial_seq

    def named(self, event: str) -> list[dict[str, Any]]:
        return [message for message in self.events if message["event"] == event]

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] != "event":
                    continue
                self.events.append(message)
                if message["event"] == "usage.updated":
                    self.updates.append(message["data"])
                    self.arrivals.append(anyio.current_time())
                self._wake()
            self.closed = f"closed by the relay: {self.ws.close_code} {self.ws.close_reason}"
        except ConnectionClosed as exc:
            self.closed = f"connection lost: {exc!r}"
        finally:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[Watcher], bool]) -> None:
        while not predicate(self):
            assert self.closed is None, f"the client of {self.relay.url} was cut off: {self.closed}"
            await self._changed.wait()

    async def wait_for_seq(self, seq: int) -> None:
        await self.wait_until(lambda watcher: watcher.last_seq >= seq)


@asynccontextmanager
async def watching(relays: Sequence[RelayProcess]) -> AsyncIterator[list[Watcher]]:
    """One subscribed client per relay, each reading its events in a task of its own."""
    async with AsyncExitStack() as stack:
        watchers = []
        for relay in relays:
            ws = await stack.enter_async_context(connect(relay.ws_url))
            reply = await request(ws, "subscribe", topic=TOPIC)
            assert reply["ok"], reply
            watchers.append(Watcher(relay, ws, reply["result"]["latest"]))
        async with anyio.create_task_group() as task_group:
            for watcher in watchers:
                task_group.start_soon(watcher.run)
            yield watchers
            task_group.cancel_scope.cancel()


async def all_reach(watchers: Sequence[Watcher], seq: int) -> None:
    for watcher in watchers:
        await watcher.wait_for_seq(seq)


def one_stream(watchers: Sequence[Watcher]) -> dict[int, dict[str, Any]]:
    """Every snapshot the watchers got, by seq; fails if one seq came with two snapshots."""
    stream: dict[int, dict[str, Any]] = {}
    for watcher in watchers:
        for update in watcher.updates:
            known = stream.setdefault(update["seq"], update)
            assert known == update, f"seq {update['seq']} came as two snapshots:\n{known}\n{update}"
    return stream


def assert_rising(watcher: Watcher) -> None:
    seqs = [watcher.initial_seq, *watcher.seqs]
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"{watcher.relay.url}: {seqs}"


def burst_percent(snapshot: dict[str, Any]) -> float:
    [burst] = [meter for meter in snapshot["meters"] if meter["id"] == "burst"]
    return float(burst["used_percent"])


# -- asking the relays ------------------------------------------------------------------


async def health(relay: RelayProcess) -> dict[str, Any]:
    """``/healthz`` as an authenticated client reads it."""
    response = await relay.get("/healthz")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["cluster"] == CLUSTER
    return answer


async def pollers(relays: Sequence[RelayProcess]) -> list[RelayProcess]:
    """The relays whose ``/healthz`` lists the source in ``polling``."""
    return [relay for relay in relays if SOURCE in (await health(relay))["polling"]]


async def sole_poller(relays: Sequence[RelayProcess]) -> RelayProcess:
    """Wait until exactly one of ``relays`` says it polls the source; return it."""
    while True:
        holding = await pollers(relays)
        if len(holding) == 1:
            return holding[0]
        await anyio.sleep(0.05)


async def source_states(
    relays: Sequence[RelayProcess], accept: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Wait until every relay's ``/healthz`` shows a status of the source that ``accept``s."""
    while True:
        states = [(await health(relay))["sources"][SOURCE] for relay in relays]
        if all(accept(state) for state in states):
            return states
        await anyio.sleep(0.05)


async def logged(relay: RelayProcess, words: str) -> None:
    """Wait until the relay wrote a line with ``words`` to stderr."""
    await until(lambda: any(words in line for line in relay.log))


def fetched_at(snapshot: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(snapshot["fetched_at"])


# -- the tests that break something, each on a cluster of its own ----------------------


async def test_another_relay_polls_soon_after_the_poller_is_killed(own: Cluster) -> None:
    """SIGKILL of the poller: another polls within lease + interval; clients stay on."""
    with anyio.fail_after(PATIENCE):
        leader = await sole_poller(own.relays)
    survivors = [relay for relay in own.relays if relay is not leader]
    async with watching(survivors) as watchers:
        with anyio.fail_after(PATIENCE):
            await all_reach(watchers, max(watcher.initial_seq for watcher in watchers) + 1)
            killed_at, killed_wall = anyio.current_time(), datetime.now(UTC)
            await anyio.to_thread.run_sync(leader.kill)
            # The first snapshot polled after the kill: the new poller's.
            for watcher in watchers:
                await watcher.wait_until(
                    lambda w: any(fetched_at(u) > killed_wall for u in w.updates)
                )
            first = min(
                arrival
                for watcher in watchers
                for update, arrival in zip(watcher.updates, watcher.arrivals, strict=True)
                if fetched_at(update) > killed_wall
            )
            successor = await sole_poller(survivors)
            await all_reach(watchers, max(watcher.last_seq for watcher in watchers) + 2)
    took = first - killed_at
    assert took < FAILOVER_BOUND, f"the first poll after the kill came {took:.2f} s later"
    assert successor is not leader
    assert all(watcher.closed is None for watcher in watchers)
    one_stream(watchers)
    for watcher in watchers:
        assert_rising(watcher)
        assert watcher.seqs == list(range(watcher.initial_seq + 1, watcher.last_seq + 1))


async def test_a_paused_poller_whose_lease_ran_out_publishes_nothing_stale(own: Cluster) -> None:
    """SIGSTOP mid-poll past the lease, then SIGCONT: its stale poll is not published and it
    stops polling; seq only rises."""
    gateway = own.gateway
    gateway.set_usage(burst_percent=10)  # what the paused poller's held answer says
    with anyio.fail_after(PATIENCE):
        leader = await sole_poller(own.relays)
    others = [relay for relay in own.relays if relay is not leader]
    async with watching(own.relays) as watchers:
        with anyio.fail_after(PATIENCE):
            await all_reach(watchers, max(watcher.initial_seq for watcher in watchers) + 1)
            before = gateway.hold()
            try:
                await gateway.wait_for_requests(before + 1)  # the leader's poll, held
                leader.process.send_signal(signal.SIGSTOP)
                try:
                    gateway.release()  # its answer waits in the paused relay's socket
                    successor = await sole_poller(others)
                    await gateway.wait_for_requests(before + 2)  # the successor polls
                    gateway.set_usage(burst_percent=20)
                    survivors = [w for w in watchers if w.relay is not leader]
                    for watcher in survivors:
                        await watcher.wait_until(
                            lambda w: bool(w.updates) and burst_percent(w.updates[-1]) == 20
                        )
                finally:
                    leader.process.send_signal(signal.SIGCONT)
            finally:
                gateway.release()
            await logged(leader, f"stopped polling source '{SOURCE}'")
            await all_reach(watchers, max(watcher.last_seq for watcher in watchers) + 1)
            assert await pollers(own.relays) == [successor]
    one_stream(watchers)
    for watcher in watchers:
        assert_rising(watcher)
        percents = [burst_percent(update) for update in watcher.updates]
        # Once the new usage was published, the paused poller's older answer never came.
        assert 10 not in percents[percents.index(20) :], f"{watcher.relay.url}: {percents}"
    assert all(watcher.closed is None for watcher in watchers)


async def test_relays_ride_out_a_redis_restart(own: Cluster) -> None:
    """Redis killed: every relay says degraded; restarted: back to ok, seq goes on rising."""
    with anyio.fail_after(PATIENCE):
        leader = await sole_poller(own.relays)
    async with watching(own.relays) as watchers:
        with anyio.fail_after(PATIENCE):
            await all_reach(watchers, max(watcher.initial_seq for watcher in watchers) + 1)
            own.redis.kill()
            degraded = await source_states(
                own.relays,
                lambda state: (
                    state["state"] == "degraded"
                    and (state.get("last_error") or "").startswith(UNREACHABLE)
                ),
            )
            # Down long enough for the poller to find it cannot renew its lease.
            await logged(leader, f"stopped polling source '{SOURCE}'")
            before = max(watcher.last_seq for watcher in watchers)
            served = own.gateway.requests_served
            await anyio.to_thread.run_sync(own.redis.restart)
            await source_states(own.relays, lambda state: state["state"] == "ok")
            await all_reach(watchers, before + 2)
            requests = own.gateway.requests_served - served
    assert len(degraded) == RELAYS
    # Each poll since the restart reached the clients as a new seq (one more poll at most, if
    # the next was under way): none was numbered at or below what the cluster had numbered
    # before Redis lost its data, which the relays would have kept from their clients.
    assert requests <= 2 + 1, f"{requests} polls for 2 new seqs after the restart"
    assert all(watcher.closed is None for watcher in watchers)
    one_stream(watchers)
    for watcher in watchers:
        assert_rising(watcher)
    for relay in own.relays:
        assert relay.process.poll() is None, "".join(relay.log)
        assert not any("Traceback" in line for line in relay.log), "".join(relay.log)


# -- the tests on the shared cluster ----------------------------------------------------


async def test_the_gateway_is_polled_by_one_relay_not_by_every_relay(shared: Cluster) -> None:
    """Over several intervals the gateway gets one relay's polls, and one relay says it polls."""
    window = 3
    async with watching(shared.relays[:1]) as [watcher]:
        with anyio.fail_after(PATIENCE):
            await watcher.wait_for_seq(watcher.initial_seq + 1)  # just after a poll
            start, served = watcher.last_seq, shared.gateway.requests_served
            await watcher.wait_for_seq(start + window)
            requests = shared.gateway.requests_served - served
            poller = await sole_poller(shared.relays)
    # One relay: one request per interval (one more if a poll of the next was under way).
    assert window <= requests <= window + 1, f"{requests} requests in {window} intervals"
    assert requests < RELAYS * window
    # The answers of the other relays were read after the poller's: none of them polls.
    assert await pollers(shared.relays) == [poller]


async def test_every_relay_fans_out_every_update_with_the_same_seq(shared: Cluster) -> None:
    """A client on each relay gets every update, the same snapshot under the same seq."""
    updates = 3
    async with watching(shared.relays) as watchers:
        start = max(watcher.initial_seq for watcher in watchers)
        with anyio.fail_after(PATIENCE):
            await all_reach(watchers, start + updates)
    stream = one_stream(watchers)
    for watcher in watchers:
        # No gaps: every seq from the one it subscribed at to its last.
        assert watcher.seqs == list(range(watcher.initial_seq + 1, watcher.last_seq + 1))
    assert set(range(start + 1, start + updates + 1)) <= stream.keys()
    times = [fetched_at(stream[seq]) for seq in sorted(stream)]
    assert times == sorted(times)


async def test_concurrent_refreshes_on_every_relay_make_one_upstream_request(
    shared: Cluster,
) -> None:
    """100 refreshes spread over the relays during one poll: one request, one seq for all."""
    connections, each = 20, 5  # five refreshes a connection: the default burst
    gateway = shared.gateway
    async with AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(shared.relays[n % RELAYS].ws_url))
            for n in range(connections)
        ]
        with anyio.fail_after(PATIENCE):
            await sole_poller(shared.relays)
            before = gateway.hold()
            try:
                await gateway.wait_for_requests(before + 1)  # the next poll, held upstream
                for ws in sockets:
                    for n in range(each):
                        await ws.send(json.dumps({"id": f"r{n}", "op": "refresh", "topic": TOPIC}))
                    await ws.send(json.dumps({"id": "barrier", "op": "ping"}))
                # Each relay has taken its connection's refreshes once it answers the ping.
                answers: list[dict[str, Any]] = [{} for _ in sockets]
                for ws, got in zip(sockets, answers, strict=True):
                    await replies(ws, got, "barrier")
            finally:
                gateway.release()
            for ws, got in zip(sockets, answers, strict=True):
                await replies(ws, got, *(f"r{n}" for n in range(each)))
            requests = gateway.requests_served - before
    results = [answer[f"r{n}"] for answer in answers for n in range(each)]
    assert len(results) == connections * each
    refused = [result for result in results if not result["ok"]]
    assert refused == []
    assert {result["result"]["latest"]["seq"] for result in results} == {
        results[0]["result"]["latest"]["seq"]
    }
    assert requests == 1


async def replies(ws: ClientConnection, got: dict[str, Any], *ids: str) -> None:
    """Read until ``got`` holds the replies to ``ids``; every reply read goes into it, by id."""
    while not set(ids) <= got.keys():
        message = json.loads(await ws.recv())
        if message["type"] == "result":
            got[message["id"]] = message


async def test_a_threshold_crossed_is_announced_once_for_the_whole_cluster(
    shared: Cluster,
) -> None:
    """Usage over 75 %: one webhook post, and one threshold event for a client on each relay."""
    async with watching(shared.relays) as watchers:
        shared.gateway.set_usage(burst_percent=80)
        with anyio.fail_after(PATIENCE):
            for watcher in watchers:
                await watcher.wait_until(lambda watcher: bool(watcher.named(THRESHOLD_CROSSED)))
            await until(lambda: bool(shared.hooks.received))
            # One poll more: room for a second announcement, if any relay made one.
            await all_reach(watchers, max(watcher.last_seq for watcher in watchers) + 1)
    for watcher in watchers:
        [event] = watcher.named(THRESHOLD_CROSSED)
        assert event["data"]["threshold"] == 75
    posted = [post for post in shared.hooks.received if post["event"] == THRESHOLD_CROSSED]
    assert [post["data"]["threshold"] for post in posted] == [75]
    events = [json.dumps(post, sort_keys=True) for post in shared.hooks.received]
    assert len(events) == len(set(events)), "an alert was posted twice"


async def test_a_relay_started_later_answers_get_history_like_the_others(
    shared: Cluster,
) -> None:
    """A relay started with an empty database fills it from Redis: get_history is the same."""
    polls = 4
    async with connect(shared.relays[0].ws_url) as old:
        with anyio.fail_after(PATIENCE):
            latest = await subscribe_with_snapshot(old)
            while latest["seq"] < polls:
                latest = (await next_event(old, "usage.updated"))["data"]
        # What every relay must have: the history up to this snapshot.
        query = {"topic": TOPIC, "until": latest["fetched_at"], "limit": 5000}
        newcomer = await anyio.to_thread.run_sync(shared.start_relay)
        try:
            async with connect(newcomer.ws_url) as new:
                with anyio.fail_after(PATIENCE):
                    while True:  # the newcomer's store is written behind its start
                        before = (await request(old, "get_history", **query))["result"]["points"]
                        after = (await request(new, "get_history", **query))["result"]["points"]
                        if after == before and before and before[-1]["seq"] == latest["seq"]:
                            break
                        await anyio.sleep(0.1)
        finally:
            # SIGTERM: were it to poll by now, it would hand the lease over at once.
            await anyio.to_thread.run_sync(newcomer.stop)
    assert len(before) >= polls
    assert [point["seq"] for point in after] == [point["seq"] for point in before]
