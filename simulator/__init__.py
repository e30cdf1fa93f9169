"""
A simulator of the LLM gateway's usage endpoint, served over real HTTP.

It is the upstream of the demo (``usage-monitor serve --demo``), of every
integration test and of every benchmark. ``GatewaySimulator`` holds the state
and its Starlette ``app``; ``SimulatorServer`` serves it with uvicorn on
loopback inside the current event loop; ``python -m simulator`` runs it as a
process of its own.

Besides ``GET /v1/usage/{product}`` the app has a JSON control API under
``/_sim/`` for other processes (``state``, ``usage``, ``spend``, ``failures``,
``latency``, ``hold``, ``release``, ``reset``). The control API deliberately
takes no bearer token: it is test tooling meant for loopback only, so never
bind the simulator to a public interface.
"""

from .gateway import Failure, GatewaySimulator
from .server import SimulatorServer

__all__ = ["Failure", "GatewaySimulator", "SimulatorServer"]
