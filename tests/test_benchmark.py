"""benchmarks/bench_step.py on tiny sizes: its table, its JSON and its estimate (no speed targets)."""
import json
import math

import pytest
import torch

from benchmarks import bench_step as B

TINY = ["--batch", "16", "--image-size", "8", "--test-images", "200", "--memory", "200",
        "--reps", "1", "--eval-reps", "1"]
CASES = {f"tasks{n}_r{r}" for n in (1, 5, 10) for r in (1, 2)}


def test_writes_every_key_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    B.main(TINY + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["ratio_itaml_vs_plain"]) == set(result["speedup_vs_naive"]) == CASES
    assert set(result["ratio_naive_vs_plain"]) == CASES
    for key in ("ratio_itaml_vs_plain", "speedup_vs_naive", "ratio_naive_vs_plain"):
        assert all(v > 0 and math.isfinite(v) for v in result[key].values())
    for case in CASES:  # each a median of the same repetition's ratios (one repetition here)
        assert result["ratio_naive_vs_plain"][case] == pytest.approx(
            result["ratio_itaml_vs_plain"][case] * result["speedup_vs_naive"][case])
    assert result["ratio_eval_vs_forward"] > 1  # evaluation holds at least one forward pass
    assert result["peak_rss_mb"] > 0 and result["device"].startswith("cpu")
    assert result["test_images"] == 200 and result["estimated_full_cifar100_run_hours"] > 0
    assert result["settings"]["variant"] == "paper"  # the tables' training, not the script's
    printed = capsys.readouterr().out
    assert "itaml/(r·plain)" in printed and "naive/(r·plain)" in printed and "tasks10_r2" in printed and "eval at session 9" in printed


def test_a_batch_of_n_tasks_holds_exactly_n_tasks_mostly_the_new_one():
    cfg = B.make_cfg(B.parse([]))
    g = torch.Generator().manual_seed(0)
    for tasks in (1, 5, 10):
        y = B.session_batch(cfg, tasks, 128, g)
        counts = torch.bincount(y // 10, minlength=tasks)
        assert len(y) == 128 and (counts[:tasks] > 0).all() and len(counts) == tasks
        assert counts[tasks - 1] > 128 / 2  # the new task's 5,000 images outnumber 2,000 exemplars


def test_full_run_estimate_adds_every_sessions_steps_and_evaluation():
    cfg = B.make_cfg(B.parse([]))
    med = {f"itaml_tasks{n}_r1": 1.0 for n in (1, 5, 10)}  # one second a step, whatever the tasks
    hours = B.full_run_hours(cfg, med, forward_s=10.0, eval_s=26.0, test_images=10000)
    steps = 70 * (math.ceil(5000 / 128) + 9 * math.ceil(7000 / 128))
    # session 0: one forward over its 1,000 images; session t: two over (t+1)·1,000, plus 6 s
    evaluation = 1.0 + sum(2 * (t + 1) + 6.0 for t in range(1, 10))
    assert hours == pytest.approx((steps + evaluation) / 3600)


def test_cuda_without_a_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        B.main(["--device", "cuda"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: args.gpu_data = True needs a GPU but no GPU is visible")
    assert err.count("\n") == 1
