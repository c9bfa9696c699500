"""benchmark.py --quick without reference libraries writes a JSON report with the documented fields.

No timing assertions: only the structure and the sanity of the numbers are checked.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "dev"))
import benchmark  # noqa: E402


def test_quick_json_fields(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(["--quick", "--no-ref", "--cases", "matmul,matmul_onednn,distance_maps,unetpp_infer_512",
                    "--repeats", "2", "--mem-passes", "2", "--mem-procs", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["threads"] == 2 and machine["dtype"] == "float32" and machine["quick"] is True
    assert machine["matmul_gflops_per_s"] > 0 and machine["onednn_gflops_per_s"] > 0
    assert [c["case"] for c in report["cases"]] == ["matmul", "matmul_onednn", "distance_maps", "unetpp_infer_512"]
    for case in report["cases"]:
        assert "error" not in case, case
        assert case["refs_found"] == {} and case["ratios"] == {}
        ours = case["impls"]["ours"]
        for key in ("median_s", "images_per_s", "peak_mem_mib", "flops", "gflops_per_s", "times_s"):
            assert key in ours, (case["case"], key)
        assert len(ours["times_s"]) == 2 and ours["median_s"] > 0
        procs = ours["peak_mem_procs_mib"]  # two memory processes of two passes each, median of their maxima
        assert len(procs) == 2 and [max(p) for p in ours["peak_mem_passes_mib"]] == procs
        assert ours["peak_mem_mib"] == pytest.approx(sum(procs) / 2)
        assert ours["images_per_s"] == pytest.approx(case["batch"] / ours["median_s"])
    unetpp = report["cases"][3]["impls"]["ours"]
    assert unetpp["flops"] > 1e9 and 0 < unetpp["fraction_of_matmul"]  # a 5-band 64x64 U-Net++ R34 pass
    assert 0 < unetpp["fraction_of_onednn"]
    assert report["cases"][0]["impls"]["ours"]["flops"] == report["cases"][1]["impls"]["ours"]["flops"] == 2 * 2048**3
    assert report["cases"][3]["impls"]["ours"]["peak_mem_mib"] > 1  # a 64x64 R34 pass maps at least 1 MiB
    table = capsys.readouterr().out
    assert "unetpp_infer_512" in table and "GFLOP/s" in table


def test_unknown_case_raises():
    with pytest.raises(ValueError, match="unknown"):
        benchmark.main(["--cases", "nope"])


def test_amp_run_with_fp32_rows(tmp_path, capsys):
    """``--amp bf16 --vs-fp32``: ours under autocast and ours in fp32 as the ``fp32`` row of the same run."""
    out = tmp_path / "bench.json"
    benchmark.main(["--quick", "--no-ref", "--amp", "bf16", "--vs-fp32", "--cases", "unetpp_infer_512",
                    "--repeats", "1", "--mem-procs", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["amp"] == "bf16" and report["machine"]["vs_fp32"] is True
    case = report["cases"][0]
    assert set(case["impls"]) == {"ours", "fp32"}, case["impls"]
    ours, fp32 = case["impls"]["ours"], case["impls"]["fp32"]
    assert fp32["median_s"] > 0 and fp32["peak_mem_mib"] > 0
    assert case["ratios"]["fp32"]["time"] == pytest.approx(ours["median_s"] / fp32["median_s"])
    assert "bf16 speed-up over our fp32" in capsys.readouterr().out


def test_train_step_runs_with_the_configs_malloc(tmp_path):
    """``--malloc as-run``: our train step as train.py runs it (``train.malloc="keep"``); ``glibc``: defaults."""
    seen = {}
    for mode in ("as-run", "glibc"):
        out = tmp_path / f"{mode}.json"
        benchmark.main(["--quick", "--no-ref", "--malloc", mode, "--cases", "unetpp_train_512", "--repeats", "1",
                        "--mem-procs", "1", "--json", str(out)])
        report = json.loads(out.read_text())
        assert report["machine"]["malloc"] == mode
        seen[mode] = report["cases"][0]["impls"]["ours"]["malloc"]
    keep = "keep" if benchmark.platform.libc_ver()[0] == "glibc" else "glibc"  # mallopt exists in glibc only
    assert seen == {"as-run": keep, "glibc": "glibc"}
