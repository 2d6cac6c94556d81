"""A run's housekeeping, apart from what it trains: atomic files (files.py), the metrics log
(logger.py), checkpoints (checkpoint.py), the processes of a data-parallel run (distributed.py),
seeds (seeding.py) and the run's plots (plots.py)."""
