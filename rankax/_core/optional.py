"""Imports of the optional dependencies, with an error that says how to install them.

Each optional package belongs to an extra of ``pyproject.toml``: ``data`` (tensorflow-datasets,
grain), ``scann`` and ``weights`` (safetensors). torch is in no extra (a CUDA or a CPU build is
the user's choice); only reading ``.pth`` weights needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"tensorflow_datasets": "data", "grain": "data", "scann": "scann", "safetensors": "weights"}


def require(module: str, what: str) -> ModuleType:
    """``import module``, or a ``ModuleNotFoundError`` naming ``what`` needs it and the fix.

    Args:
      module: a dotted module name whose top-level package is a key of ``EXTRAS`` or ``torch``.
      what: the feature that needs it, for the message (``"load_sop"``).

    Raises:
      ModuleNotFoundError: the package is not installed. Its ``name`` is the missing module's,
        as Python's own, so callers can tell which dependency failed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        package = module.split(".")[0]
        if package in EXTRAS:
            extra = EXTRAS[package]
            fix = f"pip install 'rankax[{extra}]' (in a clone of rankax: pip install -e '.[{extra}]')"
        elif package == "torch":
            fix = "pip install torch (a CPU-only build: --index-url https://download.pytorch.org/whl/cpu)"
        else:
            fix = f"pip install {package}"
        raise ModuleNotFoundError(
            f"{what} needs the optional package {package!r} (missing: {err.name!r}): {fix}", name=err.name
        ) from err
