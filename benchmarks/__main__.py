"""Entry point: ``python -m benchmarks [options]`` (``--help`` lists them)."""

import sys

from .cli import main

sys.exit(main())
