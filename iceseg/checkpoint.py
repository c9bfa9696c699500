"""Atomic checkpoint writing and safe (``weights_only=True``) loading.

A checkpoint is a dict of plain data and tensors, so ``torch.load(weights_only=True)`` can read it without
unpickling arbitrary objects. ``last.pt`` (and its ``iter_*.pt`` snapshots) resumes a run: ``model``,
``optimizer``, ``scaler``, ``plateau``, ``early_stop``, ``iter``, ``epoch``, ``best``, ``rng`` (one
:func:`rng_state` per rank), ``world_size``/``batch_size``/``accum_steps``, ``config``
(``dataclasses.asdict``) and ``version``. ``best.pt`` holds what scoring and prediction need: ``model``,
``config``, ``version``, ``iter``, ``epoch``, ``best``, ``metrics`` and ``threads``.
"""

import math
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from iceseg.models.swin import unwrap_state_dict  # noqa: F401  (one definition; model files carry copies)


def save_checkpoint(obj: dict, path: str | os.PathLike, keep_prev: bool = True) -> None:
    """Write ``obj`` to ``path`` atomically.

    The data go to ``<path>.tmp``, are flushed and fsync'ed, and then ``os.replace`` swaps the
    file in, so a crash at any instant leaves ``path`` holding either the old or the new
    checkpoint, never a truncated one (and never no file). With ``keep_prev`` the previous file is
    kept as ``<stem>.prev.pt`` (a hard link, or a copy where links are unsupported) as a fall-back.

    Args:
        obj: plain-data dict (tensors, numbers, strings, lists, dicts).
        path: destination, e.g. ``work_dir/last.pt``.
        keep_prev: keep the previous file as ``<stem>.prev.pt`` (``last.pt``; not needed for ``best.pt``).

    Raises:
        OSError: the write failed (a full disk: ``ENOSPC``); the temporary file is removed and ``path`` is
            untouched; the message names the file and the cause.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write checkpoint {path} ({e.strerror or e}); "
                               f"{'the previous ' + path.name + ' is unchanged' if path.exists() else 'no file written'}"
                      ) from e
    if keep_prev and path.exists():  # link the old file to .prev.pt first: `path` itself is never missing
        _link(path, prev_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a copy where links are unsupported), made under a temporary name
    and renamed: ``dst`` is always whole."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def snapshot(path: str | os.PathLike, it: int, keep: int) -> list[Path]:
    """Keep a copy of a complete checkpoint as ``iter_{it:06d}.pt`` beside it and remove the oldest beyond ``keep``.

    The copy is a hard link (no extra disk until ``path`` is replaced; a copy where links are unsupported),
    made under a temporary name and renamed, so an old snapshot is removed only once the new one is whole.

    Returns:
        The snapshots kept, oldest first.
    """
    path = Path(path)
    _link(path, path.with_name(f"iter_{it:06d}.pt"))
    _fsync_dir(path.parent)
    kept = sorted(path.parent.glob("iter_[0-9]*.pt"))
    for old in kept[:-keep]:
        old.unlink()
    return kept[-keep:]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    fallback: bool = True, with_path: bool = False):
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load``.
        fallback: when ``path`` is missing, corrupt or truncated, load ``<stem>.prev.pt`` (written
            by :func:`save_checkpoint`) instead and warn, naming both files and the error.
        with_path: also return the file actually read (``path`` or its fall-back).

    Returns:
        The checkpoint dict, or ``(dict, Path)`` with ``with_path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file (and its fall-back) cannot be read: one line naming the file and saying whether
            it is no PyTorch file at all, a damaged one, or one holding Python objects that safe loading refuses.
    """
    path = Path(path)
    prev = prev_path(path)
    try:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # missing, corrupt, truncated, or not a checkpoint
        if fallback and prev.is_file():
            why = "is missing" if isinstance(e, FileNotFoundError) else f"is unreadable ({_why(path, e)})"
            warnings.warn(f"{path} {why}; falling back to {prev}", stacklevel=2)
            return load_checkpoint(prev, map_location, False, with_path)
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"cannot read checkpoint {path}: {_why(path, e)}") from e
    return (ckpt, path) if with_path else ckpt


def _why(path: Path, err: Exception) -> str:
    """Why ``torch.load`` failed, in one line (torch's own message suggests ``weights_only=False``, which
    is the wrong advice for a file of unknown origin)."""
    with open(path, "rb") as f:
        head = f.read(4)
    text = str(err)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip; old torch a protocol-2 pickle
        return f"not a PyTorch checkpoint (the file starts with {head!r}, not a torch.save zip or pickle)"
    if "Unsupported global" in text:
        name = text.split("GLOBAL ", 1)[1].split(" ", 1)[0]
        return (f"it holds Python objects ({name}) that safe loading (torch.load(weights_only=True)) refuses; "
                "iceseg reads plain-data checkpoints: re-save the weights with torch.save(model.state_dict(), ...)")
    return f"truncated or corrupt ({type(err).__name__}: {text.strip().splitlines()[0][:200]})"


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str, config_name: str,
                     trained_with: dict | None = None, shown: int = 3) -> None:
    """``model.load_state_dict(state_dict)`` with a short message when the weights do not fit.

    Args:
        model: the model built from config ``config_name``.
        state_dict: tensors by parameter name (:func:`unwrap_state_dict`).
        source: the file, for the message.
        config_name: the config the model was built from.
        trained_with: the checkpoint's stored config (plain data) or None; its name and model are quoted.
        shown: how many keys of each kind the message lists.

    Raises:
        ValueError: at most 5 lines: the config the checkpoint was trained with, the counts of missing,
            unexpected and reshaped keys with the first ``shown`` of each, and what to pass instead.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
                for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or reshaped:
        stored = trained_with if isinstance(trained_with, dict) else {}
        name = stored.get("name") or "unknown (no config stored)"
        model_name = stored.get("model", {}).get("name", "?") if isinstance(stored.get("model"), dict) else "?"
        lines = [f"{source} does not fit config {config_name!r}: it was trained with config {name!r} "
                 f"(model {model_name})"]
        for what, keys in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                           ("key(s) with another shape", reshaped)):
            if keys:
                lines.append(f"  {len(keys)} {what}, e.g. {'; '.join(keys[:shown])}")
        if stored.get("name") == config_name:
            hint = "the overrides it was trained with (its config.json), or no --config in predict.py"
        else:
            hint = f"--config {stored['name']}" if stored.get("name") else "the config it was trained with"
        raise ValueError("\n".join(lines + [f"  pass {hint}, or a checkpoint of config {config_name!r}"]))
    model.load_state_dict(state_dict)


def check_resume(ckpt: dict, path: Path, world_size: int, batch_size: int, accum_steps: int) -> None:
    """Refuse to resume ``ckpt`` with another global batch (images per optimizer step).

    The global batch ``world_size x batch_size x accum_steps`` fixes the iterations per epoch and so the
    schedule; with it unchanged, a resume on another number of processes continues the same schedule
    (only the sharding of each epoch's order differs). Checkpoints from before these fields were stored give
    their process count by their RNG states and their batch by their config.

    Raises:
        ValueError: the global batch differs: the saved and current products, and overrides that restore it.
    """
    cfg = ckpt.get("config") or {}
    saved = (ckpt.get("world_size", len(ckpt.get("rng", [None]))),
             ckpt.get("batch_size", cfg.get("data", {}).get("batch_size", batch_size)),
             ckpt.get("accum_steps", cfg.get("train", {}).get("accum_steps", accum_steps)))
    now = (world_size, batch_size, accum_steps)
    if math.prod(saved) != math.prod(now):
        fmt = "{} process(es) x batch {} x {} accumulation step(s) = {} images per step"
        total = math.prod(saved)
        fixes = [f"--data.batch_size={total // (world_size * accum_steps)}"] if total % (world_size * accum_steps) == 0 else []
        fixes += [f"--train.accum_steps={total // (world_size * batch_size)}"] if total % (world_size * batch_size) == 0 else []
        raise ValueError(f"{path} was saved by {fmt.format(*saved, total)}; this run has "
                         f"{fmt.format(*now, math.prod(now))}, which would change the schedule. Resume with "
                         f"{' or '.join(fixes) or f'a global batch of {total}'} (or the saved process count), "
                         f"or start over with --train.resume=False")


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
