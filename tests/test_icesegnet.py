"""IceSegNet and the K-Net baseline: parameter counts, mmseg K-Net golden parity, hand-computed SCA / SEFPN /
DWS references, edge modes, checkpoint loading, configs and the train/test scripts.

The golden file is written by dev/make_golden_knet.py (mmseg 1.2.2); weights are regenerated here from its
key names with tests/golden.py, so mmseg is not needed.
"""

import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import configs
from iceseg.losses import edge_target
from iceseg.models import knet, sefpn, uper
from iceseg.models.sefpn import SEFPN
from iceseg.models.swin import swin_tiny
from iceseg.models.uper import DepthwiseSeparableConv, SpatialCrossAttention, UPerSCAMTLHead
from iceseg.segmentor import EncoderDecoder, build_model, convert_mmseg_segmentor, load_segmentor_checkpoint
from tests import golden as _golden
from tests.conftest import assert_scores_equal_validation, run_script

ASSETS = Path(__file__).parent / "assets"

torch.set_num_threads(2)


def _count(model, prefix=""):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def _full_config(name, num_classes=4):
    cfg = configs.get_config(name)
    cfg.model.num_classes = cfg.data.num_classes = num_classes
    return cfg


def test_parameter_counts_match_the_paper_on_meta():
    with torch.device("meta"):
        ice, kn = build_model(_full_config("icesegnet_yrcc2")), build_model(_full_config("knet_yrcc2"))
    assert _count(ice) == 250_909_200  # trainable during training (spec §7)
    assert _count(ice) - _count(ice, "auxiliary_head") == 246_778_380  # inference graph, "247 M"
    assert _count(kn) - _count(kn, "auxiliary_head") == 245_088_408  # stock K-Net Swin-L, "245 M"
    assert _count(ice, "neck") == 23_457_792 and _count(ice, "auxiliary_head") == 4_130_820
    gen = "decode_head.kernel_generate_head."
    assert [_count(ice, gen + p) for p in ("psp_modules", "bottleneck", "lateral_convs", "fpn_convs.", "pea_layers",
                                           "fpn_bottleneck", "conv_seg", "multi_task_head")] == [
        1_576_960, 12_977_152, 1_189_632, 806_400, 99_936, 1_072_128, 2_052, 10_260]
    assert [_count(ice, f"decode_head.kernel_update_head.{i}") for i in range(3)] == [4_403_968, 3_354_368, 2_829_568]
    ffn = [_count(m, f"decode_head.kernel_update_head.{i}.ffn.") for m in (ice, kn) for i in range(3)]
    assert 1 - sum(ffn[:3]) / sum(ffn[3:]) == pytest.approx(0.4166, abs=1e-4)  # "-41.7 % FFN parameters"


@pytest.fixture(scope="module")
def knet_asset():
    return torch.load(ASSETS / "knet_mmseg.pt", map_location="cpu", weights_only=True)


def _knet_swin_t(tmp_path, asset):
    """Our ``knet`` model with a Swin-T backbone, loaded from an mmseg-layout file through ``model.pretrained``."""
    sd = _golden.seeded_state_dict(asset["ref_shapes"])
    sd = {k: v * asset["fc_mask_scale"] if k.endswith("fc_mask.weight") else v for k, v in sd.items()}  # as the script
    path = tmp_path / "knet_mmseg_layout.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    cfg = configs.get_config("knet_yrcc2")
    cfg.model.arch.backbone = swin_tiny(drop_path_rate=0.3)
    cfg.model.pretrained = str(path)
    return build_model(cfg), sd


def test_knet_matches_mmseg_golden_through_the_key_layout(tmp_path, knet_asset):
    model, sd = _knet_swin_t(tmp_path, knet_asset)
    assert set(convert_mmseg_segmentor(sd)) == set(model.state_dict())  # every mmseg key consumed, none missing
    x = knet_asset["input_u8"].float() / 64 - 2
    stride = knet_asset["output_stride"]
    model.eval()
    s3 = []
    hook = model.decode_head.register_forward_hook(lambda m, i, o: s3.append(o))  # last stage at 1/4 resolution
    with torch.no_grad():
        out = model(x)
    hook.remove()
    s3 = s3[0]
    assert tuple(out.shape) == tuple(knet_asset["eval_shape"]) == (2, 4, 65, 83)
    torch.testing.assert_close(out.flatten()[::stride], knet_asset["eval_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(s3, knet_asset["eval_s3"], atol=1e-4, rtol=0)
    with torch.no_grad():  # float64: the implementations agree far beyond float32 rounding (~1e-5 here)
        out64 = model.double()(x.double())
    torch.testing.assert_close(out64.flatten()[::stride], knet_asset["eval_logits_f64"], atol=1e-9, rtol=0)
    print(f"K-Net golden max|diff|: fp32 {(out.flatten()[::stride] - knet_asset['eval_logits']).abs().max():.1e}, "
          f"fp64 {(out64.flatten()[::stride] - knet_asset['eval_logits_f64']).abs().max():.1e}")

    model.float().train()
    model.backbone.eval()  # as the dev script: no drop-path, Dropout2d off, BN on batch statistics
    model.decode_head.kernel_generate_head.dropout.p = model.auxiliary_head.dropout.p = 0.0
    with torch.no_grad():
        losses = {k: v.item() for k, v in model(x, knet_asset["label"].long()).items()}
    assert losses == pytest.approx(knet_asset["train_losses"], abs=1e-5)  # decode.loss_ce.s0..s3 (x1.0), aux (x0.4)


def test_sca_gate_hand_computed():
    sca = SpatialCrossAttention(16)  # mid channels max(8, 16 // 16) = 8
    assert sca.conv1.out_channels == 8 and SpatialCrossAttention(512).conv1.out_channels == 32
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():  # zero weights: each gate is sigmoid(b2) per channel, so out = x * sigmoid(b2)^2
        for p in sca.parameters():
            p.zero_()
        sca.conv2.bias[:2] = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 1/2 and 3/4
        out = sca(x)
    torch.testing.assert_close(out[:, 0], x[:, 0] / 4)
    torch.testing.assert_close(out[:, 1], x[:, 1] * 9 / 16)

    sca = SpatialCrossAttention(16)
    W1, b1 = sca.conv1.weight[:, :, 0, 0], sca.conv1.bias
    W2, b2 = sca.conv2.weight[:, :, 0, 0], sca.conv2.bias

    def gate(v):  # (16,) descriptor -> (16,) weights, written as plain matrix-vector products
        return torch.sigmoid(W2 @ torch.relu(W1 @ v + b1) + b2)

    want = torch.empty_like(x)
    for b in range(2):
        rows = [gate(x[b, :, h, :].mean(dim=1)) for h in range(3)]  # mean over the width
        cols = [gate(x[b, :, :, w].mean(dim=1)) for w in range(5)]  # mean over the height
        for h in range(3):
            for w in range(5):
                want[b, :, h, w] = x[b, :, h, w] * rows[h] * cols[w]
    with torch.no_grad():
        torch.testing.assert_close(sca(x), want.detach())


def _set_bn(bn, mean, var, weight, bias):
    bn.running_mean.copy_(torch.tensor(mean)), bn.running_var.copy_(torch.tensor(var))
    bn.weight.copy_(torch.tensor(weight)), bn.bias.copy_(torch.tensor(bias))


def test_dws_block_hand_computed():
    dws = DepthwiseSeparableConv(2, 1, kernel_size=1).eval()
    assert dws.depthwise_conv.conv.bias is None and dws.depthwise_conv.conv.groups == 2
    eps = 1e-5
    with torch.no_grad():
        dws.depthwise_conv.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        _set_bn(dws.depthwise_conv.bn, [1.0, 0.0], [4.0 - eps, 1.0 - eps], [1.0, 1.0], [0.0, 0.5])
        dws.pointwise_conv.conv.weight.copy_(torch.tensor([0.5, 3.0]).view(1, 2, 1, 1))
        _set_bn(dws.pointwise_conv.bn, [0.0], [1.0 - eps], [2.0], [-1.0])
        x = torch.tensor([[[[1.0, -2.0, 3.0]], [[3.0, -4.0, 0.25]]]])  # (1, 2, 1, 3)
        out = dws(x)
    # depthwise: ch0 2x = [2, -4, 6] -> (v - 1) / 2 = [0.5, -2.5, 2.5] -> relu [0.5, 0, 2.5]
    #            ch1 -x = [-3, 4, -0.25] -> v + 0.5 = [-2.5, 4.5, 0.25] -> relu [0, 4.5, 0.25]
    # pointwise: 0.5 ch0 + 3 ch1 = [0.25, 13.5, 2.0] -> 2 v - 1 = [-0.5, 26, 3] -> relu [0, 26, 3]
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 26.0, 3.0]]]]))

    dws3 = DepthwiseSeparableConv(3, 4, kernel_size=3, padding=1).eval()  # k=3: compare with explicit loops
    x = torch.randn(1, 3, 4, 5)
    w, xp = dws3.depthwise_conv.conv.weight, F.pad(x, (1, 1, 1, 1))
    dw = torch.zeros(1, 3, 4, 5)
    for c in range(3):
        for i in range(4):
            for j in range(5):
                dw[0, c, i, j] = (xp[0, c, i:i + 3, j:j + 3] * w[c, 0]).sum()
    bn = dws3.depthwise_conv.bn
    dw = torch.relu((dw - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + eps))
    pw = torch.einsum("oc,bchw->bohw", dws3.pointwise_conv.conv.weight[:, :, 0, 0], dw)
    with torch.no_grad():
        torch.testing.assert_close(dws3(x), torch.relu(pw / math.sqrt(1 + eps)).detach(), atol=1e-5, rtol=1e-5)


def test_sefpn_hand_computed():
    neck = SEFPN([1, 2], out_channels=1).eval()
    eps = 1e-5
    with torch.no_grad():
        neck.lateral_convs[0].conv.weight.fill_(2.0), neck.lateral_convs[0].conv.bias.fill_(1.0)
        neck.lateral_convs[1].conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        neck.lateral_convs[1].conv.bias.fill_(0.0)
        for i in range(2):
            k = torch.zeros(1, 1, 3, 3)
            k[0, 0, 1, 1], k[0, 0, 1, 2] = 1.0, 1.0  # out(y, x) = L(y, x) + L(y, x + 1) (zero padded)
            neck.fpn_convs[i][0].conv.weight.copy_(k)
            neck.fpn_convs[i][0].conv.bias.fill_([-1.0, 5.0][i])
            _set_bn(neck.fpn_convs[i][1], [0.0], [1.0 - eps], [1.0], [0.0])
        x0 = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]]])  # (1, 1, 3, 3)
        x1 = torch.tensor([[[[5.0, 1.0], [2.0, 3.0]], [[1.0, 4.0], [0.0, 6.0]]]])  # (1, 2, 2, 2)
        out0, out1 = neck([x0, x1])
    # level 1 lateral: ch0 - ch1 = [[4, -3], [2, -3]]; out1 = relu(L + L shifted left + 5)
    torch.testing.assert_close(out1, torch.tensor([[[[6.0, 2.0], [4.0, 2.0]]]]))
    # level 0 lateral: 2 x0 + 1 + nearest(L1: 2x2 -> 3x3, source index floor(i * 2 / 3) = 0, 0, 1)
    up = torch.tensor([[4.0, 4.0, -3.0], [4.0, 4.0, -3.0], [2.0, 2.0, -3.0]])
    lat0 = 2 * x0[0, 0] + 1 + up  # [[5, 7, 2], [11, 13, 8], [15, 17, 14]]
    want0 = torch.relu(lat0 + F.pad(lat0[:, 1:], (0, 1)) - 1)
    torch.testing.assert_close(out0[0, 0], want0)
    assert want0.tolist() == [[11.0, 8.0, 1.0], [23.0, 20.0, 7.0], [31.0, 30.0, 13.0]]


def test_uper_sca_mtl_keys_follow_the_mmseg_layout():
    with torch.device("meta"):
        head = UPerSCAMTLHead([768] * 4, 512, 4)
    keys = set(head.state_dict())
    for k in ("psp_modules.3.1.conv.weight", "psp_modules.0.1.bn.running_var", "bottleneck.conv.weight",
              "lateral_convs.2.depthwise_conv.conv.weight", "lateral_convs.0.pointwise_conv.bn.num_batches_tracked",
              "fpn_convs.1.depthwise_conv.bn.weight", "pea_layers.2.conv1.bias", "pea_layers.0.conv2.weight",
              "fpn_bottleneck.pointwise_conv.conv.weight", "conv_seg.bias",
              "multi_task_head.segmentation_head.weight", "multi_task_head.edge_detection_head.bias"):
        assert k in keys, k
    assert head.lateral_convs[0].depthwise_conv.conv.kernel_size == (1, 1)
    assert head.fpn_bottleneck.depthwise_conv.conv.kernel_size == (3, 3) and head.bottleneck.conv.kernel_size == (3, 3)
    assert head.multi_task_head.segmentation_head.out_channels == 19 and len(head.pea_layers) == 3
    with torch.device("meta"):
        stage = knet.KernelUpdateHead(512, 16, 2048)
    assert {"attention.attn.in_proj_weight", "attention.attn.out_proj.bias", "kernel_update_conv.input_norm_out.weight",
            "feat_transform.conv.bias", "ffn.layers.0.0.weight", "ffn.layers.1.bias", "mask_fcs.0.weight",
            "mask_fcs.1.bias", "fc_mask.weight"} <= set(stage.state_dict())
    assert "mask_fcs.0.bias" not in stage.state_dict()


def test_copied_conv_module_matches_its_source():
    src = inspect.getsource(uper.ConvModule)
    for mod in (sefpn, knet):
        text = inspect.getsource(mod)
        assert "# Copied from iceseg.models.uper.ConvModule\n" + src in text, mod.__name__


def test_edge_target_hand_computed():
    label = torch.tensor([[[0, 0, 1, 1],
                           [0, 0, 1, 255],
                           [2, 2, 1, 1]]])
    edge, valid = edge_target(label)
    assert edge[0].int().tolist() == [[0, 1, 1, 1],
                                      [1, 1, 1, 1],
                                      [1, 1, 1, 1]]
    assert valid[0].int().tolist() == [[1, 1, 1, 0],
                                       [1, 1, 0, 0],
                                       [1, 1, 1, 0]]


def _debug_model(name="icesegnet_yrcc2_debug", **arch):
    cfg = configs.get_config(name)
    cfg.model.arch = dataclasses.replace(cfg.model.arch, **arch)
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _deterministic_train(model):
    model.train()
    model.backbone.eval()
    model.decode_head.kernel_generate_head.dropout.p = model.auxiliary_head.dropout.p = 0.0
    return model


def test_edge_modes_published_and_paper():
    x, y = torch.randn(2, 3, 64, 80), torch.randint(0, 4, (2, 64, 80))
    y[:, :5] = 255
    pub, _ = _debug_model()
    losses = _deterministic_train(pub)(x, y)
    assert sorted(losses) == ["aux.loss_ce", *[f"decode.loss_ce.s{i}" for i in range(4)]]
    sum(losses.values()).backward()
    mt = pub.decode_head.kernel_generate_head.multi_task_head
    assert all(p.grad is None for p in mt.parameters())  # built, never trained (the authors' code)
    assert pub.decode_head.kernel_generate_head.conv_seg.weight.grad.abs().sum() > 0

    paper, _ = _debug_model(edge_mode="paper")
    paper.load_state_dict(pub.state_dict())
    losses = _deterministic_train(paper)(x, y)
    sum(losses.values()).backward()
    with torch.no_grad():
        _, edge = paper.decode_head(paper.extract_feat(x), return_edge=True)
    z = F.interpolate(edge, size=y.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    t, valid = edge_target(y)
    want = (F.softplus(z) - t * z)[valid].mean()  # BCE with logits over valid pixels
    torch.testing.assert_close(losses["decode.loss_edge"].detach(), 0.1 * want)
    assert mt.edge_detection_head.weight.grad is None  # pub's head untouched
    paper_mt = paper.decode_head.kernel_generate_head.multi_task_head
    assert paper_mt.edge_detection_head.weight.grad.abs().sum() > 0 and paper_mt.segmentation_head.weight.grad is None
    with pytest.raises(ValueError, match="edge_mode"):
        _debug_model(edge_mode="both")
    with pytest.raises(ValueError, match="return_edge"):
        EncoderDecoder(paper.backbone, paper.decode_head.kernel_generate_head, edge_mode="paper")


def test_stage_and_aux_loss_weights():
    x, y = torch.randn(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    unit, _ = _debug_model(decode_loss_weight=1.0, aux_loss_weight=1.0)
    default, cfg = _debug_model()
    default.load_state_dict(unit.state_dict())
    with torch.no_grad():
        a, b = _deterministic_train(unit)(x, y), _deterministic_train(default)(x, y)
    for k in a:
        torch.testing.assert_close(b[k], a[k] * (0.5 if k.startswith("aux") else 0.9))
    with pytest.raises(TypeError, match="nope"):
        _debug_model(nope=1)


@pytest.mark.parametrize("name", ["icesegnet_yrcc2_debug", "icesegnet_yrcc_ex_debug", "knet_yrcc2_debug"])
def test_debug_models_train_step_and_eval_shape(name):
    model, cfg = _debug_model(name)
    model.train()
    x, y = torch.randn(2, 3, 96, 96), torch.randint(0, cfg.model.num_classes, (2, 96, 96))
    loss = sum(model(x, y).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        a, b = model(torch.ones(1, 3, 70, 90)), model(torch.ones(1, 3, 70, 90))
    assert a.shape == (1, cfg.model.num_classes, 70, 90) and torch.equal(a, b)


def test_backbone_checkpoint_loads_through_pretrained(tmp_path):
    src, cfg = _debug_model()
    torch.save({"model": src.backbone.state_dict()}, tmp_path / "swin.pth")  # official-layout Swin keys
    fresh, _ = _debug_model()
    torch.manual_seed(1)
    other = build_model(cfg)
    assert load_segmentor_checkpoint(other, str(tmp_path / "swin.pth")) == "backbone"
    assert all(torch.equal(a, b) for a, b in zip(other.backbone.state_dict().values(),
                                                 src.backbone.state_dict().values(), strict=True))
    assert not torch.equal(other.neck.lateral_convs[0].conv.weight, src.neck.lateral_convs[0].conv.weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_segmentor_checkpoint(fresh, str(tmp_path / "missing.pth"))


def test_missing_dataset_stops_before_the_model_with_a_helpful_message(tmp_path):
    root = tmp_path / "NWPU_YRCC2"
    proc = run_script(["train.py", "--config", "icesegnet_yrcc2", f"--data.root={root}"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    for needle in (str(root / "train"), "train_labels", "val_labels", "1..4", "Baidu", "--config demo"):
        assert needle in proc.stderr, needle
    assert "parameters" not in proc.stdout  # stopped before building the 247 M model


def test_debug_config_torchrun_two_processes_then_test_tta(tmp_path):
    wd = tmp_path / "work_dirs/icesegnet_yrcc2_debug"
    proc = run_script(["train.py", "--config", "icesegnet_yrcc2_debug"], cwd=tmp_path, nproc=2)
    assert "2 process(es) on cpu" in proc.stdout and "mIoU" in proc.stdout and (wd / "best.pt").is_file()
    rows = [json.loads(x) for x in (wd / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    assert len(train) == 4 and all(math.isfinite(r["decode.loss_ce.s3"]) for r in train)
    run_script(["test.py", "--config", "icesegnet_yrcc2_debug", "--checkpoint", str(wd / "best.pt"),
                "--out", str(tmp_path / "plain.json")], cwd=tmp_path, threads=1)  # one process, training's threads
    assert_scores_equal_validation(wd, json.loads((tmp_path / "plain.json").read_text()))
    proc = run_script(["test.py", "--config", "icesegnet_yrcc2_debug", "--checkpoint", str(wd / "best.pt"), "--tta",
                       "--out", str(tmp_path / "metrics.json")], cwd=tmp_path)
    assert "TTA 4 views" in proc.stdout and "streaming" in proc.stdout
    assert "validation in train.py ran with 1 CPU thread(s) per process, this run with 2" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tta"] and len(metrics["IoU"]) == 4 and 0 <= metrics["mIoU"] <= 100
