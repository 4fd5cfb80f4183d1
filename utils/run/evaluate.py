"""``python3 -m utils.run.evaluate RUN [field=value ...] [--out FOLDER]``: a finished run evaluated again.

The four protocols and the continuum-size curve are measured anew on every saved session of the run
in RUN (its ``args.checkpoint`` folder), with other inference settings: the continuum, the single
update (``adapt_lr``, ``adapt_epochs``, ``adapt_batch``, ``adapt_bn``) and where it runs. Training
settings are refused: the saved models already embody them. The run is only read, never written. The
records go to a new folder, by default RUN's name followed by ``_eval`` and the overrides
(``results/digits_cnn/demo_eval_adapt_lr=1e-4``), in the run's format, so ``utils.report`` reads it
like any run. Sessions already evaluated there are kept, so a killed evaluation resumes.

Every random draw of the evaluation is seeded by the run's seed, the session and the task
(``utils.inference.adapt``), so without overrides the records repeat the run's own.
"""
import argparse
import json
import os
import shutil
import sys
import time
from types import SimpleNamespace

from utils.config import check_args
from utils.errors import ConfigError
from utils.fields import FIELDS, UNKNOWN, of_kind
from utils.fast.device import resolve_device
from utils.files import write_json, write_text
from utils.inference import evaluate
from utils.logger import get_logger
from utils.report.records import format_table, make_record, summary_csv, training_of
from utils.report.runs import load_run
from utils.report.tables import write_report
from utils.run import overrides
from utils.run.manifest import environment, recorded_value
from utils.run.restore import restore_data, restore_session
from utils.run.session import session_seed
from utils.run.store import RunStore

# What an evaluation may change: how the saved models are tested and where and how fast that runs,
# and where the run's data and models are now, if they moved (its folder is RUN itself).
INFERENCE = of_kind("inference", "speed", "machine")
LOCATIONS = tuple(name for name in of_kind("place") if name != "checkpoint")
USAGE = "python3 -m utils.run.evaluate RUN [field=value ...] [--out FOLDER]"


def run_args(record):
    """The checked args of a session's record (JSON turned session numbers into strings)."""
    args = {name: recorded_value(record["args"], name) for name in FIELDS}
    args = {name: value for name, value in args.items() if value is not UNKNOWN}
    args["sessions"] = {int(t): fields for t, fields in (args["sessions"] or {}).items()}
    return check_args(SimpleNamespace(**args))


def parse(texts, cfg):
    """{field: value} of the overrides, each read as ``cfg``'s field and checked; only inference
    and location fields."""
    for text in texts:
        if "=" not in text or not text.split("=", 1)[0]:
            raise ConfigError(f"{text!r} is not a field=value override; usage: {USAGE}")
        name = text.split("=", 1)[0]
        if name == "checkpoint":
            raise ConfigError(f"the override {text!r} moves the run's folder, which is RUN "
                              f"itself; give it as RUN, and the folder for the new records as "
                              f"--out; usage: {USAGE}")
        if name in FIELDS and name not in INFERENCE + LOCATIONS:
            raise ConfigError(f"the override {text!r} changes args.{name}, which the saved models "
                              f"were trained with; utils.run.evaluate takes only how they are "
                              f"tested and where and how fast that runs (the kinds inference, "
                              f"speed, machine: {', '.join(INFERENCE)}) and where the data and "
                              f"models are "
                              f"({', '.join(LOCATIONS)}); train a new run to change {name}.")
    return overrides.apply(type("args", (), vars(cfg)), texts)[1]


def default_out(run, texts):
    """RUN_eval, or RUN_eval_<overrides> (location overrides left out: they change no result)."""
    shown = [t for t in texts if t.split("=", 1)[0] in INFERENCE]
    return os.path.normpath(run) + "_eval" + "".join(
        "_" + t.replace(os.sep, "-").replace(" ", "") for t in shown)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m utils.run.evaluate", usage=USAGE,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run's args.checkpoint folder")
    parser.add_argument("overrides", nargs="*", help="field=value, inference fields only")
    parser.add_argument("--out", help="where the new records go (default: RUN_eval_<overrides>)")
    a = parser.parse_args(argv)
    try:
        reevaluate(a.run, a.overrides, a.out)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def reevaluate(run, texts=(), out=None):
    """Evaluate every finished session of ``run`` with the overrides ``texts``; returns the records
    of the evaluation folder."""
    records = load_run(run)
    values = parse(list(texts), run_args(records[-1]))
    out = os.path.normpath(out or default_out(run, texts))
    if os.path.realpath(out) == os.path.realpath(run):
        raise ConfigError(f"--out {out} is the run's own folder, which utils.run.evaluate never "
                          "writes; give another folder.")
    source = _source(run, records, values)
    target = SimpleNamespace(**{**vars(source.cfg), "checkpoint": out, "savepoint": out})
    store = RunStore(target, "utils.run.evaluate")
    with store.lock():
        log = get_logger(out)
        log.info(f"evaluating {run} (sessions 0..{len(records) - 1}) with "
                 f"{', '.join(texts) or 'its own settings'}; records to {out}")
        _copy_class_order(source.store, store)
        write_json(store.manifest_file, {"command": " ".join(["python3 -m utils.run.evaluate", run,
                                                              *texts] + ["--out", out]),
                                         "evaluated_from": os.path.normpath(run),
                                         "overrides": values, **environment(source.device)})
        done = [_evaluated(store, t, values) for t in store.finished()]
        for record in records[len(done):]:
            done.append(_session(source, record, values, store, log))
        write_text(store.summary_file, summary_csv(done))
        write_report([(out, done)], out)
    return done


def _source(run, records, values):
    """The run's args (its last record's, with the overrides), store, data and device."""
    cfg = run_args(records[-1])
    cfg = check_args(SimpleNamespace(**{**vars(cfg), "checkpoint": run, **values}))
    store = RunStore(cfg, "utils.run.evaluate")
    if not os.path.isdir(cfg.savepoint):
        raise ConfigError(f"the run's models are not in {cfg.savepoint} (its args.savepoint); give "
                          "the folder that holds its session_<t>_model.pt with savepoint=PATH.")
    device = resolve_device(cfg.device)
    return SimpleNamespace(cfg=cfg, store=store, data=restore_data(cfg, store, device),
                           device=device)


def _evaluated(store, t, values):
    """A session this folder already holds, kept if it was evaluated with the same overrides."""
    record = store.read_record(t)
    if record.get("evaluation_overrides") != overrides_as_json(values):
        raise ConfigError(f"{store.session_json(t)} was evaluated with "
                          f"{record.get('evaluation_overrides')}, not {values}; give another --out.")
    return record


def overrides_as_json(values):
    return json.loads(json.dumps(values))


def _copy_class_order(run_store, store):
    for name in ("class_order_file", "class_list_file"):
        if os.path.exists(getattr(run_store, name)):
            shutil.copyfile(getattr(run_store, name), getattr(store, name))


def _session(source, record, values, store, log):
    """One saved session evaluated with the overrides; its record written to the new folder."""
    t, began = record["session"], time.time()
    cfg = check_args(SimpleNamespace(**{**vars(run_args(record)), "checkpoint": source.cfg.checkpoint,
                                        "savepoint": source.cfg.savepoint, **values}))
    model, memory = restore_session(cfg, source.store, source.data, t, record)
    results = evaluate(model.to(source.device), source.data, memory, t, cfg, source.device,
                       session_seed(cfg, t))
    seconds = time.time() - began
    # The run's checksums describe its files, which stay in the run: the new record has none.
    where = SimpleNamespace(**{**vars(cfg), "checkpoint": store.cfg.checkpoint,
                               "savepoint": store.cfg.savepoint})
    times = {"train_seconds": record.get("train_seconds"), "eval_seconds": seconds,
             "seconds": seconds}
    new = {**make_record(t, where, results, training_of(record), times, source.device),
           "evaluated_from": os.path.normpath(source.store.session_json(t)),
           "evaluation_overrides": values}
    write_json(store.session_json(t), new)
    log.info(format_table(new))
    return new


if __name__ == "__main__":
    main()
