"""The floor plan: no folder's own files, and no single file, hold more than a quarter of the code.

Code is every ``.py`` and ``.sh`` file outside ``tests/`` (and outside what runs leave: ``results/``,
``models/``); a folder's own files are counted apart from its subfolders'. A maintainer then finds the
session loop, the report or the learner's speed internals in a folder of its own, not in one drawer.
"""
import os
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"tests", "results", "models", ".git", "__pycache__", ".pytest_cache"}
SHARE = 0.25


def code_lines():
    """{path relative to the root: lines} of every code file outside the tests."""
    lines = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        for name in files:
            if name.endswith((".py", ".sh")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    lines[os.path.relpath(path, ROOT)] = sum(1 for _ in f)
    return lines


def test_no_folder_and_no_file_holds_more_than_a_quarter_of_the_code():
    lines = code_lines()
    total = sum(lines.values())
    by_folder = Counter()
    for path, n in lines.items():
        by_folder[os.path.dirname(path) or "."] += n
    print(f"{total} lines of code; folders' own files: "
          + ", ".join(f"{folder} {n} ({n / total:.0%})" for folder, n in by_folder.most_common()))
    assert total > 3000  # the walk found the project
    for folder, n in by_folder.items():
        assert n <= SHARE * total, f"{folder}/ holds {n} of {total} lines ({n / total:.0%})"
    for path, n in lines.items():
        assert n <= SHARE * total, f"{path} holds {n} of {total} lines ({n / total:.0%})"
