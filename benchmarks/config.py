"""The sizes of the full suite and of the ``--quick`` variant."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

__all__ = ["FULL", "QUICK", "Config", "fill_sizes"]


def fill_sizes(args: argparse.Namespace, sizes: dict[str, tuple[Any, Any]]) -> None:
    """Give each option of ``sizes`` the user left out its (quick, full) value, as
    ``args.quick`` says."""
    for name, (quick, full) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


@dataclass(frozen=True)
class Config:
    name: str
    runs: int
    #: fan-out: subscriber counts, and updates per count (paced, then back-to-back)
    fanout_levels: tuple[int, ...]
    fanout_updates: dict[int, int]
    fanout_blast: dict[int, int]
    #: pause after every subscriber has an update, before the next one
    fanout_gap_s: float
    #: at most this many paced updates for servers whose fan-out is serial (pubsub)
    slow_updates_cap: int
    memory_levels: tuple[int, ...]
    storm_levels: tuple[int, ...]
    #: the simulator answers usage requests after this long during storms (a real
    #: gateway is a WAN round trip away; with none, a storm would outlast a poll)
    storm_upstream_latency_s: float
    latest_conns: tuple[int, ...]
    latest_duration_s: float
    #: closed-loop requests before the measured loop (lets a JIT warm up)
    latest_warmup_s: float
    upstream_windows: tuple[int, ...]
    #: upstream load runs with the poll interval shortened to this, for this long
    upstream_interval_s: float
    upstream_duration_s: float
    #: crowd: the relay's open-file limit, the idle sockets and the unauthenticated
    #: WebSockets that crowd it, and the authenticated clients measured meanwhile
    crowd_open_files: int = 1024
    crowd_idle: int = 1100
    crowd_unauthenticated: int = 200
    crowd_clients: int = 5
    crowd_duration_s: float = 3.0
    #: the interval the shortened run stands for (the desktop app's cadence)
    upstream_real_interval_s: float = 30.0
    completion_timeout_s: float = 60.0
    settle_s: float = 1.0


FULL = Config(
    name="full",
    runs=3,
    fanout_levels=(100, 1_000, 10_000),
    fanout_updates={100: 100, 1_000: 40, 10_000: 12},
    fanout_blast={100: 100, 1_000: 40, 10_000: 12},
    fanout_gap_s=0.02,
    slow_updates_cap=3,
    memory_levels=(1_000, 10_000),
    storm_levels=(1_000,),
    storm_upstream_latency_s=0.1,
    latest_conns=(1, 100),
    latest_duration_s=3.0,
    latest_warmup_s=1.0,
    upstream_windows=(1, 10, 100),
    upstream_interval_s=0.5,
    upstream_duration_s=5.0,
)

QUICK = Config(
    name="quick",
    runs=1,
    fanout_levels=(20,),
    fanout_updates={20: 3},
    fanout_blast={20: 3},
    fanout_gap_s=0.01,
    slow_updates_cap=3,
    memory_levels=(20,),
    storm_levels=(20,),
    storm_upstream_latency_s=0.05,
    latest_conns=(1, 5),
    latest_duration_s=0.3,
    latest_warmup_s=0.2,
    upstream_windows=(1, 3),
    upstream_interval_s=0.25,
    upstream_duration_s=1.0,
    crowd_idle=150,
    crowd_unauthenticated=20,
    crowd_clients=2,
    crowd_duration_s=0.5,
    completion_timeout_s=15.0,
    settle_s=0.2,
)
