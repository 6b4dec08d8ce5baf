"""Issue 7's benchmark: Postgraas create latency per backend against the tools users would pick instead.

Run ``.venv/bin/python benchmarks/bench.py --help``.
"""
