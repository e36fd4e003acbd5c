"""Benchmarks: aidist against its in-process limit and against plain Celery baselines.

``python -m bench.run`` (or ``make bench``) runs every scenario with its baselines in the same run,
on the same services and model, and prints a table, writes ``results.json`` and a PNG chart. See
``bench/README.md``. Importing this package imports nothing heavy (the Celery worker apps in this
package import it too).
"""
