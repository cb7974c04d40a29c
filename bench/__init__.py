"""DCD Studio's benchmark suite: speed, scale and memory, measured as ratios taken in one run.

Run it with ``make bench`` (``python -m bench.run``); see bench/RESULTS.md for the last run's figures.
"""
