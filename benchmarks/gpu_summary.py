"""The summary of ``benchmarks/gpu_check.sh``: one table of what ran on the GPU, against the targets.

    python3 benchmarks/gpu_summary.py OUTDIR

Reads what the check left in OUTDIR (test_cuda.xml, bench_fp32.json, bench_amp.json,
bench_compile.json, e2e.json, device.json) and writes summary.md and summary.json there. A step that
left nothing is reported as missing rather than guessed.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

BENCHES = ("fp32", "amp", "compile")
CASE = "tasks10_r1"  # the targets' case: ten tasks in the batch, one inner step
TARGETS = {"batched 10-task step ÷ plain step (fp32)": 1.5,
           "evaluation at session 9 ÷ one forward pass": 3.0,
           "full CIFAR-100 run, minutes": 20.0}


def read_json(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def test_results(folder):
    """Counts and failing tests of the pytest run, from its JUnit XML."""
    path = os.path.join(folder, "test_cuda.xml")
    if not os.path.exists(path):
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
            - counts["skipped"], "failed": failed}


def preset(bench, name):
    """One preset's part of a bench_step.py result ({} where it was not timed)."""
    return ((bench or {}).get("presets") or {}).get(name) or {}


def targets(benches, e2e):
    """Each target's measured value (None where the step left nothing) and whether it holds."""
    fp32 = benches.get("fp32") or {}
    batched = (preset(fp32, "paper").get("ratio_batched_vs_plain") or {}).get(CASE)
    estimates = [e["estimated_full_cifar100_run_minutes"] for e in (e2e or {}).values()]
    measured = {"batched 10-task step ÷ plain step (fp32)": batched,
                "evaluation at session 9 ÷ one forward pass": fp32.get("ratio_eval_vs_forward"),
                "full CIFAR-100 run, minutes": min(estimates) if estimates else None}
    return {name: {"target": limit, "measured": measured[name],
                   "holds": None if measured[name] is None else measured[name] <= limit}
            for name, limit in TARGETS.items()}


def _num(v, digits=2):
    return "missing" if v is None else f"{v:.{digits}f}"


def markdown(device, tests, benches, e2e, checked):
    lines = ["# GPU check", "", f"Device: {device or 'missing'}", ""]
    if tests is None:
        lines += ["tests/test_cuda.py: missing (the step did not finish)", ""]
    else:
        lines += [f"tests/test_cuda.py: {tests['passed']} passed, {tests['failures']} failed, "
                  f"{tests['errors']} errors, {tests['skipped']} skipped"
                  + (f" (failed: {', '.join(tests['failed'])})" if tests["failed"] else ""), ""]
    lines += ["| benchmark | itaml/(r·plain), 10 tasks r = 1: paper / official | "
              "batched/(r·plain), paper | naive/itaml, paper / official | eval ÷ forward | "
              "plain step s | estimated full run, min |", "|---|---|---|---|---|---|---|"]
    for name in BENCHES:
        b = benches.get(name)
        if b is None:
            lines.append(f"| {name} | missing | | | | | |")
            continue
        paper, official = preset(b, "paper"), preset(b, "official")

        def at(part, key):
            return (part.get(key) or {}).get(CASE)
        lines.append(
            f"| {name} | {_num(at(paper, 'ratio_itaml_vs_plain'))} / "
            f"{_num(at(official, 'ratio_itaml_vs_plain'))} | "
            f"{_num(at(paper, 'ratio_batched_vs_plain'))} | "
            f"{_num(at(paper, 'speedup_vs_naive'))} / {_num(at(official, 'speedup_vs_naive'))} | "
            f"{_num(b['ratio_eval_vs_forward'])} | {_num(b['seconds']['plain'], 4)} | "
            f"{_num(b['estimated_full_cifar100_run_hours'] * 60, 1)} |")
    lines += ["", "| end to end (2 sessions × 2 epochs, fake CIFAR-100) | wall s | train s, session 1 "
              "| eval s, session 1 | estimated full run, min |", "|---|---|---|---|---|"]
    for name, e in (e2e or {}).items():
        second = e["sessions"][-1]
        lines.append(f"| {name} | {e['wall_seconds']:.1f} | {second['train_seconds']:.1f} | "
                     f"{second['eval_seconds']:.1f} | {e['estimated_full_cifar100_run_minutes']:.1f} |")
    if not e2e:
        lines.append("| missing | | | | |")
    lines += ["", "| target | limit | measured | holds |", "|---|---|---|---|"]
    for name, t in checked.items():
        holds = "—" if t["holds"] is None else ("yes" if t["holds"] else "**no**")
        lines.append(f"| {name} | ≤ {t['target']} | {_num(t['measured'])} | {holds} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    folder = (argv if argv is not None else sys.argv[1:])[0]
    device = read_json(folder, "device.json")
    benches = {name: read_json(folder, f"bench_{name}.json") for name in BENCHES}
    e2e = read_json(folder, "e2e.json")
    tests = test_results(folder)
    checked = targets(benches, e2e)
    summary = {"device": device, "tests": tests, "targets": checked,
               "benchmarks": {k: v is not None for k, v in benches.items()},
               "end_to_end": {k: v["estimated_full_cifar100_run_minutes"]
                              for k, v in (e2e or {}).items()}}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    text = markdown(device and device.get("line"), tests, benches, e2e, checked)
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
