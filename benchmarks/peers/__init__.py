"""Peer servers that the benchmarks run beside the relay, each serving the same snapshot."""
