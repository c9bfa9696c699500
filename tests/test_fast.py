"""iceseg.fast: every fast path gives the reference model's outputs and gradients, for every model family."""

import collections
import copy
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import configs
from iceseg.fast import (
    GatheredWindowBlock,
    InPlaceWindowAttention,
    OneDNNLinear,
    RecomputeMlp,
    autocast_weights,
    fuse_conv_bn,
    optimize,
    window_token_index,
)
from iceseg.models.swin import Mlp, SwinTransformerBlock, shift_window_mask, window_partition
from iceseg.segmentor import build_model


def _batch(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.data.in_channels, 64, 80, generator=g)
    if cfg.loss.name == "multitask":
        y = {"SIC": torch.randint(0, 11, (2, 64, 80), generator=g), "SOD": torch.randint(0, 6, (2, 64, 80), generator=g),
             "FLOE": torch.randint(0, 7, (2, 64, 80), generator=g)}
    else:
        y = torch.randint(0, cfg.data.num_classes, (2, 64, 80), generator=g)
    return x, y


@pytest.mark.parametrize("name", ["icesegnet_yrcc2_debug", "knet_yrcc2_debug", "unetpp_glacier_debug",
                                  "deeplab_autoice_debug"])
def test_optimized_model_equals_the_reference_model(name):
    cfg = configs.get_config(name)
    torch.manual_seed(0)
    ref = build_model(cfg)
    fast = optimize(copy.deepcopy(ref), recompute_min_dim=0)  # debug widths are below the default cut-off
    assert fast.state_dict().keys() == ref.state_dict().keys()
    if name.startswith(("icesegnet", "knet")):  # Swin backbone and a UPerHead: every path applies
        kinds = {type(m).__name__ for m in fast.modules()}
        assert {"OneDNNLinear", "InPlaceWindowAttention", "GatheredWindowBlock", "RecomputeMlp"} <= kinds, kinds
        assert any(k.startswith("Sliced") for k in kinds), kinds
    x, y = _batch(cfg)
    with torch.no_grad():
        for m in (ref, fast):
            m.eval()
        a, b = ref(x), fast(x)
    for u, v in zip(a.values() if isinstance(a, dict) else [a], b.values() if isinstance(b, dict) else [b], strict=True):
        torch.testing.assert_close(v, u, atol=1e-4, rtol=1e-4)  # fp32 sums in another order (K-Net golden: 1e-4)
    grads = []
    for m in (ref, fast):  # training mode: dropout / drop path drawn from the same seed
        m.train()
        torch.manual_seed(1)
        losses = m(x, y)
        sum(losses.values()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_optimized_swin_under_bf16_autocast_equals_the_reference():
    """Under autocast the in-place attention must promote the bf16 logits to fp32 before adding the bias, as the
    reference's out-of-place sum does; adding into the bf16 buffer rounds the logits and softmaxes in bf16."""
    from iceseg.models.swin import SwinTransformer, swin_tiny

    torch.manual_seed(0)
    ref = SwinTransformer(swin_tiny(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))).eval()
    with torch.no_grad():  # a bias table of the size trained ones reach (init is trunc_normal std 0.02)
        for m in ref.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_(0, 2)
    fast = optimize(copy.deepcopy(ref), linear=False, recompute_act=False)
    assert any(isinstance(m, InPlaceWindowAttention) for m in fast.modules())
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(x), fast(x)
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype
        torch.testing.assert_close(v.float(), u.float(), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["icesegnet_yrcc2_debug", "knet_yrcc2_debug", "unetpp_glacier_debug",
                                  "deeplab_autoice_debug"])
def test_autocast_weights_give_the_autocast_outputs_exactly(name):
    """Weights stored in bf16 once == fp32 weights cast by autocast on every call, bit for bit, for every family
    (inference, BN folded, as build_inference_model runs it)."""
    cfg = configs.get_config(name)
    torch.manual_seed(0)
    ref = fuse_conv_bn(optimize(build_model(cfg)).eval())
    fast = autocast_weights(copy.deepcopy(ref), torch.bfloat16)
    dtypes = collections.Counter(p.dtype for p in fast.parameters())
    assert dtypes[torch.bfloat16] > 10, dtypes
    if name.startswith(("icesegnet", "knet")):  # LayerNorms, bias tables: fp32 (BN of the CNNs is folded)
        assert dtypes[torch.float32] > 0, dtypes
    if name.startswith("knet"):  # conv_seg's weight is also the initial kernels of the kernel update
        assert fast.decode_head.kernel_generate_head.conv_seg.weight.dtype == torch.bfloat16
    x, _ = _batch(cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(x), fast(x)
    for u, v in zip(a.values() if isinstance(a, dict) else [a], b.values() if isinstance(b, dict) else [b], strict=True):
        assert u.dtype == v.dtype
        torch.testing.assert_close(v, u, atol=0, rtol=0)
    with pytest.raises(ValueError, match="eval"):
        autocast_weights(build_model(cfg), torch.bfloat16)


def test_optimize_is_idempotent_and_switchable():
    cfg = configs.get_config("icesegnet_yrcc2_debug")
    model = build_model(cfg)
    once = sorted(type(m).__name__ for m in optimize(model).modules())
    assert sorted(type(m).__name__ for m in optimize(model).modules()) == once
    plain = optimize(build_model(cfg), linear=False, attention=False, gather_windows=False, recompute_act=False,
                     fpn_bottleneck=False)
    assert not {"OneDNNLinear", "InPlaceWindowAttention", "GatheredWindowBlock", "RecomputeMlp"} & {
        type(m).__name__ for m in plain.modules()}
    assert isinstance(next(m for m in model.modules() if isinstance(m, InPlaceWindowAttention)), InPlaceWindowAttention)
    from iceseg.models.swin import SwinTransformer, swin_large
    swin = optimize(SwinTransformer(swin_large()))  # recompute_act on the MLPs of >= 768 channels only
    wide = {m.fc1.in_features for m in swin.modules() if isinstance(m, RecomputeMlp)}
    narrow = {m.fc1.in_features for m in swin.modules() if type(m).__name__ == "Mlp"}
    assert wide == {768, 1536} and narrow == {192, 384}


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize(("H", "W"), [(14, 21), (9, 16), (1, 1)])
def test_window_token_index_is_pad_shift_partition(H, W, shift):
    """The gather reads, window by window, the tokens that pad -> roll -> window_partition put there."""
    ws = 7
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    ids = torch.arange(1, H * W + 1, dtype=torch.float64).view(1, H, W, 1)  # token r*W + c holds r*W + c + 1
    padded = F.pad(ids, (0, 0, 0, Wp - W, 0, Hp - H))  # padded tokens hold 0
    expected = window_partition(torch.roll(padded, (-shift, -shift), (1, 2)), ws).reshape(-1)  # (Hp*Wp,)
    idx, inv = window_token_index(H, W, ws, shift, "cpu")
    table = torch.cat([ids.reshape(-1), torch.zeros(1, dtype=torch.float64)])  # the extra zero token last
    assert torch.equal(table[idx], expected)
    assert torch.equal(idx[inv], torch.arange(H * W))


@pytest.mark.parametrize(("H", "W", "shift"), [(14, 14, 0), (14, 14, 3), (12, 19, 0), (12, 19, 3), (3, 5, 3)])
def test_gathered_window_block_equals_the_block(H, W, shift):
    """qkv/proj on the unpadded tokens + gathers == pad, shift, partition, attention, reverse (outputs, input and
    parameter gradients), batch of 2; and the reference path with proj_drop in training."""
    torch.manual_seed(0)
    ref = SwinTransformerBlock(32, 4, 7, shift, drop_path=0.2)
    fast = copy.deepcopy(ref)
    fast.__class__ = GatheredWindowBlock
    ws = 7
    mask = shift_window_mask(-(-H // ws) * ws, -(-W // ws) * ws, ws, shift) if shift else None
    x = torch.randn(2, H, W, 32, requires_grad=True)
    results = []
    for m in (ref, fast):
        torch.manual_seed(1)  # same drop-path draws
        y = m(x, mask)
        y.pow(2).sum().backward()
        results.append((y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()}))
        x.grad = None
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx1, gx0, atol=1e-5, rtol=1e-5)
    for n, g in gp0.items():
        torch.testing.assert_close(gp1[n], g, atol=1e-5, rtol=1e-5, msg=n)
    fast.attn.proj_drop.p = 0.1  # dropout drawn over the reference's tokens: the reference path itself
    ref.attn.proj_drop.p = 0.1
    outs = []
    for m in (ref, fast):
        torch.manual_seed(2)
        outs.append(m(x, mask))
    assert torch.equal(outs[0], outs[1])


def test_onednn_linear_traces_whole_under_torch_compile():
    """Compiled inference (train.compile with test.py): dynamo traces the oneDNN linear with no graph break
    (a break in every Swin block hit dynamo's recompile limit), for two token counts, equal to F.linear."""
    torch.manual_seed(0)
    lin = OneDNNLinear(32, 48).eval()
    compiled = torch.compile(lin, backend="eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        for L in (300, 517):
            x = torch.randn(2, L, 32)
            torch.testing.assert_close(compiled(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=1e-5)


def test_onednn_linear_flops_are_counted_as_the_linear():
    """FlopCounterMode (dev/benchmark.py's FLOP column) counts the opaque oneDNN op as F.linear's product."""
    from torch.utils.flop_counter import FlopCounterMode

    lin, x = OneDNNLinear(32, 48).eval(), torch.randn(2, 300, 32)
    counts = []
    for fn in (lin, lambda t: F.linear(t, lin.weight, lin.bias)):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            fn(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 600 * 32 * 48


@pytest.mark.filterwarnings("ignore:.*context_fn is passed to torch.utils.checkpoint")
def test_recompute_mlp_traces_under_torch_compile():
    """train.compile applies torch.compile after the fast paths: dynamo must trace the selective checkpoint
    (it cannot trace a lambda as its context_fn); the eager backend traces without code generation."""
    torch.manual_seed(0)
    mlp = Mlp(16, 64).train()
    mlp.__class__ = RecomputeMlp
    x = torch.randn(2, 5, 16, requires_grad=True)
    ref = mlp(x)
    (gx,) = torch.autograd.grad(ref.sum(), x)
    torch._dynamo.reset()
    out = torch.compile(mlp, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], gx)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # emitted by mkldnn.flags() on CPU builds
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear_forward_and_backward(bias):
    """The CPU fast path (1x1 conv on oneDNN) against F.linear in inference; F.linear itself (values and
    gradients bit for bit) when autograd records, when oneDNN is off and under 256 tokens."""
    torch.manual_seed(0)
    layer = OneDNNLinear(24, 40, bias=bias)
    x = torch.randn(2, 16, 9, 24, requires_grad=True)  # 288 tokens: the oneDNN path (>= 256) in inference
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert y.shape == ref.shape == (2, 16, 9, 40) and y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y, ref_x = layer(x), x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.linear(ref_x, layer.weight, layer.bias)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [ref_x, *layer.parameters()], g)
    assert torch.equal(y, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))
    with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():  # the switch gives F.linear exactly
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    with torch.no_grad():  # and so do fewer than 256 tokens
        assert torch.equal(layer(x[:, :2]), torch.nn.functional.linear(x[:, :2], layer.weight, layer.bias))
    if torch.backends.mkldnn.is_available():  # the fast path really ran in inference only: a convolution, no matmul
        for grad_mode, want in ((False, "aten::convolution"), (True, "aten::linear")):
            with torch.set_grad_enabled(grad_mode), torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                layer(x)
            ops = {e.name for e in prof.events()}
            assert want in ops and ("aten::convolution" in ops) == (not grad_mode), ops



class _OpLog(TorchDispatchMode):
    """Count the aten ops run inside the mode, by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # emitted by mkldnn.flags() on CPU builds
@pytest.mark.parametrize("onednn", [True, False])
def test_mlp_recompute_act_frees_gelu_output_same_grads(onednn):
    """RecomputeMlp: fc2's input (dropout of the GELU) is not kept for backward, no product is recomputed, gradients
    are bit-identical (dropout too: the checkpoint replays the RNG); oneDNN conv and BLAS linear paths."""
    import weakref

    torch.manual_seed(0)
    plain = Mlp(16, 64, drop=0.2)
    for fc in (plain.fc1, plain.fc2):
        fc.__class__ = OneDNNLinear  # as optimize() leaves them; with oneDNN off it is F.linear
    sac = copy.deepcopy(plain)
    sac.__class__ = RecomputeMlp
    x = torch.randn(2, 300, 16)  # 600 tokens: the oneDNN path when enabled
    fc2_input, kept, ops, grads = {}, {}, {}, {}
    for name, m in (("plain", plain), ("sac", sac)):
        handle = m.fc2.register_forward_pre_hook(  # returns None: the input is not replaced
            lambda mod, i: fc2_input.update(ref=weakref.ref(i[0].untyped_storage())) or None)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        with torch.backends.mkldnn.flags(enabled=onednn):
            y = m(xi)
            handle.remove()
            kept[name] = fc2_input["ref"]() is not None  # fc2's (2, 300, 64) input (dropout of GELU) referenced?
            with _OpLog() as log:
                y.backward(torch.ones_like(y))
        grads[name] = [xi.grad, *(p.grad for p in m.parameters())]
        ops[name] = log.ops
    assert kept["plain"] and not kept["sac"]
    for op in ("aten.convolution.default", "aten.addmm.default", "aten.mm.default"):  # no product recomputed
        assert ops["sac"][op] == ops["plain"][op], (op, ops)
    assert ops["sac"]["aten.gelu.default"] == 1 and ops["plain"]["aten.gelu.default"] == 0  # recomputed once
    for a, b in zip(grads["plain"], grads["sac"], strict=True):
        assert torch.equal(a, b)


_STEP_FAULTS = """
import resource, sys, torch
from iceseg.fast import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():  # 64 + 16 MiB of activations, every page written, then freed (glibc maps blocks above 32 MiB alone)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(16 << 20), torch.ones(4 << 20)
    del x, y
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(applied, *[step() for _ in range(16)])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings of glibc")
def test_keep_freed_memory_reuses_the_pages_a_step_freed():
    root = Path(__file__).resolve().parents[1]
    out = {}
    for mode in ("keep", "glibc"):  # fresh processes: the setting is process-wide
        proc = subprocess.run([sys.executable, "-c", _STEP_FAULTS, mode], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(root)}, check=True)
        applied, *faults = proc.stdout.split()
        out[mode] = (applied, [int(f) for f in faults[8:]])  # the heap settles over the first steps
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")  # one step's pages
    assert min(out["glibc"][1]) > pages // 2, out  # glibc's default: every step faults its large block in again
    assert out["keep"][0] == "True" and sum(out["keep"][1]) < pages, out  # 8 steps: less than one step's pages
