"""The relay's database: epochs and seq across restarts, its lock, and storage in /healthz."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

import monitor.store
from common.models import Snapshot
from monitor.store import SnapshotStore
from relay.server import RelayServer, run
from relay.settings import Settings
from tests.conftest import RelayHarness
from tests.monitor.test_store import make_read_only

from .wire import auth_headers


async def refresh(base_url: str) -> dict[str, Any]:
    """Poll once through the relay and return the snapshot it answers with."""
    async with httpx.AsyncClient(base_url=base_url, headers=auth_headers()) as client:
        response = await client.post("/api/v1/usage/refresh")
    assert response.status_code == 200, response.text
    latest: dict[str, Any] = response.json()["latest"]
    return latest


async def storage_health(client: httpx.AsyncClient) -> dict[str, Any]:
    """/healthz's storage part, once every write submitted so far is done."""
    # A history read waits for the writes submitted before it.
    await client.get("/api/v1/usage/history")
    storage: dict[str, Any] = (await client.get("/healthz")).json()["storage"]
    return storage


# --- Epoch and seq ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_seq_continues_in_the_same_epoch_after_a_restart(relay: RelayHarness) -> None:
    """A restarted relay numbers on from its stored seq, in the epoch of its database."""
    with anyio.fail_after(10):
        before = await refresh(relay.url)
        await relay.stop()
        await relay.start()
        after = await refresh(relay.url)
    assert before["epoch"] and after["epoch"] == before["epoch"]
    assert after["seq"] > before["seq"]


@pytest.mark.anyio
async def test_corrupt_database_moved_aside_starts_a_new_epoch(relay: RelayHarness) -> None:
    """A database replaced by garbage is moved aside, and the fresh one counts in a new epoch."""
    database = relay.settings.database_path()
    with anyio.fail_after(10):
        before = await refresh(relay.url)
        await relay.stop()
        database.write_bytes(b"this is not a database" * 200)
        await relay.start()
        after = await refresh(relay.url)
    assert list(database.parent.glob("usage.db.corrupt-*"))
    assert after["epoch"] is not None and after["epoch"] != before["epoch"]
    assert after["seq"] <= 2  # the start's own poll may come first


@pytest.mark.anyio
async def test_read_only_database_keeps_its_epoch_and_seq_rises(relay: RelayHarness) -> None:
    """On a database it can read but not write, seq goes on in its epoch and /healthz says so."""
    with anyio.fail_after(10):
        before = await refresh(relay.url)
        await relay.stop()
        make_read_only(relay.settings.database_path())
        await relay.start()
        after = await refresh(relay.url)
        async with httpx.AsyncClient(base_url=relay.url, headers=auth_headers()) as client:
            storage = await storage_health(client)
    assert after["epoch"] == before["epoch"]
    assert after["seq"] > before["seq"]
    assert storage["ok"] is False
    assert "readonly" in storage["last_error"]


@pytest.mark.anyio
async def test_unloadable_stored_snapshot_does_not_lower_seq(relay: RelayHarness) -> None:
    """When the newest stored snapshot cannot be loaded, seq still goes on from its number."""
    with anyio.fail_after(10):
        before = await refresh(relay.url)
        await relay.stop()
        with closing(sqlite3.connect(relay.settings.database_path())) as conn, conn:
            conn.execute(
                "UPDATE snapshots SET body = '{}' WHERE id = (SELECT MAX(id) FROM snapshots)"
            )
        await relay.start()
        after = await refresh(relay.url)
    assert after["epoch"] == before["epoch"]
    assert after["seq"] > before["seq"]


@pytest.mark.anyio
async def test_database_that_cannot_be_opened_gets_a_new_epoch_each_start(
    relay_settings: Settings, tmp_path: Path
) -> None:
    """Without a usable database each start numbers in a fresh epoch, as continuity is unknown."""
    (tmp_path / "file").write_text("")
    settings = relay_settings.model_copy(update={"database": tmp_path / "file" / "usage.db"})
    epochs = []
    with anyio.fail_after(10):
        for _ in range(2):
            async with RelayServer(settings) as server:
                epochs.append((await refresh(server.url))["epoch"])
    assert all(epochs) and epochs[0] != epochs[1]


# --- Starting -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_second_relay_on_the_same_database_refuses_to_start(relay: RelayHarness) -> None:
    """A second relay on a database in use exits 2 with one line naming the first one's pid."""
    database = relay.settings.database_path()
    command = [sys.executable, "-m", "relay", "--port", "0", "--database", str(database)]
    command += ["--gateway-url", relay.settings.gateway_base_url()]
    environment = {**os.environ, "USAGE_MONITOR_GATEWAY_TOKEN": "unused"}
    with anyio.fail_after(30):
        done = await anyio.run_process(command, env=environment, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 2
    assert stderr.splitlines()[-1] == (
        f"usage-monitor: database {database} is in use by another usage-monitor (pid {os.getpid()})"
    )
    assert "Traceback" not in stderr


def test_a_relay_that_cannot_listen_says_why_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run() turns a start failure into one line on stderr and exit code 2, no traceback."""
    settings = Settings(
        client_token_file=tmp_path / "client-token",
        host="127.0.0.1",
        gateway_url="http://127.0.0.1:9",
        gateway_token=SecretStr("unused"),
        database=tmp_path / "usage.db",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            run(settings.model_copy(update={"port": port}))
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"usage-monitor: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


# --- Storage in /healthz ------------------------------------------------------------------


@pytest.mark.anyio
async def test_deleted_database_shows_in_healthz(relay_settings: Settings, tmp_path: Path) -> None:
    """With the database's directory deleted while running, /healthz reports storage not ok."""
    settings = relay_settings.model_copy(update={"database": tmp_path / "state" / "usage.db"})
    with anyio.fail_after(10):
        async with (
            RelayServer(settings) as server,
            httpx.AsyncClient(base_url=server.url, headers=auth_headers()) as client,
        ):
            await refresh(server.url)
            healthy = await storage_health(client)
            shutil.rmtree(tmp_path / "state")
            await refresh(server.url)
            broken = await storage_health(client)
    assert healthy == {"ok": True, "last_error": None}
    assert broken["ok"] is False
    assert "was deleted while in use" in broken["last_error"]


@pytest.mark.anyio
async def test_stuck_writer_shows_in_healthz(
    relay_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot write that runs past the stall limit makes /healthz say the writer is stuck."""
    monkeypatch.setattr(monitor.store, "WRITER_STALL_AFTER", 0.0, raising=False)
    entered, release = threading.Event(), threading.Event()
    append = SnapshotStore.append

    def stuck_append(self: SnapshotStore, snapshot: Snapshot) -> None:
        entered.set()
        release.wait(10)
        append(self, snapshot)

    with anyio.fail_after(10):
        async with (
            RelayServer(relay_settings) as server,
            httpx.AsyncClient(base_url=server.url, headers=auth_headers()) as client,
        ):
            try:
                await refresh(server.url)
                healthy = await storage_health(client)
                monkeypatch.setattr(SnapshotStore, "append", stuck_append)
                await refresh(server.url)
                await anyio.to_thread.run_sync(entered.wait, 5)
                stuck = (await client.get("/healthz")).json()["storage"]
            finally:
                release.set()
            after = await storage_health(client)
    assert healthy == after == {"ok": True, "last_error": None}
    assert stuck["ok"] is False
    assert stuck["last_error"].startswith("the store's writer is stuck")
