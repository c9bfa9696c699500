"""Dev-only helpers to import the reference libraries next to a CPU-only torch.

Used by the golden-tensor scripts (``dev/make_golden_*.py``) and the benchmark; the library
and its tests never import this file.

- The PyPI torchvision 0.28 wheel is a CUDA build; on the CPU torch its import fails with
  ``operator torchvision::nms does not exist`` (pytorch/vision#9085). Declaring the two op schemas
  it looks up at import time lets it import; calling them still fails, which these scripts never do.
- mmcv-lite has no compiled ops, and mmseg imports ``mmcv.ops`` at registry time: a stub module whose
  attributes raise on use stands in for it.
- mmsegmentation installs a top-level ``tests`` package that shadows ours, so ``tests/golden.py`` is
  loaded by file path.
"""

import importlib.util
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_TV_LIB = None  # the Library object must stay alive or its definitions are dropped


def allow_torchvision_import() -> None:
    """Declare ``torchvision::nms`` and ``torchvision::qnms`` so ``import torchvision`` works on CPU torch."""
    global _TV_LIB
    if _TV_LIB is None and not hasattr(torch.ops.torchvision, "nms"):  # a CUDA build, or declared already
        _TV_LIB = torch.library.Library("torchvision", "DEF")
        _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def stub_mmcv_ops() -> None:
    """Put a ``mmcv.ops`` stand-in into ``sys.modules`` (each attribute raises RuntimeError when called)."""
    stub = types.ModuleType("mmcv.ops")

    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: (_ for _ in ()).throw(RuntimeError(f"mmcv.ops.{name} is a stub"))

    stub.__getattr__ = missing
    sys.modules["mmcv.ops"] = stub


def load_golden():
    """``tests/golden.py`` as a module, loaded by path (see the module docstring)."""
    spec = importlib.util.spec_from_file_location("iceseg_tests_golden", ROOT / "tests" / "golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
