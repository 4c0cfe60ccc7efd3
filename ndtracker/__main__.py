"""Run the ``ndtracker`` command line: ``python -m ndtracker report RUN``."""
from ndtracker.cli import main

raise SystemExit(main())
