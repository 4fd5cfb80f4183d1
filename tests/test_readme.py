"""The README and the manual in docs/: their commands keep working, their links resolve, and the
`args` reference follows the schema.

Every line of a ```bash block in README.md and docs/*.md is a command (``&&`` splits a line into two;
leading ``NAME=value`` environment words are dropped; an identical command is handled once, as the
README's). What happens to each, by its program:

- ``python3 train_digits.py N [field=value ...]`` from the README: **run**, in this process, as
  ``python3`` would run the file, with SHRINK's overrides added and its checkpoint in a temporary
  folder (a checkpoint or savepoint it names is replaced). It is the one script whose run takes
  seconds.
- every other ``python3 train_<dataset>.py ...`` (and every one from docs/): **--help** (exit status
  0, every field listed), and its command line **checked** as the script checks it (start task,
  overrides, ``check_args``) without training: the data are not here, or, for train_digits_cnn.py,
  a run takes minutes (tests/test_scripts.py and tests/test_digits_cnn.py run them shrunk).
- ``torchrun OPTIONS train_X.py ...``: torchrun's options **parsed** by its own parser
  (``torch.distributed.run``), the script's words **checked** as above.
- ``python3 -m utils.run.sweep ...``: **planned** as given (``sweep.plan``: every combination and
  seed checked as the script would check it). From the README it is also **run**, shrunk: each grid
  entry keeps its first value, ``--seeds`` its first seed, ``--out`` goes to a temporary folder, and
  SHRINK's fields the grid does not set join it (``--jobs`` is kept).
- ``python3 -m utils.report FOLDERS [--out DIR]`` and ``python3 -m utils.run.evaluate RUN
  [field=value ...] [--out DIR]``: **run** on this test's own tiny runs, writing into a temporary
  folder.
- ``python3 -m pytest [-q] PATHS``: ``python3 -m pytest --collect-only -q tests`` (once) must
  succeed and collect every PATH. The suite is **not run**: it takes minutes and holds this test.
- ``python3 -m pip install -r requirements.txt``: the file exists, every line pins ``name==version``
  and torch is 2.14.1. **Nothing is installed.**
- ``bash SCRIPT [ARGS]`` (docs/study_*.sh, benchmarks/gpu_check.sh): **syntax-checked** with
  ``bash -n``; not run (they take minutes, or a GPU).
- any other ``python3 FILE.py ...`` (the benchmarks): **--help**, exit status 0.
- ``git clone`` and ``cd``: **skipped** (the network; a shell builtin).

The rest: the README is at most 15 KB; every relative link and image in README.md and docs/*.md
names a file that exists (and a heading that exists, for a ``#anchor``); every docs page is linked
from the README; the README's result tables repeat their page's rows exactly; docs/args.md is what
``python3 -m utils.fields`` writes from the table of fields; every script's ``args`` holds the
table's fields in its order; ``--help`` lists each with its meaning, kind, values and default.
"""
import functools
import glob
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import pytest

from utils import fields as table
from utils.config import check_args
from utils.fields import FIELDS, REQUIRED
from utils.run import overrides, sweep
from utils.run.sweep.__main__ import main as sweep_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
PAGES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "train_*.py")))
RUNNABLE = "train_digits.py"
# A README command's run of train_digits.py: two tasks of two digits, one epoch.
SHRINK = {"num_class": "4", "num_task": "2", "memory": "20", "epochs": "1", "schedule": "[]",
          "device": "cpu"}
README_LIMIT = 15 * 1024


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def bash_commands(path):
    """(line number, words) of every command in the file's ```bash blocks."""
    found, inside = [], False
    for number, line in enumerate(read(path).splitlines(), 1):
        if line.startswith("```"):
            inside = not inside and line.strip() == "```bash"
            continue
        if not inside:
            continue
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            command, words = words[:cut], words[cut + 1:]
            while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
                command = command[1:]  # CUDA_VISIBLE_DEVICES=0, ITAML_RELEASE=...
            if command:
                found.append((number, command))
    return found


def all_commands():
    """(file, line, words), the README's first, each distinct command once."""
    seen, commands = set(), []
    for path in [README] + PAGES:
        for number, words in bash_commands(path):
            if tuple(words) not in seen:
                seen.add(tuple(words))
                commands.append((path, number, words))
    return commands


COMMANDS = all_commands()


def test_the_readme_and_the_manual_show_commands():
    assert len([c for c in COMMANDS if c[0] == README]) >= 10
    assert {"python3 train_digits.py 0", "python3 -m pytest -q tests"} <= \
        {" ".join(words) for path, _, words in COMMANDS if path == README}


# ---------------------------------------------------------------------------------------------------
# Running the commands


def call_main(run, argv, monkeypatch):
    """Exit status of ``run()`` with ``sys.argv`` = argv (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", argv)
    try:
        run()
    except SystemExit as e:
        return e.code or 0
    return 0


def run_script(script, words, monkeypatch):
    """``python3 script words...``, in this process."""
    return call_main(lambda: runpy.run_path(script, run_name="__main__"), [script] + words,
                     monkeypatch)


def shrunk_training(words, checkpoint):
    """The words with checkpoint/savepoint replaced and SHRINK added."""
    kept = [w for w in words if w.split("=", 1)[0] not in ("checkpoint", "savepoint")]
    given = {w.split("=", 1)[0] for w in kept if "=" in w}
    return kept + [f"{k}={v}" for k, v in SHRINK.items() if k not in given] + \
        [f"checkpoint={checkpoint}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs for report and evaluate: one run of train_digits.py, and a copy of it
    (to the report, a rerun of the same seed)."""
    folder = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(ROOT)
        assert run_script(RUNNABLE, shrunk_training(["0"], str(folder / "a")), mp) == 0
    finally:
        mp.undo()
    shutil.copytree(folder / "a", folder / "b")
    return [str(folder / "a"), str(folder / "b")]


def check_training(script, words):
    """The command line as the script checks it, without training."""
    assert os.path.isfile(os.path.join(ROOT, script)), f"{script} does not exist"
    args = runpy.run_path(script)["args"]  # not __main__: defines args and nothing runs
    start, texts = overrides.parse_command_line(words, script)
    cfg = check_args(overrides.apply(args, texts)[0])
    assert 0 <= start < cfg.num_task


def check_help(script, monkeypatch, capsys):
    assert run_script(script, ["--help"], monkeypatch) == 0, f"{script} --help failed"
    out = capsys.readouterr().out
    assert out.startswith("usage: "), out
    return out


def handle_python_script(path, words, monkeypatch, capsys, tmp_path):
    script, rest = words[1], words[2:]
    if not script.startswith("train_"):  # the benchmarks
        check_help(script, monkeypatch, capsys)
        return
    check_help(script, monkeypatch, capsys)
    start = overrides.parse_command_line(rest, script)[0]
    if path == README and script == RUNNABLE and start == 0:
        code = run_script(script, shrunk_training(rest, str(tmp_path / "run")), monkeypatch)
        assert code == 0, capsys.readouterr().err
        assert os.path.isfile(tmp_path / "run" / "session_1.json")
    else:
        check_training(script, rest)


def option(words, name):
    """The words without ``name VALUE`` (or ``name=VALUE``), and VALUE (None if absent)."""
    kept, value, i = [], None, 0
    while i < len(words):
        if words[i] == name:
            value, i = words[i + 1], i + 2
            continue
        if words[i].startswith(name + "="):
            value = words[i].split("=", 1)[1]
        else:
            kept.append(words[i])
        i += 1
    return kept, value


def handle_sweep(path, rest, monkeypatch, capsys, tmp_path):
    from utils.run.sweep.__main__ import arguments, check
    options = arguments().parse_intermixed_args(rest)  # every option as the sweep reads it
    check(options)
    rest, seeds = option(rest, "--seeds")
    rest, jobs = option(rest, "--jobs")
    rest, out = option(rest, "--out")
    script, grid = options.script, options.grid
    # planned: every combination and seed checked as the script would check it, nothing runs
    sweep.plan(script, sweep.parse_grid(grid), sweep.parse_seeds(seeds or "0"),
               str(tmp_path / "sweep"))
    if path != README:
        return
    grid = [f"{name}={values[0]}" for name, values in sweep.parse_grid(grid)]
    given = {g.split("=", 1)[0] for g in grid}
    grid = grid + [f"{k}={v}" for k, v in SHRINK.items() if k not in given]
    first_seed = str(sweep.parse_seeds(seeds or "0")[0])
    argv = [script, *grid, "--seeds", first_seed, "--out", str(tmp_path / "sweep")] + \
        (["--jobs", jobs] if jobs else [])
    assert call_main(lambda: sweep_main(argv), ["utils.run.sweep"] + argv, monkeypatch) == 0, \
        capsys.readouterr()
    assert os.path.isfile(tmp_path / "sweep" / "report" / "report.csv")


def handle_report(rest, runs, monkeypatch, capsys, tmp_path):
    from utils.report.__main__ import main
    folders, out = option(rest, "--out")
    argv = [runs[i % len(runs)] for i in range(len(folders))] + ["--out", str(tmp_path / "report")]
    assert call_main(lambda: main(argv), ["utils.report"] + argv, monkeypatch) == 0, \
        capsys.readouterr().err
    assert os.path.isfile(tmp_path / "report" / "report.csv")


def handle_evaluate(rest, runs, monkeypatch, capsys, tmp_path):
    from utils.run.evaluate import main
    rest, out = option(rest, "--out")
    argv = [runs[0]] + rest[1:] + ["--out", str(tmp_path / "evaluated")]
    assert call_main(lambda: main(argv), ["utils.run.evaluate"] + argv, monkeypatch) == 0, \
        capsys.readouterr().err
    assert os.path.isfile(tmp_path / "evaluated" / "session_1.json")


@functools.lru_cache(maxsize=None)
def collected_tests():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def handle_pytest(rest):
    paths = [w for w in rest if not w.startswith("-")]
    collected = collected_tests()
    for p in paths:
        assert re.search(rf"^{re.escape(p.rstrip('/'))}[/:]", collected, re.M), \
            f"pytest collects nothing under {p}"


def handle_pip(rest):
    assert rest[:2] == ["install", "-r"], rest
    pins = [line.strip() for line in read(rest[2]).splitlines() if line.strip()]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", p) for p in pins), pins
    assert "torch==2.14.1" in pins


def handle_torchrun(words, monkeypatch, capsys):
    from torch.distributed.run import get_args_parser
    options = get_args_parser().parse_args(words[1:])
    script = options.training_script
    check_help(script, monkeypatch, capsys)
    check_training(script, list(options.training_script_args))


def handle_bash(words):
    script = words[1]
    assert os.path.isfile(os.path.join(ROOT, script)), f"{script} does not exist"
    done = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path,number,words", COMMANDS,
                         ids=[f"{p}:{n} {' '.join(w)}"[:90] for p, n, w in COMMANDS])
def test_command(path, number, words, runs, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    program = words[0]
    if program in ("git", "cd"):
        pytest.skip(f"{' '.join(words)}: not run (the network, or a shell builtin)")
    if program == "bash":
        return handle_bash(words)
    if program == "torchrun":
        return handle_torchrun(words, monkeypatch, capsys)
    assert program == "python3", f"{path}:{number}: no rule for {program!r}; add one to this test"
    if words[1] != "-m":
        return handle_python_script(path, words, monkeypatch, capsys, tmp_path)
    module, rest = words[2], words[3:]
    handlers = {
        "pip": lambda: handle_pip(rest),
        "pytest": lambda: handle_pytest(rest),
        "utils.run.sweep": lambda: handle_sweep(path, rest, monkeypatch, capsys, tmp_path),
        "utils.report": lambda: handle_report(rest, runs, monkeypatch, capsys, tmp_path),
        "utils.run.evaluate": lambda: handle_evaluate(rest, runs, monkeypatch, capsys, tmp_path),
    }
    assert module in handlers, f"{path}:{number}: no rule for python3 -m {module}; add one"
    handlers[module]()


# ---------------------------------------------------------------------------------------------------
# --help


def test_help_lists_every_field_with_its_valid_values(capsys):
    with pytest.raises(SystemExit) as stop:
        overrides.parse_command_line(["0", "lr=0.1", "--help"], "train_digits.py")
    assert stop.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "usage: python3 train_digits.py [start_task] [field=value ...]"
    entries = {}  # each field's entry: its first line (two spaces, the name) and those indented more
    for line in out[out.index(next(l for l in out if l.startswith("field=value"))) + 1:]:
        if line.startswith("  ") and not line.startswith("   "):
            name, rest = line.split(None, 1)
            entries[name] = rest
        else:
            entries[name] += " " + line.strip()
    assert list(entries) == list(FIELDS)
    for name, f in FIELDS.items():
        default = "" if f.default is REQUIRED else f"; default {f.default!r}"
        assert entries[name] == f"{f.meaning.replace('`', '')} [{f.kind}] ({f.valid}{default})"
    with pytest.raises(SystemExit):
        overrides.parse_command_line(["-h"], "train_digits.py")
    assert capsys.readouterr().out.startswith("usage: ")


# ---------------------------------------------------------------------------------------------------
# The args reference


def test_the_args_reference_is_written_from_the_table_of_fields():
    assert read("docs/args.md") == table.reference(), \
        "docs/args.md is stale: run python3 -m utils.fields > docs/args.md"


def test_the_args_reference_has_a_row_for_every_field_in_order():
    rows = [line.split("|")[1].strip() for line in read("docs/args.md").splitlines()
            if line.startswith("| `")]
    assert rows == [f"`{name}`" for name in FIELDS]


def script_fields(script):
    args = runpy.run_path(os.path.join(ROOT, script))["args"]
    return [k for k in vars(args) if not k.startswith("_")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_writes_out_the_fields(script):
    fields = script_fields(script)
    assert sorted(fields) == sorted(FIELDS) and len(fields) == len(FIELDS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_writes_them_in_the_table_order(script):
    assert script_fields(script) == list(FIELDS)


# ---------------------------------------------------------------------------------------------------
# Size, links and headline tables


def test_the_readme_is_a_front_page():
    assert os.path.getsize(os.path.join(ROOT, README)) <= README_LIMIT


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path):
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)  # a shell comment is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def relative_links(path):
    """(target, anchor) of every relative link and image in a markdown file, outside code."""
    text = re.sub(r"```.*?```", "", read(path), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        links.append((os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path,
                      anchor))
    return links


@pytest.mark.parametrize("path", [README] + PAGES)
def test_every_link_and_image_resolves(path):
    for target, anchor in relative_links(path):
        assert os.path.isfile(os.path.join(ROOT, target)), f"{path} links to {target}, which is absent"
        if anchor:
            assert target.endswith(".md") and anchor in anchors(target), \
                f"{path} links to {target}#{anchor}, which has no such heading"


def test_the_readme_links_every_page():
    linked = {target for target, _ in relative_links(README)}
    assert [p for p in PAGES if p not in linked] == []


def test_the_readme_results_repeat_their_pages_rows():
    text = read(README)
    results = text[text.index("\n## Results"):text.index("\n## Citation")]
    manual = "\n".join(read(p) for p in PAGES).splitlines()
    rows = [line for line in results.splitlines() if line.startswith("|")]
    assert len(rows) >= 14
    assert [row for row in rows if row not in manual] == []
