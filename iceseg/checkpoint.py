"""Atomic checkpoint writing and safe (``weights_only=True``) loading.

A checkpoint is a dict of plain data and tensors: ``model``, ``optimizer``, ``scaler``,
``plateau``, ``iter``, ``epoch``, ``best``, ``rng`` (one :func:`rng_state` per rank), ``config``
(``dataclasses.asdict``) and ``version``, so ``torch.load(weights_only=True)`` can read it
without unpickling arbitrary objects.
"""

import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from iceseg.models.swin import unwrap_state_dict  # noqa: F401  (one definition; model files carry copies)


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` atomically.

    The data go to ``<path>.tmp``, are flushed and fsync'ed, and then ``os.replace`` swaps the
    file in, so a crash at any instant leaves ``path`` holding either the old or the new
    checkpoint, never a truncated one (and never no file). The previous file is kept as
    ``<stem>.prev.pt`` (a hard link, or a copy where links are unsupported) as a fall-back.

    Args:
        obj: plain-data dict (tensors, numbers, strings, lists, dicts).
        path: destination, e.g. ``work_dir/last.pt``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():  # link the old file to .prev.pt first: `path` itself is never missing
        prev_tmp = path.with_name(path.name + ".prev.tmp")
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(path, prev_tmp)
        except OSError:
            shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, prev_path(path))
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    fallback: bool = True) -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load``.
        fallback: when ``path`` is missing, corrupt or truncated, load ``<stem>.prev.pt`` (written
            by :func:`save_checkpoint`) instead and warn, naming both files and the error.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file (and its fall-back) cannot be read, naming the file.
    """
    path = Path(path)
    prev = prev_path(path)
    if not path.is_file():
        if fallback and prev.is_file():
            warnings.warn(f"{path} is missing; falling back to {prev}", stacklevel=2)
            return load_checkpoint(prev, map_location, fallback=False)
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a checkpoint
        if fallback and prev.is_file():
            warnings.warn(f"{path} is unreadable ({type(e).__name__}: {e}); falling back to {prev}", stacklevel=2)
            return load_checkpoint(prev, map_location, fallback=False)
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def prev_path(path: str | os.PathLike) -> Path:
    """The fall-back kept by :func:`save_checkpoint`: ``work_dir/last.pt`` -> ``work_dir/last.prev.pt``."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def rng_state() -> dict:
    """This process's random-number generator states as plain data (for ``weights_only`` loading).

    Returns:
        ``{"torch": uint8 tensor, "cuda": uint8 tensor or None (current device, when CUDA is
        initialised), "numpy": [name, int64 tensor (624,), pos, has_gauss, cached_gaussian],
        "python": [version, list of 625 ints, gauss_next]}``.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_state(state: dict | torch.Tensor) -> None:
    """Restore states from :func:`rng_state` (a bare tensor, the older format, restores torch's CPU RNG)."""
    if isinstance(state, torch.Tensor):
        state = {"torch": state}
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("numpy") is not None:
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
