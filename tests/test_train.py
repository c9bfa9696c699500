"""train.py / test.py smoke tests on debug configs: world size 1 and 2 (gloo), exact resume, outputs."""

import json

import pytest
import torch

from tests.conftest import assert_scores_equal_validation, run_script


def _losses(work_dir):
    rows = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in rows if r["event"] == "train"}


def _glacier_args(work_dir, *extra):
    return ["train.py", "--config", "unetpp_glacier_debug", f"--train.work_dir={work_dir}",
            f"--data.root={work_dir.parent / 'glacier_data'}", "--train.log_interval=1", *extra]


@pytest.mark.parametrize("accum", [1, 3])  # 3: 4 batches per epoch is not a whole number of steps
def test_train_resume_mid_epoch_is_exact_and_outputs_are_complete(tmp_path, accum):
    full, part = tmp_path / "full", tmp_path / "part"
    it_args = ["--train.max_epochs=0", "--train.val_interval=100", "--train.ckpt_interval=3",
               f"--train.accum_steps={accum}"]
    run_script(_glacier_args(full, *it_args, "--train.max_iters=6"), cwd=tmp_path)
    run_script(_glacier_args(part, *it_args, "--train.max_iters=3"), cwd=tmp_path)  # "killed" after iteration 3
    proc = run_script(_glacier_args(part, *it_args, "--train.max_iters=6"), cwd=tmp_path)
    assert "resumed from" in proc.stdout and "at iteration 3" in proc.stdout
    a, b = _losses(full), _losses(part)
    assert sorted(a) == [1, 2, 3, 4, 5, 6] and sorted(b) == [1, 2, 3, 4, 5, 6]
    for it in (4, 5, 6):  # iteration 4 starts mid-epoch (4 iterations per epoch): sampler position restored
        assert a[it] == b[it], (it, a[it], b[it])
    if accum > 1:
        assert "each epoch uses 3 of its 4 batches per process (1 step(s) of 3 accumulated batches" in proc.stdout
    ckpt = torch.load(full / "last.pt", weights_only=True)
    assert ckpt["iter"] == 6 and ckpt["config"]["name"] == "unetpp_glacier_debug"
    assert all(g["fused"] for g in ckpt["optimizer"]["param_groups"])  # optim.fused (default) reached AdamW
    assert ckpt["config"]["train"]["channels_last"] and ckpt["model"]["net.encoder.conv1.weight"].is_contiguous(
        memory_format=torch.channels_last)  # ran channels-last, as the U-Net++ configs ask
    assert json.loads((full / "config.json").read_text())["train"]["max_iters"] == 6
    events = [json.loads(x)["event"] for x in (full / "log.jsonl").read_text().splitlines()]
    assert events.count("val") == 1 and (full / "best.pt").is_file()


def test_torchrun_two_gloo_processes_then_resume_and_test_script(tmp_path):
    wd = tmp_path / "run"
    proc = run_script(_glacier_args(wd, "--train.max_epochs=1"), cwd=tmp_path, nproc=2)
    assert "2 process(es) on cpu" in proc.stdout and "MCC" in proc.stdout
    assert "eta" in proc.stdout and (wd / "best.pt").is_file()
    proc = run_script(_glacier_args(wd, "--train.max_epochs=2"), cwd=tmp_path, nproc=2)
    assert "resumed from" in proc.stdout
    assert torch.load(wd / "last.pt", weights_only=True)["epoch"] == 2

    vis = tmp_path / "vis"
    run_script(["test.py", "--config", "unetpp_glacier_debug", "--checkpoint", str(wd / "best.pt"),
                f"--data.root={tmp_path / 'glacier_data'}", "--out", str(tmp_path / "plain.json")], cwd=tmp_path,
               threads=1)  # one process, each training rank's thread count
    assert_scores_equal_validation(wd, json.loads((tmp_path / "plain.json").read_text()))  # BN of rank 0 scored
    proc = run_script(["test.py", "--config", "unetpp_glacier_debug", "--checkpoint", str(wd / "best.pt"),
                       f"--data.root={tmp_path / 'glacier_data'}", "--show-dir", str(vis), "--tta",
                       "--out", str(tmp_path / "metrics.json")], cwd=tmp_path)
    assert "glacier" in proc.stdout and "mIoU" in proc.stdout and "TTA 4 views" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 100 and -1 <= metrics["MCC"] <= 1 and len(metrics["IoU"]) == 2
    assert len(list(vis.glob("*_pred.png"))) == 3 and len(list(vis.glob("*_overlay.png"))) == 3


def test_demo_generates_its_data_and_writes_best(tmp_path):
    proc = run_script(["train.py", "--config", "demo", "--train.max_iters=2", "--train.log_interval=1",
                       "--data.num_workers=0", "--data.batch_size=2"], cwd=tmp_path)
    assert (tmp_path / "work_dirs/demo/data/train_labels").is_dir()
    assert "mIoU" in proc.stdout and (tmp_path / "work_dirs/demo/best.pt").is_file()


@pytest.mark.parametrize("args,msg", [
    (["--config", "nope"], "unknown config 'nope'"),
    (["--config", "demo", "--optim.lrr=1"], "Did you mean lr"),
    (["--config", "demo", "--train.max_iters=abc"], "expected int"),
])
def test_train_rejects_bad_config_with_clear_message(tmp_path, args, msg):
    proc = run_script(["train.py", *args], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and msg in proc.stderr
