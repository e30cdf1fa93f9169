"""BackgroundServer: an ASGI app served with uvicorn in the current event loop, over loopback."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from common.serving import BackgroundServer, ServerStartError

pytestmark = pytest.mark.anyio


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def make_app(**kwargs: Any) -> Starlette:
    return Starlette(routes=[Route("/", hello)], **kwargs)


def make_config(app: Starlette, *, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_serves_the_app_and_url_names_the_bound_port() -> None:
    """With port 0 the server binds a free port, and url names that port."""
    with anyio.fail_after(10):
        async with (
            BackgroundServer(make_config(make_app())) as server,
            httpx.AsyncClient() as client,
        ):
            response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert server.port != 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert response.text == "hello"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
async def test_an_ipv6_url_has_the_address_in_brackets() -> None:
    """Served on ::1, url reads http://[::1]:PORT and reaches the app."""
    with anyio.fail_after(10):
        async with (
            BackgroundServer(make_config(make_app(), host="::1")) as server,
            httpx.AsyncClient() as client,
        ):
            response = await client.get(server.url + "/")
    assert server.url == f"http://[::1]:{server.port}"
    assert response.text == "hello"


async def test_entering_returns_after_the_lifespan_startup_completed() -> None:
    """The block starts only once the app's lifespan startup has finished."""
    started: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await anyio.lowlevel.checkpoint()
        started.append("startup")
        yield

    with anyio.fail_after(10):
        async with BackgroundServer(make_config(make_app(lifespan=lifespan))):
            assert started == ["startup"]


async def test_a_port_in_use_gives_server_start_error() -> None:
    """A taken port fails to start with a message naming the address and the cause."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with anyio.fail_after(10), pytest.raises(ServerStartError) as raised:
            async with BackgroundServer(make_config(make_app(), port=port)):
                pytest.fail("the server started on a port in use")
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "Address already in use" in message


async def test_a_failing_lifespan_startup_gives_server_start_error() -> None:
    """An app whose startup raises fails to start with a message naming the error."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("boom")
        yield  # pragma: no cover

    with anyio.fail_after(10), pytest.raises(ServerStartError) as raised:
        async with BackgroundServer(make_config(make_app(lifespan=lifespan))):
            pytest.fail("the server started although its app did not")
    assert "RuntimeError: boom" in str(raised.value)


async def test_before_shutdown_runs_before_connections_are_closed() -> None:
    """The hook runs while a request is still held open, and that request is then answered."""
    held = anyio.Event()
    goodbye_said = anyio.Event()
    order: list[str] = []

    async def hold(request: Request) -> Response:
        held.set()
        await goodbye_said.wait()
        return PlainTextResponse("answered after goodbye")

    async def say_goodbye() -> None:
        order.append("goodbye")
        goodbye_said.set()

    app = Starlette(routes=[Route("/hold", hold)])
    responses: list[str] = []

    async def fetch(client: httpx.AsyncClient, url: str) -> None:
        responses.append((await client.get(url)).text)
        order.append("response")

    with anyio.fail_after(10):
        async with (
            httpx.AsyncClient() as client,
            BackgroundServer(make_config(app), before_shutdown=say_goodbye) as server,
            anyio.create_task_group() as task_group,
        ):
            task_group.start_soon(fetch, client, server.url + "/hold")
            await held.wait()
            await server.stop()
    assert responses == ["answered after goodbye"]
    assert order == ["goodbye", "response"]


async def test_stop_twice_is_fine_and_says_goodbye_once() -> None:
    """A second stop() (and leaving the block) returns at once; the hook ran only once."""
    goodbyes: list[str] = []

    async def say_goodbye() -> None:
        goodbyes.append("goodbye")

    with anyio.fail_after(10):
        async with BackgroundServer(make_config(make_app()), before_shutdown=say_goodbye) as server:
            await server.stop()
            await server.stop()
    assert goodbyes == ["goodbye"]


async def test_a_stopped_server_refuses_connections() -> None:
    """Once stop() returns, nothing listens on the port any more."""
    with anyio.fail_after(10):
        async with BackgroundServer(make_config(make_app())) as server:
            await server.stop()
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(server.url + "/")


async def test_signal_handlers_are_left_alone() -> None:
    """The SIGINT and SIGTERM handlers are the same before, during and after serving."""
    watched = (signal.SIGINT, signal.SIGTERM)
    before = [signal.getsignal(number) for number in watched]
    with anyio.fail_after(10):
        async with (
            BackgroundServer(make_config(make_app())) as server,
            httpx.AsyncClient() as client,
        ):
            assert (await client.get(server.url + "/")).text == "hello"
            during = [signal.getsignal(number) for number in watched]
    after = [signal.getsignal(number) for number in watched]
    assert during == before
    assert after == before


def test_an_import_string_is_refused() -> None:
    """BackgroundServer serves an app object; an import string is a TypeError at once."""
    with pytest.raises(TypeError, match="app object"):
        BackgroundServer(uvicorn.Config("relay.app:create_app", port=0))
