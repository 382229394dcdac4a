"""Loading pickled files without running arbitrary code.

Dataset pickles (CIFAR batches) only need numpy arrays, containers and strings, so
:func:`safe_pickle_load` refuses every other global a pickle asks for. Tensor files go through
``torch.load(weights_only=True)``, which has its own allow-list.
"""

from __future__ import annotations

import _codecs
import importlib
import os
import pickle
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from dpcore.errors import DataError

__all__ = ["safe_pickle_load", "safe_torch_load"]


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` on numpy 2, ``numpy.core...`` on numpy 1 (no warnings)."""
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return _codecs.encode(text, "latin1", errors)


def _build_allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
    scalar = _numpy_core_attr("multiarray", "scalar")
    for base in ("numpy.core", "numpy._core"):
        allowed[(f"{base}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{base}.multiarray", "scalar")] = scalar
    try:  # protocol >= 5 pickles of contiguous arrays
        frombuffer = _numpy_core_attr("numeric", "_frombuffer")
        for base in ("numpy.core", "numpy._core"):
            allowed[(f"{base}.numeric", "_frombuffer")] = frombuffer
    except AttributeError:
        pass
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    builtin_types: dict[str, Callable[..., Any]] = {
        t.__name__: t
        for t in (list, dict, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool)
    }
    for module in ("builtins", "__builtin__"):
        for name, obj in builtin_types.items():
            allowed[(module, name)] = obj
    allowed[("__builtin__", "unicode")] = str
    allowed[("__builtin__", "long")] = int
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are limited to numpy arrays and builtin containers."""

    def __init__(self, fileobj: IO[bytes], source: str) -> None:
        super().__init__(fileobj, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _build_allowed()
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise DataError(
                f"{self._source}: refusing to unpickle {module}.{name} (only arrays, lists, dicts and "
                "strings are allowed); the file is not a dataset pickle or may be malicious"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self._source}: refusing to unpickle a persistent reference (only arrays, lists, dicts and "
            "strings are allowed); the file is not a dataset pickle or may be malicious"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def safe_pickle_load(fileobj: IO[bytes], name: str | os.PathLike[str] | None = None) -> object:
    """Unpickle ``fileobj`` allowing only numpy arrays, builtin containers, strings and numbers.

    ``name`` (default: ``fileobj.name`` when it has one) is the file named in error messages.
    Both Python-2 (protocol 2) and Python-3 dataset pickles load (``encoding="latin1"``).
    """
    source = str(name if name is not None else getattr(fileobj, "name", "<pickle>"))
    try:
        return _RestrictedUnpickler(fileobj, source).load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file is a data error
        raise DataError(
            f"{source}: cannot unpickle ({_first_line(exc)}); the file is truncated or not a dataset "
            "pickle, get a fresh copy of it"
        ) from exc


def safe_torch_load(path: str | os.PathLike[str]) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line ``DataError``s."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path (expected a file written by torch.save)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"{p}: cannot load with torch.load(weights_only=True) ({_first_line(exc)}); the file must hold only "
            "tensors and plain containers: re-save it with torch.save of tensors (or a dict/list of tensors)"
        ) from exc
