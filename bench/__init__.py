"""The benchmark: our entities against two Celery baselines, in one run of measurement.

``python -m bench --quick --json results.json`` starts its own worker processes,
measures our system, baseline A (a hand-rolled Celery entity task) and baseline
B (a no-op Celery task), alternating them so drift hits all alike, and prints a
table. docs/performance.md describes the method and the latest figures.
"""
