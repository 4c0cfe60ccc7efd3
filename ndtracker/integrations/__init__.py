"""Adapters for optional frameworks, one module each, importing its framework at the top.

Import them by their module (``ndtracker.integrations.lightning``, ...); nothing here is re-exported
at the top level, so ``import ndtracker`` never imports a framework.
"""
