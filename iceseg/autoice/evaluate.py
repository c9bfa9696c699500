"""AutoICE scoring: tiled full-scene inference, R² / weighted F1 / combined score, PNGs and the submission.

The challenge's scores (spec autoice.md §4; starter kit ``functions.py``) on top of the generic
confusion-matrix and regression statistics of ``iceseg.metrics``; the evaluator plugs into train.py and
test.py as ``EVALUATORS["autoice"]`` (``eval.evaluator = "autoice"``).
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iceseg import dist
from iceseg.autoice.data import (
    CHART_CLASS_NAMES,
    MASK,
    NetCDFWriter,
    merge_submissions,
    write_submission_chart,
)
from iceseg.autoice.loss import MultiTaskLoss
from iceseg.evaluation import EVALUATORS, colourise, with_legend
from iceseg.inference import window_starts
from iceseg.metrics import ConfusionMatrix, RegressionStats, all_reduce_sum, weighted_f1


def combined_score(r2_sic: float, f1_sod: float, f1_floe: float, weights=(2.0, 2.0, 1.0)) -> float:
    """AutoICE combined score (w_SIC R²_SIC + w_SOD F1_SOD + w_FLOE F1_FLOE) / sum w, weights 2:2:1.

    Units follow the inputs (fractions or percent).
    """
    w1, w2, w3 = weights
    return (w1 * r2_sic + w2 * f1_sod + w3 * f1_floe) / (w1 + w2 + w3)


AUTOICE_TASKS = {"SIC": 1, "SOD": 7, "FLOE": 8}  # the seed's heads (SIC regression, SOD/FLOE + a mask slot)
AUTOICE_PALETTES = {  # RGB per class; masked reference pixels are drawn AUTOICE_MASKED_RGB
    "SIC": [[int(20 + 23.5 * k), int(40 + 21.5 * k), int(90 + 16.5 * k)] for k in range(11)],  # water -> white
    "SOD": [[0, 60, 160], [240, 100, 240], [150, 80, 255], [90, 200, 90], [30, 130, 30], [200, 60, 40],
            [128, 128, 128]],
    "FLOE": [[0, 60, 160], [255, 200, 0], [255, 140, 0], [200, 90, 40], [140, 60, 20], [90, 40, 10],
             [230, 230, 230], [128, 128, 128]],
}
AUTOICE_MASKED_RGB = (40, 40, 40)


def chart_picture(chart: str, values: np.ndarray, masked: np.ndarray | None = None) -> np.ndarray:
    """A chart as a picture with its key: ``(H, W)`` uint8 classes (``MASK`` = masked) -> ``(H', W, 3)`` uint8.

    ``AUTOICE_PALETTES`` colours, masked pixels (``values == MASK`` or ``masked``) in ``AUTOICE_MASKED_RGB``;
    below, SIC gets a colour bar 0-100 % and SOD/FLOE a swatch and name per class (``CHART_CLASS_NAMES``).
    """
    names = CHART_CLASS_NAMES[chart]
    rgb = colourise(values, np.array(AUTOICE_PALETTES[chart], np.uint8))
    rgb[(values == MASK) if masked is None else masked] = AUTOICE_MASKED_RGB
    palette = AUTOICE_PALETTES[chart][:len(names)]
    if chart == "SIC":
        return with_legend(rgb, names, palette, note="SIC (sea-ice concentration); dark grey: masked", bar=True)
    note = {"SOD": "SOD (stage of development)", "FLOE": "FLOE (floe size)"}.get(chart, chart)
    return with_legend(rgb, names + ["masked"], palette + [list(AUTOICE_MASKED_RGB)], note=note)


def autoice_tasks(cfg) -> dict:
    """``{task: outputs}`` of the config's model (``model.arch.tasks``; the seed's heads by default)."""
    return {t: int(k) for t, k in dict(getattr(cfg.model.arch, "tasks", AUTOICE_TASKS)).items()}


def task_values(block: torch.Tensor, tasks: dict) -> dict:
    """``(sum K, n, w)`` stacked task outputs (``tasks`` order) -> ``{task: (n, w)}``: the SIC value of a
    one-output head (float), else the argmax class (uint8; the seed's SOD/FLOE mask slot included)."""
    out, i = {}, 0
    for t, k in tasks.items():
        z = block[i:i + k]
        out[t] = z[0] if k == 1 else z.argmax(0).to(torch.uint8)
        i += k
    return out


def to_charts(values: dict, tasks: dict) -> dict:
    """:func:`task_values` maps -> ``{task: uint8 numpy}`` chart classes: a SIC value rounded and clipped
    to the classes 0..10 (the leaderboard's uint8 charts), classes as they are."""
    out = {}
    for t, v in values.items():
        v = v.float().numpy() if tasks[t] == 1 else v.numpy()
        out[t] = (np.clip(np.rint(v), 0, 10) if tasks[t] == 1 else v).astype(np.uint8)
    return out


class StackedTasks(torch.nn.Module):
    """``model(x) -> {task: (B, K_t, h, w)}`` as one ``(B, sum K_t, h, w)`` tensor in ``tasks`` order, so a
    multi-task model runs through single-output tiling (``iceseg.scene.TiledPredictor``)."""

    def __init__(self, model: torch.nn.Module, tasks: dict):
        super().__init__()
        self.model, self.tasks = model, dict(tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.cat([out[t].float() for t in self.tasks], 1)  # (B, sum K, h, w)


class AutoICEEvaluator:
    """AutoICE scoring of whole scenes with tiled, memory-bounded inference (``EVALUATORS["autoice"]``).

    Inference: each scene is cut into ``eval.crop_size`` windows at ``eval.stride`` (``eval.mode =
    "whole"``: one window = the whole scene, as the seed); window outputs (SIC value, SOD/FLOE logits)
    are averaged where windows overlap. Windows are processed row by row and every finished band of
    rows is scored at once, so besides the scene itself only one band (``crop_h x W`` x 16 floats)
    is held; the seed instead ran a whole 5000 x 5200 scene through the network in one pass.

    Scores (spec autoice.md §4; starter kit ``functions.py``), pooled over all valid pixels of all
    scenes on all ranks, in percent: ``r2_SIC`` (R² of the raw SIC output, as the seed),
    ``r2_SIC_int`` (rounded and clipped to 0..10 first, as the leaderboard's uint8 charts),
    ``f1_SOD``/``f1_FLOE`` (support-weighted F1 of argmax), ``combined`` = (2 r2_SIC + 2 f1_SOD +
    f1_FLOE) / 5 and ``combined_int`` (with ``r2_SIC_int``). ``loss`` is the seed's validation loss:
    the per-scene weighted sum of masked MSE (SIC) and CE (SOD, FLOE), averaged over scenes
    (``loss_<task>`` per task). A SIC head with K > 1 outputs is scored by its argmax class.

    With ``data.kwargs.downsample = f`` the inputs are on a 1/f grid and the charts at 80 m: the loss
    uses every f-th chart pixel, the scores upsample predictions back by block replication (nearest).

    Outputs: ``show_dir`` gets ``{scene}_{chart}.png`` (prediction) and ``{scene}_{chart}_ref.png``
    (reference), masked reference pixels dark grey; ``eval.submission`` names the AutoICE submission
    NetCDF (uint8 ``{scene}_{chart}`` at 80 m; with several ranks each writes a part that rank 0
    merges in :meth:`compute`).

    Args:
        cfg: full config (``model.arch.tasks``, ``loss.task_weights``, ``data.ignore_index``,
            ``data.kwargs.downsample``, ``eval.mode/crop_size/stride/submission``).
        device: where the running sums live.

    Raises:
        ValueError: tasks without SIC, SOD and FLOE, or a stride larger than the window.
    """

    def __init__(self, cfg, device: torch.device):
        self.tasks = autoice_tasks(cfg)
        if not {"SIC", "SOD", "FLOE"} <= set(self.tasks):
            raise ValueError(f"AutoICE evaluator needs tasks SIC, SOD and FLOE, got {list(self.tasks)}")
        E = cfg.eval
        self.mode, self.crop, self.stride = E.mode, tuple(E.crop_size), tuple(E.stride)
        if E.mode not in ("whole", "slide") or any(s > c for s, c in zip(self.stride, self.crop, strict=True)):
            raise ValueError(f"AutoICE evaluator: eval.mode must be whole/slide and eval.stride {self.stride} "
                             f"at most eval.crop_size {self.crop}")
        self.ignore, self.f = cfg.data.ignore_index, int(cfg.data.kwargs.get("downsample", 1))
        self.criterion = MultiTaskLoss(self.tasks, cfg.loss.task_weights, self.ignore)
        self.sic_raw = RegressionStats(self.ignore, None, device)
        self.sic_int = RegressionStats(self.ignore, (0, 10), device)
        self.cms = {t: ConfusionMatrix(self.tasks[t], self.ignore, device) for t in ("SOD", "FLOE")}
        self.loss_sums = torch.zeros(len(self.tasks) + 2, dtype=torch.float64, device=device)  # tasks, total, scenes
        self.submission, self.writer = (Path(E.submission) if E.submission else None), None

    # -- inference ----------------------------------------------------------------------------------
    def _score_band(self, block: torch.Tensor, labels: dict, r0: int, r1: int, scene_loss: torch.Tensor) -> dict:
        """Score finished input rows ``[r0, r1)``: loss at the input grid, metrics at 80 m."""
        f, i = self.f, 0
        for j, (t, k) in enumerate(self.tasks.items()):
            lab = labels[t][r0 * f:r1 * f:f, ::f]  # (n, w) chart pixels of the input grid
            scene_loss[j, 0] += self.criterion.task_loss(t, block[None, i:i + k], lab[None].long(), "sum")
            scene_loss[j, 1] += (lab != self.ignore).sum()
            i += k
        vals = task_values(block, self.tasks)
        rows = slice(r0 * f, min(r1 * f, labels["SIC"].shape[0]))
        n_rows, W = rows.stop - rows.start, labels["SIC"].shape[1]
        ri = torch.arange(n_rows, device=block.device) // f
        ci = torch.arange(W, device=block.device) // f
        full = {t: v[ri][:, ci] for t, v in vals.items()}  # (n_rows, W) at 80 m (block replication)
        sic = full["SIC"].float()
        self.sic_raw.update(sic, labels["SIC"][rows])
        self.sic_int.update(sic, labels["SIC"][rows])
        for t, cm in self.cms.items():
            cm.update(full[t], labels[t][rows])
        return vals

    def scene_outputs(self, model, img: torch.Tensor, labels: dict, keep_maps: bool = False):
        """Tiled inference and scoring of one scene.

        Args:
            model: eval-mode segmentor, ``model(x)`` -> ``{task: (1, K, h, w)}``.
            img: ``(1, 18, H', W')`` input grid. labels: ``{chart: (H, W)}`` at 80 m (255 = masked).
            keep_maps: also return the input-grid prediction maps ``{task: (H', W')}``.

        Returns:
            ``(per-task [loss sum, valid count] (T, 2) float64, maps or None)``.
        """
        _, C, Hi, Wi = img.shape
        H, W = labels["SIC"].shape
        if (math.ceil(H / self.f), math.ceil(W / self.f)) != (Hi, Wi):
            raise ValueError(f"AutoICE evaluator: image {Hi}x{Wi} and charts {H}x{W} do not match downsample {self.f}")
        ch, cw = (Hi, Wi) if self.mode == "whole" else (min(self.crop[0], Hi), min(self.crop[1], Wi))
        ys, xs = window_starts(Hi, ch, self.stride[0]), window_starts(Wi, cw, self.stride[1])
        K = sum(self.tasks.values())
        scene_loss = torch.zeros(len(self.tasks), 2, dtype=torch.float64, device=img.device)
        maps = {t: [] for t in self.tasks} if keep_maps else None
        acc = cnt = None
        base = 0

        def finish(r1):
            vals = self._score_band(acc[:, :r1 - base] / cnt[:, :r1 - base], labels, base, r1, scene_loss)
            if maps is not None:
                for t, v in vals.items():
                    maps[t].append(v.cpu())

        for y in ys:
            if acc is None:
                acc, cnt, base = img.new_zeros(K, ch, Wi, dtype=torch.float32), img.new_zeros(1, ch, Wi), y
            else:
                finish(y)  # rows [base, y) get no more windows
                acc = torch.cat([acc[:, y - base:], acc.new_zeros(K, y - base, Wi)], 1)  # (K, ch, Wi)
                cnt = torch.cat([cnt[:, y - base:], cnt.new_zeros(1, y - base, Wi)], 1)  # (1, ch, Wi)
                base = y
            for x in xs:
                out = model(img[:, :, y:y + ch, x:x + cw])
                acc[:, :, x:x + cw] += torch.cat([out[t].float() for t in self.tasks], 1)[0]  # (K, ch, cw)
                cnt[:, :, x:x + cw] += 1
        finish(base + ch)
        if maps is not None:
            maps = {t: torch.cat(v, 0) for t, v in maps.items()}  # (H', W')
        return scene_loss, maps

    def update(self, model, batch: dict, show_dir: Path | None = None, tta: bool = False) -> None:
        """Score ``batch`` of whole scenes: ``img (B, 18, H', W')``, ``label {chart: (B, H, W)}``, ``name``.

        Raises:
            ValueError: ``tta=True`` (not supported for AutoICE) or mismatching sizes.
        """
        if tta:
            raise ValueError("AutoICE evaluator: test-time augmentation is not supported")
        keep = show_dir is not None or self.submission is not None
        for b in range(batch["img"].shape[0]):
            labels = {t: batch["label"][t][b] for t in ("SIC", "SOD", "FLOE")}
            name = batch["name"][b]
            scene_loss, maps = self.scene_outputs(model, batch["img"][b:b + 1], labels, keep)
            means = scene_loss[:, 0] / scene_loss[:, 1].clamp_min(1)
            weights = torch.tensor([self.criterion.weights[t] for t in self.tasks], dtype=torch.float64,
                                   device=means.device)
            self.loss_sums += torch.cat([means, (weights * means).sum()[None], means.new_ones(1)])
            if keep:
                charts = self._charts(maps, labels["SIC"].shape)
                if show_dir is not None:
                    self._draw(Path(show_dir), name, charts, {t: v.cpu().numpy() for t, v in labels.items()})
                if self.submission is not None:
                    self._write(name, charts)

    def _charts(self, maps: dict, size: tuple) -> dict:
        """Input-grid maps -> ``{chart: (H, W) uint8}`` at 80 m (SIC rounded and clipped to 0..10)."""
        ri, ci = np.arange(size[0]) // self.f, np.arange(size[1]) // self.f
        charts = to_charts({t: maps[t] for t in ("SIC", "SOD", "FLOE")}, self.tasks)
        return {t: v[np.ix_(ri, ci)] for t, v in charts.items()}

    def _draw(self, show_dir: Path, name: str, charts: dict, labels: dict) -> None:
        show_dir.mkdir(parents=True, exist_ok=True)
        for t, pred in charts.items():
            for suffix, m in (("", pred), ("_ref", labels[t])):
                rgb = chart_picture(t, m, labels[t] == self.ignore)
                Image.fromarray(rgb).save(show_dir / f"{name}_{t}{suffix}.png")

    def _write(self, name: str, charts: dict) -> None:
        if self.writer is None:
            path = self.submission if dist.get_world_size() == 1 else self.submission.with_name(
                f"{self.submission.name}.part{dist.get_rank()}")
            self.writer = NetCDFWriter(path)
        for t, v in charts.items():
            write_submission_chart(self.writer, name, t, v)

    # -- results ------------------------------------------------------------------------------------
    def compute(self) -> dict:
        """All-reduce and return the scores (percent), ``loss`` and per-task losses (JSON-able)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.sic_raw.all_reduce()
        self.sic_int.all_reduce()
        for cm in self.cms.values():
            cm.all_reduce()
        all_reduce_sum(self.loss_sums)
        if self.submission is not None and dist.get_world_size() > 1 and dist.get_rank() == 0:
            self._merge_parts(dist.get_world_size())
        n = max(self.loss_sums[-1].item(), 1.0)
        m = {"r2_SIC": 100 * self.sic_raw.r2(), "r2_SIC_int": 100 * self.sic_int.r2(),
             "f1_SOD": 100 * weighted_f1(self.cms["SOD"].mat), "f1_FLOE": 100 * weighted_f1(self.cms["FLOE"].mat)}
        m["combined"] = combined_score(m["r2_SIC"], m["f1_SOD"], m["f1_FLOE"])
        m["combined_int"] = combined_score(m["r2_SIC_int"], m["f1_SOD"], m["f1_FLOE"])
        m["loss"] = self.loss_sums[-2].item() / n
        m.update({f"loss_{t}": self.loss_sums[j].item() / n for j, t in enumerate(self.tasks)})
        m["scenes"] = int(self.loss_sums[-1].item())
        m["pixels_SIC"] = int(self.sic_raw.sums[0].item())
        return m

    def _merge_parts(self, world: int) -> None:
        """Rank 0: copy every rank's ``<submission>.part<r>`` into the submission file, then delete them."""
        parts = [self.submission.with_name(f"{self.submission.name}.part{r}") for r in range(world)]
        merge_submissions(self.submission, [p for p in parts if p.is_file()], delete=True)

    def table(self, metrics: dict) -> str:
        """One line per chart score plus combined scores and the validation loss."""
        rows = [f"{'SIC R2':<10}{metrics['r2_SIC']:>9.3f}  (rounded 0-10: {metrics['r2_SIC_int']:.3f})",
                f"{'SOD F1':<10}{metrics['f1_SOD']:>9.3f}", f"{'FLOE F1':<10}{metrics['f1_FLOE']:>9.3f}",
                f"{'combined':<10}{metrics['combined']:>9.3f}  (rounded SIC: {metrics['combined_int']:.3f})",
                f"{'val loss':<10}{metrics['loss']:>9.4f}  ("
                + ", ".join(f"{t} {metrics[f'loss_{t}']:.4f}" for t in self.tasks)
                + f"; {metrics['scenes']} scenes, {metrics['pixels_SIC']:,} SIC pixels)"]
        return "\n".join(rows)


EVALUATORS["autoice"] = AutoICEEvaluator  # train.py / test.py reach it by eval.evaluator = "autoice"
