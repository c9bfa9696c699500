"""Trained models as ``torch.export`` programs (``.pt2``) that run without iceseg's source.

    ep, meta = export_model(model, cfg)              # model: built, weights loaded, eval mode
    save_program(ep, meta, "unetpp_glacier.pt2", cfg)   # the program + config.json + export.json, atomically
    net, config, meta = load_program("unetpp_glacier.pt2")   # net(img) -> logits, as the eager model

The program is the model's inference forward, ``(1, C, H, W)`` float32 -> ``(1, K', H, W)`` float32 logits
(a dict of them for the multi-task DeepLab), traced by ``torch.export.export`` for one image (K-Net's dynamic
kernels run one image at a time, as mmseg's, which fixes the batch; :func:`load_program` returns a module that
runs a batch image by image) and, by default, with the height and width dynamic: H and W are ``multiple * n`` (``multiple`` = 32, the output stride of every
family here), which ``predict.py`` guarantees by padding its windows, with ``n >= 2`` (U-Net++, DeepLab) or
``n > window_size`` (Swin-based models, :func:`min_size`). ``dynamic=False`` traces one
fixed ``(H, W)`` instead. The plain model is exported (the reference math: no ``iceseg.fast.optimize``),
with BatchNorm folded into its convolutions when ``eval.fuse_conv_bn`` is set, as ``predict.py`` runs it.

Loading needs torch only: ``torch.export.load(path).module()`` is the network, and the ``config.json`` and
``export.json`` extra files hold the training config (``configs.to_dict``) and how it was traced.

The same program converts to ONNX (:func:`save_onnx`, torch's ``torch.onnx.export(..., dynamo=True)``; needs the
optional packages ``onnx`` and ``onnxscript``) with the two records as model metadata; :func:`load_onnx` runs
it on ONNX Runtime (optional package ``onnxruntime``). Neither package is needed to import this module.
"""

import dataclasses
import json
import os
from pathlib import Path

import torch

EXPORT_FORMAT = 1  # version of the export.json record
MULTIPLE = 32  # dynamic H and W are multiples of this


def export_model(model: torch.nn.Module, cfg, dynamic: bool = True, example_hw: tuple[int, int] | None = None,
                 multiple: int = MULTIPLE) -> tuple[torch.export.ExportedProgram, dict]:
    """Trace ``model`` (``forward(img)`` -> logits, eval mode) into an ``ExportedProgram`` on the CPU.

    Returns ``(program, meta)``; ``meta`` is the ``export.json`` record :func:`save_program` stores:
    ``{"format", "torch", "dynamic", "multiple", "input_hw", "min_hw"}`` (``input_hw``: the fixed ``(H, W)``
    of a static program, else null; ``min_hw``: the smallest accepted ``(H, W)``, :func:`min_size`).

    Args:
        model: the built segmentor with its weights; it is put in eval mode.
        cfg: its config (``data.in_channels`` gives C; ``eval.crop_size`` the example size).
        dynamic: height and width dynamic (multiples of ``multiple``, at least :func:`min_size`); else fixed.
        example_hw: the traced ``(H, W)``; default ``eval.crop_size`` rounded up to ``multiple`` when dynamic.

    Raises:
        torch._dynamo.exc.UserError and other ``torch.export`` errors when the model cannot be traced with
        these shapes (e.g. a shape guard that specialises a dynamic size).
    """
    model = model.eval().cpu()
    lo = min_size(model, multiple)
    n_min = lo // multiple if dynamic else 1
    if example_hw is None:
        h, w = cfg.eval.crop_size
        example_hw = (max(-(-h // multiple), n_min) * multiple, max(-(-w // multiple), n_min) * multiple) \
            if dynamic else (h, w)
    x = torch.zeros(1, cfg.data.in_channels, *example_hw)  # (1, C, H, W)
    shapes = None
    if dynamic:
        Dim = torch.export.Dim
        n_max = 16384 // multiple
        shapes = {"img": {2: multiple * Dim("h", min=n_min, max=n_max), 3: multiple * Dim("w", min=n_min, max=n_max)}}
    # torch's decomposition of adaptive average pooling (UPerHead's pyramid pooling) over a dynamic size converts
    # to ONNX gathers that index out of range on other sizes; pooling matrices trace to plain products instead
    swapped = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.AdaptiveAvgPool2d]
    try:
        for parent, name, child in swapped:
            setattr(parent, name, MatrixAdaptiveAvgPool2d(child.output_size))
        with torch.no_grad():
            ep = torch.export.export(_Inference(model).eval(), (x,), dynamic_shapes=shapes)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
    meta = {"format": EXPORT_FORMAT, "torch": torch.__version__, "dynamic": dynamic,
            "multiple": multiple if dynamic else 1, "input_hw": None if dynamic else list(example_hw),
            "min_hw": [lo, lo] if dynamic else list(example_hw)}
    return ep, meta


def min_size(model: torch.nn.Module, multiple: int = MULTIPLE) -> int:
    """Smallest height and width (pixels) of a dynamic program of ``model``: ``2 * multiple``, so that the
    stride-``multiple`` stage has at least two positions along each axis, or for a model with Swin windows
    (modules with a ``window_size`` attribute, largest ``ws``) ``multiple * (ws + 1)``, so that it has at
    least two windows. A size of 1 there makes the traced shapes specialise (broadcasting, and strides of
    equal value in the window permutation), and a program traced on more is refused on fewer by its input
    guard."""
    ws = max((int(m.window_size) for m in model.modules() if isinstance(getattr(m, "window_size", None), int)),
             default=0)
    return multiple * (ws + 1) if ws else 2 * multiple


class MatrixAdaptiveAvgPool2d(torch.nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two averaging matrices: ``(B, C, H, W)`` -> ``(B, C, s_h, s_w)``
    ``= P_h X P_w^T``, where row ``i`` of ``P`` (``(s, n)``) averages input positions ``floor(i n / s)`` to
    ``ceil((i + 1) n / s) - 1``, torch's adaptive bins. Equal to ``nn.AdaptiveAvgPool2d`` up to float summation
    order; used only for tracing (:func:`export_model`), where it stays valid for every dynamic size."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size if isinstance(output_size, tuple) else (output_size, output_size)

    @staticmethod
    def matrix(n, s: int, like: torch.Tensor) -> torch.Tensor:
        """Averaging matrix ``(s, n)`` of adaptive pooling from ``n`` to ``s`` positions, ``like``'s dtype."""
        i = torch.arange(s, device=like.device)[:, None]  # (s, 1)
        j = torch.arange(n, device=like.device)[None, :]  # (1, n)
        inside = (j >= torch.div(i * n, s, rounding_mode="floor")) & (j < torch.div((i + 1) * n + s - 1, s,
                                                                                   rounding_mode="floor"))  # (s, n)
        m = inside.to(like.dtype)
        return m / m.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        sh, sw = (n if s is None else s for s, n in zip(self.output_size, (H, W), strict=True))
        return self.matrix(H, sh, x) @ x @ self.matrix(W, sw, x).T  # (s_h, H) @ (B, C, H, W) @ (W, s_w)


class _Inference(torch.nn.Module):
    """``img -> model(img)``: the inference forward alone (no ``label`` argument in the traced signature)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor):
        return self.model(img)


def save_program(ep: torch.export.ExportedProgram, meta: dict, path: str | os.PathLike, cfg) -> None:
    """Write ``ep`` to ``path`` (``.pt2``) with ``config.json`` (the config dataclass as plain data, what
    ``configs.from_dict`` reads) and ``export.json`` (``meta``, as :func:`export_model` returned it), through
    ``<path>.tmp`` and a rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch.export.save wants a .pt2 name otherwise
            torch.export.save(ep, f, extra_files=_records(meta, cfg))

    _write_atomically(path, write)


def _records(meta: dict, cfg) -> dict[str, str]:
    """The ``config.json`` and ``export.json`` records stored with a program, as JSON text."""
    return {"config.json": json.dumps(dataclasses.asdict(cfg)), "export.json": json.dumps(meta)}


def _write_atomically(path: str | os.PathLike, write) -> None:
    """``write(tmp)`` the whole file to ``<path>.tmp``, then rename it to ``path``; the temporary file is removed
    whatever happens."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_program(path: str | os.PathLike) -> tuple[torch.nn.Module, dict, dict]:
    """Load a ``.pt2`` written by :func:`save_program`: ``(network, config dict, export.json dict)``.

    Raises:
        ValueError: naming the file when it is not a ``torch.export`` archive or lacks the two records.
    """
    extra = {"config.json": "", "export.json": ""}
    try:
        ep = torch.export.load(path, extra_files=extra)
    except Exception as e:  # a zip that is not an export archive, a truncated file, another torch's format
        raise ValueError(f"{path}: not a torch.export program ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not extra["config.json"] or not extra["export.json"]:
        raise ValueError(f"{path}: a torch.export program without iceseg's config.json/export.json records "
                         "(write it with dev/export.py)")
    return ProgramModel(ep.module()), json.loads(extra["config.json"]), json.loads(extra["export.json"])


class ProgramModel(torch.nn.Module):
    """A one-image exported program run over a batch: ``(B, C, H, W)`` -> the program's outputs for each
    image, concatenated on dim 0 (a tensor, or a dict of tensors with the program's keys)."""

    def __init__(self, program: torch.nn.Module):
        super().__init__()
        self.program = program

    def forward(self, img: torch.Tensor):
        outs = [self.program(img[i:i + 1]) for i in range(img.shape[0])]  # each (1, K', H, W) or a dict
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return torch.cat(outs)


def _output_names(ep: torch.export.ExportedProgram) -> list[str]:
    """``["logits"]`` for a tensor output, else the keys of the output dict (the multi-task DeepLab's tasks)."""
    spec = ep.call_spec.out_spec
    return [str(k) for k in spec.context] if spec is not None and spec.type is dict else ["logits"]


def save_onnx(ep: torch.export.ExportedProgram, meta: dict, path: str | os.PathLike, cfg) -> None:
    """Write the program ``ep`` (:func:`export_model`) as an ONNX model at ``path``, through ``<path>.tmp`` and a
    rename. Input ``img`` ``(1, C, H, W)`` float32 with the program's dynamic ``H, W``; outputs named as
    :func:`_output_names`; metadata ``config.json``, ``export.json`` (``meta``) and ``outputs`` (JSON list).

    Raises:
        ImportError: naming the optional packages when ``onnx`` or ``onnxscript`` is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as e:
        raise ImportError(f"ONNX export needs the optional packages onnx and onnxscript ({e}); "
                          "pip install onnx onnxscript") from e
    names = _output_names(ep)
    program = torch.onnx.export(ep, (), dynamo=True, input_names=["img"], output_names=names, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {**_records(meta, cfg), "outputs": json.dumps(names)})
    _write_atomically(path, lambda tmp: onnx.save_model(proto, str(tmp)))


def load_onnx(path: str | os.PathLike) -> tuple["OnnxModel", dict, dict]:
    """Open an ONNX model written by :func:`save_onnx` on ONNX Runtime's CPU provider:
    ``(network, config dict, export.json dict)``; the network is an :class:`OnnxModel`.

    Raises:
        ImportError: when ``onnxruntime`` is not installed. ValueError: naming the file when ONNX Runtime cannot
        read it or it lacks iceseg's metadata.
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"running an ONNX model needs the optional package onnxruntime ({e}); "
                          "pip install onnxruntime") from e
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{path}: not an ONNX model ONNX Runtime can run ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from e
    props = session.get_modelmeta().custom_metadata_map
    if not all(k in props for k in ("config.json", "export.json", "outputs")):
        raise ValueError(f"{path}: an ONNX model without iceseg's config.json/export.json/outputs metadata "
                         "(write it with dev/export.py --format onnx)")
    return OnnxModel(session, json.loads(props["outputs"])), json.loads(props["config.json"]), \
        json.loads(props["export.json"])


class OnnxModel:
    """An ONNX Runtime session of one image run over a batch, as :class:`ProgramModel`: ``(B, C, H, W)`` float32
    tensor -> ``(B, K', H, W)`` tensor, or a dict of them keyed by the output names."""

    def __init__(self, session, names: list[str]):
        self.session, self.names = session, names

    def __call__(self, img: torch.Tensor):
        outs = [self.session.run(self.names, {"img": img[i:i + 1].detach().float().cpu().numpy()})
                for i in range(img.shape[0])]  # each: one (1, K', H, W) array per output name
        cat = [torch.cat([torch.from_numpy(o[j]) for o in outs]) for j in range(len(self.names))]
        return cat[0] if self.names == ["logits"] else dict(zip(self.names, cat, strict=True))
