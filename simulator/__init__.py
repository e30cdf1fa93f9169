"""
A simulator of the LLM gateways whose usage the monitor polls, served over real HTTP.

It is the upstream of the demo (``usage-monitor serve --demo``), of every
integration test and of every benchmark. ``GatewaySimulator`` holds the state
and its Starlette ``app``; ``SimulatorServer`` serves it with uvicorn on
loopback inside the current event loop; ``python -m simulator`` runs it as a
process of its own.

One app speaks three dialects, each with a simulated account of its own:
PostHog's ``GET /v1/usage/{product}``, OpenRouter's ``GET /api/v1/key`` and
LiteLLM's ``GET /key/info``. Besides those it has a JSON control API under
``/_sim/`` for other processes (``state``, ``usage``, ``spend``,
``openrouter``, ``litellm``, ``failures``, ``latency``, ``hold``,
``release``, ``reset``). The control API deliberately takes no bearer token:
it is test tooling meant for loopback only, so never bind the simulator to a
public interface.

``ReportReceiver`` and ``ReceiverServer`` (``simulator.receiver``) play the billing
service that receives the relay's daily usage reports, recording every request.
"""

from .gateway import KEEP, Failure, GatewaySimulator, LimitReset
from .receiver import ReceiverServer, ReportReceiver
from .server import SimulatorServer

__all__ = [
    "KEEP",
    "Failure",
    "GatewaySimulator",
    "LimitReset",
    "ReceiverServer",
    "ReportReceiver",
    "SimulatorServer",
]
