"""Atomic checkpoint writing and safe (``weights_only=True``) loading.

A checkpoint is a dict of plain data and tensors: ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``iter``, ``epoch``, ``best``, ``rng`` and ``config`` (``dataclasses.asdict``), so
``torch.load(weights_only=True)`` can read it without unpickling arbitrary objects.
"""

import os
import warnings
from pathlib import Path

import torch


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` atomically.

    The data go to ``<path>.tmp``, are flushed and fsync'ed, and then ``os.replace`` swaps the
    file in, so a crash leaves either the old or the new checkpoint, never a truncated one. The
    previous file is kept as ``<stem>.prev.pt`` as a fall-back.

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
    if path.exists():
        os.replace(path, path.with_name(path.stem + ".prev" + path.suffix))
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
        fallback: when ``path`` is corrupt or truncated, try ``<stem>.prev.pt`` (written by
            :func:`save_checkpoint`) and warn.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file (and its fall-back) cannot be read, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a checkpoint
        prev = path.with_name(path.stem + ".prev" + path.suffix)
        if fallback and prev.is_file():
            warnings.warn(f"{path} is unreadable ({type(e).__name__}: {e}); falling back to {prev}")
            return load_checkpoint(prev, map_location, fallback=False)
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def unwrap_state_dict(ckpt: dict) -> dict:
    """Return the model state dict inside common checkpoint wrappers.

    Accepts iceseg checkpoints (``model``), mmseg/mmengine (``state_dict``) and bare state dicts,
    and strips the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    out = {}
    for k, v in ckpt.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out
