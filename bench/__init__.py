"""Benchmarks of pgbinding's write path.

``python -m bench.write_path`` and ``python -m bench.bulk``; see bench/README.md.
"""
