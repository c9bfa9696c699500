"""Schedules driven by validation scores: ReduceLROnPlateau and early stopping (train.py).

Both keep plain-data state (``state`` dicts of floats and ints) that train.py stores in every checkpoint,
so a resumed run continues them exactly. The per-iteration lr schedules (warm-up, cosine, poly) stay in
train.py's ``get_lr``.
"""


def improved(value: float, best: float | None, mode: str, rel: float = 0.0, delta: float = 0.0) -> bool:
    """True when ``value`` beats ``best`` (None: always) in ``mode`` "max" or "min".

    ``rel`` is torch ReduceLROnPlateau's relative threshold (``value > best * (1 + rel)`` for "max",
    ``value < best * (1 - rel)`` for "min"); ``delta`` an absolute margin (``value > best + delta`` /
    ``value < best - delta``, Keras/Lightning ``min_delta``).
    """
    if best is None:
        return True
    if mode == "max":
        return value > best * (1 + rel) + delta
    return value < best * (1 - rel) - delta


class Plateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` as an lr scale (threshold mode "rel").

    Per :meth:`step`: a value that beats the best by the relative ``threshold`` resets the count of bad
    evaluations, any other adds one; during ``cooldown`` evaluations after a cut the count is held at 0;
    when it exceeds ``patience`` the lr becomes ``max(lr * factor, min_lr)``, unless that changes it by
    1e-8 or less (torch's ``eps``). Specs: autoice.md §2.5 (factor 0.5, patience 4, min_lr 1e-8),
    unetpp_glacier_and_lossd.md A3 (factor 0.5, patience 5).

    Args:
        base_lr: the configured lr; ``lr = base_lr * state["scale"]``.
        mode: "max" or "min".
        factor, patience, threshold, cooldown, min_lr: as torch's arguments of the same names.

    ``state``: ``{"scale", "best", "bad", "cooldown"}``.
    """

    def __init__(self, base_lr: float, mode: str, factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        self.base_lr, self.mode, self.factor, self.patience = base_lr, mode, factor, patience
        self.threshold, self.cooldown, self.min_lr = threshold, cooldown, min_lr
        self.state = {"scale": 1.0, "best": None, "bad": 0, "cooldown": 0}

    def step(self, value: float) -> float | None:
        """Count one validation ``value``; returns the new lr after a cut, else None."""
        s = self.state
        if improved(value, s["best"], self.mode, rel=self.threshold):
            s["best"], s["bad"] = value, 0
        else:
            s["bad"] += 1
        if s["cooldown"] > 0:
            s["cooldown"] -= 1
            s["bad"] = 0
        if s["bad"] <= self.patience:
            return None
        s["cooldown"], s["bad"] = self.cooldown, 0
        old = self.base_lr * s["scale"]
        new = max(old * self.factor, self.min_lr)
        if old - new <= 1e-8:
            return None
        s["scale"] = new / self.base_lr
        return new


class EarlyStopping:
    """Stop once ``patience`` evaluations in a row did not beat the best by more than ``min_delta``.

    The AutoICE seed's ``callbacks.py`` rule (validation loss, mode "min", patience 80, min_delta 1e-8;
    spec autoice.md §2.5). ``patience`` 0 never stops.

    ``state``: ``{"best", "stale"}``.
    """

    def __init__(self, mode: str, patience: int, min_delta: float = 0.0):
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.state = {"best": None, "stale": 0}

    def step(self, value: float) -> bool:
        """Count one validation ``value``; True when training should stop."""
        s = self.state
        if improved(value, s["best"], self.mode, delta=self.min_delta):
            s["best"], s["stale"] = value, 0
        else:
            s["stale"] += 1
        return bool(self.patience) and s["stale"] >= self.patience
