"""``python3 train_X.py [start_task] [field=value ...]``: the command line of every training script.

An override sets one field of the script's ``args`` for this run only, so a grid of runs needs no
edited copies of the script. The value is read as the field's type: a field that holds a string
takes the text as it is, any other reads it as a Python literal (``0.01``, ``[4, 8]``, ``None``,
``True`` or ``true``), and a text that is no literal stays a string (``task_start=previous``). Each override is
checked against the schema on its own, so a bad one is named in the error, before the whole class is.
``--help`` (or ``-h``) anywhere on the line prints the usage and every field with the values it
accepts, and exits.
"""
import ast
import difflib
import os
import sys

from utils.config import check_session_entries
from utils.errors import ConfigError
from utils.fields import FIELDS, help_lines


def usage(script):
    return f"python3 {script} [start_task] [field=value ...]"


HELP = ("--help", "-h")


def help_text(script):
    """The usage and every field of ``args`` in the table's order: what it means, its kind, what it
    accepts and its default (``utils.fields.help_lines``)."""
    return "\n".join(
        [f"usage: {usage(script)}", "",
         "start_task: the task to start from (default 0); task N resumes from the saved session N-1.",
         "field=value: sets that field of the script's args for this run. The fields (docs/args.md):"]
        + help_lines()) + "\n"


def parse_command_line(rest, script="train.py"):
    """(start task, override texts) from the words after the script's name; ``--help`` prints
    ``help_text`` and exits with status 0."""
    start, words = 0, list(rest)
    if any(word in HELP for word in words):
        sys.stdout.write(help_text(script))
        sys.exit(0)
    if words and "=" not in words[0]:
        first = words.pop(0)
        if not first.lstrip("-").isdigit():
            raise ConfigError(f"the start task must be one integer, got {first!r}; usage: "
                              f"{usage(script)}")
        start = int(first)
    for word in words:
        if "=" not in word or not word.split("=", 1)[0]:
            raise ConfigError(f"{word!r} is not a field=value override (and the start task, an "
                              f"integer, can only come first); usage: {usage(script)}")
    return start, words


def read_value(text, current):
    """``text`` as a value of a field whose value in the args class is ``current``."""
    if text == "None":
        return None
    if isinstance(current, str):
        return text
    if text in ("true", "false"):  # as a shell user may write them
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def apply(args, texts):
    """``args`` (the script's class) with the overrides ``texts`` ("field=value") set, as a subclass;
    the parsed values, {field: value}, in the order given."""
    values = {}
    for text in texts:
        name, raw = text.split("=", 1)
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"the override {text!r} names no field of args{hint}; the fields "
                              f"are: {', '.join(FIELDS)}.")
        value = read_value(raw, getattr(args, name, None))
        if not FIELDS[name].check(value):
            raise ConfigError(f"the override {text!r} sets args.{name} = {value!r}, which is "
                              f"invalid; it must be {FIELDS[name].valid}.")
        if name == "sessions":  # a dict of dicts: each entry checked, the override named
            check_session_entries(value, f"the override {text!r}: args.sessions")
        values[name] = value
    if "savepoint" in fields(values) and "savepoint" not in values:
        values["savepoint"] = savepoint_for(values["checkpoint"])
    return type(args.__name__, (args,), values), values


def fields(names):
    """The fields a command line with overrides of ``names`` sets: those, and savepoint where only
    the checkpoint was given, since the models then follow it (``savepoint_for``)."""
    names = list(names)
    return names + (["savepoint"] if "checkpoint" in names and "savepoint" not in names else [])


def savepoint_for(checkpoint):
    """Where the weights go when only the checkpoint is moved: the scripts' own rule ("results/a/b"
    keeps its models in "models/a/b"), or, for an absolute path, a models/ folder inside it."""
    if os.path.isabs(checkpoint):
        return os.path.join(checkpoint, "models")
    parts = os.path.normpath(checkpoint).split(os.sep)
    return os.path.join("models", *(parts[1:] or parts))


def command(script, start, texts):
    """The command line that runs (or resumes) this run from ``start``."""
    return " ".join([f"python3 {script} {start}"] + [_quoted(t) for t in texts])


def _quoted(text):
    """A word as a shell needs it (spaces, brackets and quotes would be split or expanded)."""
    if all(c.isalnum() or c in "_-.=/:,+" for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
