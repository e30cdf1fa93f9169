"""
Benchmarks of the usage relay beside its peers: fan-out, refresh storms,
get_latest throughput, memory per subscriber and upstream load.

Run ``python -m benchmarks`` (``--quick`` for a small variant); see
docs/performance.md.
"""
