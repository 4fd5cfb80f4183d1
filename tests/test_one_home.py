"""One home for every concept, read from the code's string literals (ast): outside tests/ and the train
scripts, a data set's name is quoted in at most two modules (today only in its spec, in
data_sources.py), and a literal list of three or more field names stands in one module only
(the table of fields, utils/fields.py); every other list of fields is a filter over that table."""
import ast
import os

from data_sources import DATASETS
from utils.fields import FIELDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"tests", "results", "models"}


def modules():
    """Repository-relative paths of the .py files outside tests/ and the train scripts."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith((".", "__")))
        for name in sorted(files):
            path = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
            if name.endswith(".py") and not (folder == ROOT and name.startswith("train_")):
                yield path


def tree(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def strings(node):
    """The string constants among a node's direct elements (a tuple, list or set display)."""
    return [e.value for e in getattr(node, "elts", [])
            if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def quoted_names(path, names):
    """The ``names`` that appear as a whole string literal in ``path``."""
    found = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.add(node.value)
    return found


def field_lists(path):
    """(line, names) of every tuple, list or set display, and every dict display's keys, made of
    three or more field names."""
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = strings(node)
        elif isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant)
                     and isinstance(k.value, str)]
        else:
            continue
        named = [n for n in names if n in FIELDS]
        if len(named) >= 3 and len(named) == len(names):
            yield node.lineno, named


def test_a_data_set_is_named_in_at_most_two_modules():
    where = {path: quoted_names(path, set(DATASETS)) for path in modules()}
    naming = sorted(path for path, names in where.items() if names)
    assert len(naming) <= 2 and "data_sources.py" in naming, naming


def test_lists_of_fields_stand_in_the_table_of_fields_alone():
    lists = {path: list(field_lists(path)) for path in modules()}
    elsewhere = {path: found for path, found in lists.items() if found and path != "utils/fields.py"}
    assert elsewhere == {}


def test_the_checks_would_see_a_list_or_a_name_planted_elsewhere(tmp_path):
    """Guards the two tests above: the readers they use find what they look for (an absolute path
    stays itself under os.path.join)."""
    planted = tmp_path / "planted.py"
    planted.write_text('KEEP = ("lr", "epochs", "r")\nSETS = {"svhn": 1, "cifar100": 2}\n'
                       '"""mnist in a docstring"""\nMIXED = ("lr", "epochs", "not a field")\n')
    assert [names for _, names in field_lists(str(planted))] == [["lr", "epochs", "r"]]
    assert quoted_names(str(planted), set(DATASETS)) == {"svhn", "cifar100"}
