"""benchmarks/bench_step.py on tiny sizes: its table, its JSON and its estimate (no speed targets)."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_step as B

TINY = ["--batch", "16", "--image-size", "8", "--test-images", "200", "--memory", "200",
        "--reps", "1", "--eval-reps", "1"]
CASES = {f"tasks{n}_r{r}" for n in (1, 5, 10) for r in (1, 2)}
RATIOS = ("ratio_itaml_vs_plain", "speedup_vs_naive", "ratio_naive_vs_plain",
          "ratio_batched_vs_plain", "speedup_batched_vs_loop")


def test_writes_every_key_and_prints_the_table(tmp_path, capsys):
    """Both presets timed by default, each with its ratios to a plain step; on the CPU without
    --batched no batched step is timed (its padding is what filled the machine's memory)."""
    out = tmp_path / "bench.json"
    B.main(TINY + ["--json", str(out)])
    result = json.loads(out.read_text())
    assert list(result["presets"]) == ["paper", "official"]
    for preset in ("paper", "official"):
        got = result["presets"][preset]
        assert set(got["ratio_itaml_vs_plain"]) == set(got["speedup_vs_naive"]) == CASES
        assert set(got["ratio_naive_vs_plain"]) == CASES
        assert got["ratio_batched_vs_plain"] == got["speedup_batched_vs_loop"] == {}
        for key in RATIOS[:3]:
            assert all(v > 0 and math.isfinite(v) for v in got[key].values())
        for case in CASES:
            assert got["seconds"][f"itaml_{case}"] > 0 and got["seconds"][f"naive_{case}"] > 0
        assert not any(key.startswith("itaml_batched") for key in got["seconds"])
    assert set(result["er"]["ratio_er_vs_plain"]) == {"tasks1", "tasks5", "tasks10"}
    assert all(v > 0 and math.isfinite(v) for v in result["er"]["ratio_er_vs_plain"].values())
    assert result["ratio_eval_vs_forward"] > 1  # evaluation holds at least one forward pass
    assert result["peak_rss_mb"] > 0 and result["device"].startswith("cpu")
    assert result["test_images"] == 200 and result["estimated_full_cifar100_run_hours"] > 0
    assert result["estimate_preset"] == "official"  # what train_cifar.py ships
    assert result["settings"]["presets"] == ["paper", "official"]
    assert result["settings"]["batched"] is False
    printed = capsys.readouterr().out
    for words in ("itaml/(r·plain)", "naive/(r·plain)", "tasks10_r2", "eval at session 9",
                  "official  tasks1_r1", "paper     tasks10_r2", "er        tasks5",
                  "peak resident memory"):
        assert words in printed, words


def test_batched_is_timed_when_asked_for_and_only_in_the_paper_preset(monkeypatch):
    """--batched on the CPU (a GPU times it always): the paper preset's tasks start from the base
    and run together; the official preset's start from the previous task's weights, so none is
    made there."""
    made = []
    monkeypatch.setattr(B, "bench_eval", lambda *a: (1.0, 3.0, 3.0, 200))
    real = B.MetaLearner
    monkeypatch.setattr(B, "MetaLearner", lambda m, cfg, *a: made.append(
        (cfg.variant, cfg.batched_tasks)) or real(m, cfg, *a))
    result = B.main(TINY + ["--batched", "--reps", "1"])
    paper, official = result["presets"]["paper"], result["presets"]["official"]
    assert set(paper["ratio_batched_vs_plain"]) == set(paper["speedup_batched_vs_loop"]) == CASES
    assert all(paper["seconds"][f"itaml_batched_{case}"] > 0 for case in CASES)
    assert official["ratio_batched_vs_plain"] == official["speedup_batched_vs_loop"] == {}
    assert sorted(set(made)) == [("official", False), ("paper", False), ("paper", True)]
    assert made.count(("paper", True)) == len(CASES) and result["settings"]["batched"] is True


# Seconds a step takes in each repetition on the fake clock below, before the factor r · tasks of its
# case (official's itaml step twice paper's). They move against each other, so a ratio of medians
# (4 / 2 for itaml ÷ plain) is not the median of the repetitions' ratios (8, 1, 1: median 1).
PLAIN_S = (1.0, 2.0, 4.0)
STEP_S = {"itaml": (8.0, 2.0, 4.0), "naive": (3.0, 6.0, 24.0), "itaml_batched": (1.0, 1.0, 8.0)}


def test_ratios_are_medians_of_each_repetitions_ratios(monkeypatch):
    """A clock that only the steps move, each by the seconds set above: every ratio is the median
    over the repetitions of the ratio within one, r counted, under its own case and preset, and
    the seconds are each step's median."""
    clock = [0.0]
    monkeypatch.setattr(B, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(B, "bench_eval", lambda *a: (1.0, 3.0, 3.0, 200))

    def costs(kind):
        def step(self, x, y):
            self.calls = getattr(self, "calls", -1) + 1  # call 0 is the untimed warm-up
            rep = (self.calls - 1) % len(PLAIN_S)  # the plain step's calls run on across cases
            if kind == "plain":
                clock[0] += PLAIN_S[rep]
                return None
            name = "itaml_batched" if self.cfg.batched_tasks else kind
            tasks = int(y.max()) // self.cfg.class_per_task + 1
            times = 2 if name == "itaml" and self.cfg.variant == "official" else 1
            clock[0] += self.cfg.r * tasks * times * STEP_S[name][rep]
            return torch.zeros(())
        return step
    monkeypatch.setattr(B.Plain, "step", costs("plain"))
    monkeypatch.setattr(B.MetaLearner, "meta_step", costs("itaml"))
    monkeypatch.setattr(B.NaiveMetaLearner, "meta_step", costs("naive"))
    er_calls = []

    def er_step(self, x, y):  # 1.5 plain steps of its repetition (its call 0 is the warm-up)
        er_calls.append(None)
        clock[0] += 1.5 * PLAIN_S[(len(er_calls) - 2) % len(PLAIN_S)] if len(er_calls) > 1 else 0
    monkeypatch.setattr(B.ExperienceReplay, "step", er_step)
    result = B.main(TINY + ["--reps", str(len(PLAIN_S)), "--batched"])
    assert result["seconds"]["plain"] == 2.0  # the median over every case's repetitions
    assert result["er"] == {"ratio_er_vs_plain": {f"tasks{n}": 1.5 for n in (1, 5, 10)},
                            "seconds": {f"er_tasks{n}": 3.0 for n in (1, 5, 10)}}
    for preset, times in (("paper", 1), ("official", 2)):
        got = result["presets"][preset]
        for tasks, r in ((n, r) for n in (1, 5, 10) for r in (1, 2)):
            case = f"tasks{tasks}_r{r}"
            want = {"ratio_itaml_vs_plain": tasks * times, "speedup_vs_naive": 3 / times,
                    "ratio_naive_vs_plain": 3 * tasks}
            seconds = {"itaml": 4 * times, "naive": 6}
            if preset == "paper":  # the batched step only where the tasks start from the base
                want.update(ratio_batched_vs_plain=tasks, speedup_batched_vs_loop=2)
                seconds["itaml_batched"] = 1
            assert {key: got[key][case] for key in want} == pytest.approx(want), case
            assert {kind: got["seconds"][f"{kind}_{case}"] for kind in seconds} == \
                {kind: r * tasks * s for kind, s in seconds.items()}, case


def test_one_preset_alone_and_a_wrong_one(monkeypatch, capsys):
    monkeypatch.setattr(B, "bench_eval", lambda *a: (1.0, 3.0, 3.0, 200))
    result = B.main(TINY + ["--presets", "paper"])
    assert list(result["presets"]) == ["paper"] and result["estimate_preset"] == "paper"
    with pytest.raises(SystemExit) as stop:
        B.main(TINY + ["--presets", "reptile"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: --presets 'reptile' must name paper, official or "
                                       "both.\n")


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


def test_the_end_to_end_run_writes_its_timings_and_estimate(tmp_path, capsys):
    """benchmarks/e2e_cifar.py on a tiny fake CIFAR-100 and the CPU (the GPU check runs it full)."""
    from torchvision.datasets import CIFAR100
    from benchmarks import e2e_cifar
    real = CIFAR100.train_list
    out = tmp_path / "e2e.json"
    common = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--json",
              str(out), "--per-class", "3,2", "--epochs", "1", "device=cpu", "num_workers=0",
              "train_batch=16", "test_batch=32", "adapt_batch=8", "memory=20"]
    e2e_cifar.main(common)
    result = json.loads(out.read_text())["loader"]
    assert [s["session"] for s in result["sessions"]] == [0, 1]
    assert result["device"] == "cpu" and result["wall_seconds"] > 0
    first, second = result["sessions"]
    want = (70 * (first["train_seconds"] + 9 * second["train_seconds"]) + first["eval_seconds"]
            + sum(second["eval_seconds"] * (t + 1) / 2 for t in range(1, 10))) / 60
    assert result["estimated_full_cifar100_run_minutes"] == pytest.approx(want)
    assert "estimated full CIFAR-100 run" in capsys.readouterr().out
    assert CIFAR100.train_list == real  # torchvision's checksums are put back


def test_the_gpu_summary_checks_each_target_and_names_what_is_missing(tmp_path, capsys):
    from benchmarks import gpu_summary
    (tmp_path / "device.json").write_text(json.dumps({"line": "NVIDIA H100, torch 2.11"}))
    (tmp_path / "test_cuda.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="9" failures="1" errors="0" skipped="0">'
        '<testcase name="test_a"/><testcase name="test_b"><failure message="x"/></testcase>'
        '</testsuite></testsuites>')
    bench = {"presets": {
        "paper": {"ratio_itaml_vs_plain": {"tasks10_r1": 4.0}, "speedup_vs_naive": {"tasks10_r1": 2.0},
                  "ratio_batched_vs_plain": {"tasks10_r1": 1.2}},
        "official": {"ratio_itaml_vs_plain": {"tasks10_r1": 5.5},
                     "speedup_vs_naive": {"tasks10_r1": 1.5}}},
        "ratio_eval_vs_forward": 3.5, "seconds": {"plain": 0.004},
        "estimated_full_cifar100_run_hours": 0.25}
    (tmp_path / "bench_fp32.json").write_text(json.dumps(bench))
    (tmp_path / "e2e.json").write_text(json.dumps({"gpu_data": {
        "wall_seconds": 20.0, "estimated_full_cifar100_run_minutes": 18.0,
        "sessions": [{"train_seconds": 5.0, "eval_seconds": 1.0}]}}))
    gpu_summary.main([str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tests"]["passed"] == 8 and summary["tests"]["failed"] == ["test_b"]
    checks = {name: (t["measured"], t["holds"]) for name, t in summary["targets"].items()}
    assert checks == {"batched 10-task step ÷ plain step (fp32)": (1.2, True),
                      "evaluation at session 9 ÷ one forward pass": (3.5, False),
                      "full CIFAR-100 run, minutes": (18.0, True)}
    text = (tmp_path / "summary.md").read_text()
    assert "Device: NVIDIA H100, torch 2.11" in text and "(failed: test_b)" in text
    assert "| amp | missing |" in text and "| compile | missing |" in text
    assert "| evaluation at session 9 ÷ one forward pass | ≤ 3.0 | 3.50 | **no** |" in text
    assert "| fp32 | 4.00 / 5.50 | 1.20 | 2.00 / 1.50 | 3.50 | 0.0040 | 15.0 |" in text
