"""Shared test set-up: the helper modules beside this file are importable from every test folder.

pytest puts the folder of the top-most ``conftest.py`` (this one) on ``sys.path``, so
``from training_helpers import ...`` works in ``tests/`` and in each subpackage's test folder.
"""
