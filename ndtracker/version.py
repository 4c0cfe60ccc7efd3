"""The package version, in one place (read by ``pyproject.toml``, ``run.json`` and ``--version``)."""

__version__ = "0.2.0"
