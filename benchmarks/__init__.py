"""rnnext's benchmark suite: ``python -m benchmarks`` (or ``make bench``); see ``benchmarks/cli.py``."""
