"""Throughput, latency, memory and start-up benchmarks for reproq, side by side with peers.

Run with ``python -m benchmarks [--quick]`` from the repository root; see benchmarks/README
section of the top-level README. Never part of the test suite's pass/fail.
"""
