"""The layout of tests/ and benchmarks/, read from every file's imports (ast): a benchmark is
imported by its own tests only, no test file imports another, the shared fixtures are imported from
tests.support with only the repository root on sys.path (benchmarks never put tests/ there), the
release runner, started from tests/support/, leaves none of our folders on sys.path, and the
straightforward reference (tests/support/naive.py) imports none of the code it checks."""
import ast
import functools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a module of tests/ would be found by a bare name, were tests/ or tests/support/ on sys.path.
TEST_FOLDERS = ("tests", os.path.join("tests", "support"))
BENCHMARK_TESTS = {"tests/test_benchmark.py"}
RUNNER = os.path.join(ROOT, "tests", "support", "release_runner.py")


def python_files():
    """Repository-relative paths of our .py files (not the runs' results/ and models/)."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__"))
                             and (dirpath != ROOT or d not in ("results", "models")))
        yield from (os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
                    for f in sorted(filenames) if f.endswith(".py"))


ALL = sorted(python_files())
TESTS = [p for p in ALL if p.startswith("tests/")]
BENCHMARKS = [p for p in ALL if p.startswith("benchmarks/")]


def parse(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return ast.parse(f.read(), path)


@functools.lru_cache(maxsize=None)
def imports(path):
    """(line, dotted name) of every module ``path`` may import, at any depth of the file: ``import
    a.b`` gives a.b; ``from a import b`` gives a and a.b (b may be a module); relative imports are
    resolved against the file's package; ``importlib.import_module`` and ``__import__`` count
    where their argument is a string literal."""
    return list(_imports(path))


def _imports(path):
    package = os.path.dirname(path).split("/")
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and _dynamic_import(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value


def _dynamic_import(func):
    return (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or \
        (isinstance(func, ast.Attribute) and func.attr == "import_module")


def file_of(module, folder=""):
    """The repository file ``module`` names when ``folder`` is on sys.path, or None."""
    stem = os.path.join(ROOT, folder, *module.split("."))
    for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
        if os.path.isfile(candidate):
            return os.path.relpath(candidate, ROOT).replace(os.sep, "/")
    return None


def is_test_file(path):
    name = os.path.basename(path)
    return path.startswith("tests/") and (name.startswith("test_") or name == "conftest.py")


def test_the_layout_is_read_from_real_files():
    """Guards the checks below against an empty walk or a resolver that never matches."""
    assert "tests/test_layout.py" in TESTS and "benchmarks/bench_step.py" in BENCHMARKS
    assert "tests/support/fake_data.py" in TESTS and "learner_task_itaml.py" in ALL
    assert "utils/run/session.py" in ALL
    assert not any(p.startswith(("results/", "models/")) for p in ALL)
    assert file_of("tests.support.naive") == "tests/support/naive.py"
    assert file_of("benchmarks") == "benchmarks/__init__.py"
    assert file_of("fake_data", "tests/support") == "tests/support/fake_data.py"
    found = {name for _, name in imports("tests/test_benchmark.py")}
    assert {"benchmarks.bench_step", "benchmarks.e2e_cifar", "benchmarks.gpu_summary"} <= found


def test_only_a_benchmarks_own_tests_import_it():
    wrong = [f"{path}:{line} imports {name}" for path in ALL if path not in BENCHMARK_TESTS
             and not path.startswith("benchmarks/") for line, name in imports(path)
             if (file_of(name) or "").startswith("benchmarks/")]
    assert wrong == [], "only tests/test_benchmark.py may import a benchmark; what the tests " \
                        "and the benchmarks share goes into tests/support/:\n" + "\n".join(wrong)


def test_no_test_file_imports_another():
    """Test files (and conftest.py, which pytest loads itself) are imported by pytest alone; what
    two of them share lives in tests/support/."""
    wrong = []
    for path in ALL:
        for line, name in imports(path):
            targets = {file_of(name)} | {file_of(name, folder) for folder in TEST_FOLDERS}
            if any(t and t != path and is_test_file(t) for t in targets):
                wrong.append(f"{path}:{line} imports {name}")
    assert wrong == [], "\n".join(wrong)


def test_a_module_of_tests_is_imported_by_its_full_name():
    """`import fake_data` works only with tests/ or tests/support/ on sys.path; every file, the
    scripts started from tests/support/ included, names it tests.support.fake_data."""
    wrong = [f"{path}:{line} imports {name}" for path in ALL for line, name in imports(path)
             if file_of(name) is None and any(file_of(name, f) for f in TEST_FOLDERS)]
    assert wrong == [], "\n".join(wrong)


def test_benchmarks_take_only_the_support_fixtures_from_tests():
    wrong = [f"{path}:{line} imports {name}" for path in BENCHMARKS for line, name in imports(path)
             if (file_of(name) or "").startswith("tests/")
             and not file_of(name).startswith("tests/support/") and name != "tests"]
    assert wrong == [], "\n".join(wrong)


REFERENCE = "tests/support/naive.py"
CHECKED = ("learner_task_itaml", "utils.inference", "utils.fast")  # what the reference checks


def test_the_reference_shares_no_code_with_what_it_checks():
    """tests/support/naive.py is written from the paper alone: were it to import the learner, the
    inference or the fast path, a bug there would pass both sides of the comparison. Of our own
    files it may use only the networks and the data."""
    assert any(name == "learner_task_itaml" for _, name in imports("utils/inference.py"))
    checked = [f"{REFERENCE}:{line} imports {name}" for line, name in imports(REFERENCE)
               if any(name == c or name.startswith(c + ".") for c in CHECKED)]
    assert checked == [], "\n".join(checked)
    allowed = ("resnet.py", "incremental_dataloader.py", "utils/__init__.py", "utils/data/")
    ours = [f"{REFERENCE}:{line} imports {name}" for line, name in imports(REFERENCE)
            if file_of(name) and not file_of(name).startswith(allowed)]
    assert ours == [], "\n".join(ours)


def sys_path_changes(path):
    """(line, source) of every statement that changes sys.path: a call of one of its methods, an
    assignment to it or to a slice of it."""
    def is_sys_path(node):
        return isinstance(node, ast.Attribute) and node.attr == "path" and \
            isinstance(node.value, ast.Name) and node.value.id == "sys"
    source = open(os.path.join(ROOT, path), encoding="utf-8").read()
    for node in ast.walk(ast.parse(source, path)):
        targets = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            targets = [node.func.value]
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            targets = [t.value if isinstance(t, ast.Subscript) else t for t in targets]
        if any(is_sys_path(t) for t in targets):
            yield node.lineno, ast.get_source_segment(source, node)


def test_benchmarks_never_put_tests_on_sys_path():
    """A benchmark puts the repository root on sys.path, nothing else: a change of sys.path that
    names tests/ is refused, and so is a PYTHONPATH naming it in a shell script."""
    changes = {path: list(sys_path_changes(path)) for path in BENCHMARKS}
    assert changes["benchmarks/e2e_cifar.py"]  # the check sees a change where there is one
    wrong = [f"{path}:{line}: {code}" for path, found in changes.items() for line, code in found
             if "tests" in code or "support" in code]
    for name in sorted(os.listdir(os.path.join(ROOT, "benchmarks"))):
        if name.endswith(".sh"):
            text = open(os.path.join(ROOT, "benchmarks", name), encoding="utf-8").read()
            wrong += [f"benchmarks/{name}: {line}" for line in text.splitlines()
                      if "PYTHONPATH" in line and "tests" in line]
    assert wrong == [], "\n".join(wrong)


def test_the_release_runner_takes_our_folders_off_sys_path(tmp_path):
    """Started as tests/test_release_equivalence.py starts it, and even from the root with the root
    on PYTHONPATH, the release's ``utils``, ``resnet`` and ``learner_task_itaml`` are the ones the
    release directory holds. The stand-in release answers from its first import and stops."""
    release = tmp_path / "release"
    release.mkdir()
    for name in ("utils", "resnet", "learner_task_itaml"):
        (release / f"{name}.py").write_text("")
    (release / "basic_net.py").write_text(
        "import json, sys\nimport learner_task_itaml, resnet, utils\n"
        "print(json.dumps({'path': sys.path, 'files': [m.__file__ for m in "
        "(utils, resnet, learner_task_itaml)]}))\nsys.exit(0)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, RUNNER, str(release), "cases.pt", "out.pt"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    folders = {os.path.abspath(p or ".") for p in seen["path"]}
    assert folders & {ROOT, os.path.join(ROOT, "tests"), os.path.dirname(RUNNER)} == set()
    assert [os.path.dirname(f) for f in seen["files"]] == [str(release)] * 3
