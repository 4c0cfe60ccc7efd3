"""Adapters for optional frameworks, one module each, importing its framework at the top.

Import them by their module (``ndtracker.integrations.lightning``, ...); nothing here is re-exported
at the top level, so ``import ndtracker`` never imports a framework. Importing a module whose
framework is missing raises an ImportError naming the extra to install.

=====================================  ==================================  ===============
module                                 gives                               extra
=====================================  ==================================  ===============
``ndtracker.integrations.lightning``   ``TrackerCallback``                 ``lightning``
``ndtracker.integrations.huggingface`` ``TrackerCallback``                 ``huggingface``
``ndtracker.integrations.tensorboard`` ``TensorBoardSink``                 ``tensorboard``
``ndtracker.integrations.wandb``       ``WandbSink``                       ``wandb``
``ndtracker.integrations.mlflow``      ``MlflowSink``                      ``mlflow``
=====================================  ==================================  ===============
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "missing_extra"]

DISTRIBUTION = "torch-ndtracker"
"""The name ndtracker is installed under with pip, used in every missing-extra message."""


def missing_extra(package: str, extra: str) -> ImportError:
    """The ImportError to raise when ``package`` is not installed: it names the extra to install.

    Example:
        >>> print(missing_extra("lightning", "lightning"))
        ndtracker.integrations.lightning needs the lightning package: pip install 'torch-ndtracker[lightning]'
    """
    return ImportError(f"ndtracker.integrations.{extra} needs the {package} package: "
                       f"pip install '{DISTRIBUTION}[{extra}]'")  # fmt: skip
