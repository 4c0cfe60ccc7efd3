"""Importing an integration without its framework names the extra to install."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from ndtracker.integrations import DISTRIBUTION, missing_extra

MODULES = [
    ("lightning", "lightning.pytorch", "lightning"),
    ("huggingface", "transformers", "huggingface"),
    ("tensorboard", "tensorboard", "tensorboard"),
    ("wandb", "wandb", "wandb"),
    ("mlflow", "mlflow", "mlflow"),
]


@pytest.mark.parametrize("module, package, extra", MODULES)
def test_a_missing_framework_names_the_extra(monkeypatch, module, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, f"ndtracker.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install '{DISTRIBUTION}[{extra}]'")):
        importlib.import_module(f"ndtracker.integrations.{module}")


def test_the_message_uses_the_one_distribution_name(monkeypatch):
    import ndtracker.integrations as integrations

    monkeypatch.setattr(integrations, "DISTRIBUTION", "ndtracker-renamed")
    assert "pip install 'ndtracker-renamed[wandb]'" in str(missing_extra("wandb", "wandb"))


def test_the_extras_are_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert {extra for _, _, extra in MODULES} <= set(project["optional-dependencies"])


def test_import_ndtracker_imports_no_framework():
    frameworks = ("lightning", "transformers", "wandb", "mlflow", "tensorboard")
    code = f"import sys, ndtracker.integrations; print([m for m in {frameworks} if m in sys.modules])"
    import subprocess

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
