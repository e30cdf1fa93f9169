"""The Redis the tests start: it answers, and it forgets everything when it dies."""

from __future__ import annotations

from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401


def test_answers_ping(redis_server: RedisServer) -> None:
    """The started server answers PING on the port its URL names."""
    assert redis_server.command("PING") == b"+PONG\r\n"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_restart_after_kill_forgets_everything(redis_server: RedisServer) -> None:
    """A key set before kill() is gone after restart(), which keeps the port."""
    port = redis_server.port
    assert redis_server.command("SET", "greeting", "hello") == b"+OK\r\n"
    assert redis_server.command("GET", "greeting") == b"$5\r\nhello\r\n"
    redis_server.kill()
    assert not redis_server.alive
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.command("GET", "greeting") == b"$-1\r\n"
    assert redis_server.command("DBSIZE") == b":0\r\n"
