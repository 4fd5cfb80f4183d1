"""The one session loop behind every ``train_<dataset>.py``:
``python3 train_X.py [start_task] [field=value ...]``.

Session t trains on D(t) ∪ M(t−1), updates the replay memory to M(t), evaluates every protocol over the
classes seen so far, and saves model, memory and record. Each session reseeds from (args.seed, t), so
resuming at t gives the same numbers as an uninterrupted run on the same device.
"""
import contextlib
import os
import sys
import time
from collections import namedtuple
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from incremental_dataloader import IncrementalData
from learner_task_itaml import MetaLearner
from resnet import build_network
from utils.config import check_args, describe_training, for_session, session_settings
from utils.data.memory import ReplayMemory
from utils.errors import ConfigError, Diverged
from utils.fast import distributed
from utils.files import write_json, write_text
from utils.inference import base_test_accuracy, evaluate
from utils.logger import get_logger, quiet_logger
from utils.report.records import format_table, summary_csv
from utils.report.tables import write_report
from utils.run import overrides
from utils.run.manifest import check_resume, read_manifest, rebuilt, resumed, started
from utils.run.store import RunStore


def main(args, argv=None):
    """Command-line entry, ``train_X.py [start_task] [field=value ...]`` (``utils/run/overrides.py``):
    bad input ends with one sentence on stderr and exit status 2."""
    argv = sys.argv if argv is None else argv
    script = os.path.basename(argv[0]) if argv else "train.py"
    try:
        start, texts = overrides.parse_command_line(argv[1:], script)
        run(overrides.apply(args, texts)[0], start, script, texts)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"args.device = {name!r} but no GPU is visible (check "
                          "CUDA_VISIBLE_DEVICES); use 'auto' or 'cpu'.")
    return torch.device(name)


def session_seed(cfg, t):
    return cfg.seed * 1000 + t


@dataclass
class Job:
    """What every session of one launch shares: the checked args, the run's files, this process's
    place under torchrun, the records of the finished sessions (appended to as sessions finish), and
    once prepared the data, the network, the replay memory and the log."""
    cfg: SimpleNamespace
    store: RunStore
    ctx: distributed.DistContext
    history: list
    data: IncrementalData = None
    model: torch.nn.Module = None
    memory: ReplayMemory = None
    log: object = None

    @property
    def device(self):
        return self.ctx.device


# A resume's findings, read before anything is written: args changed since the last finished
# session, the saved class order, and the manifest.
Resume = namedtuple("Resume", "changes saved manifest")


def run(args, start=0, script="train.py", override_texts=()):
    """Run sessions ``start`` … T−1; returns the records of the sessions it ran. ``override_texts``:
    the command line's field=value words, already applied to ``args``, for the manifest and the
    commands the messages suggest."""
    cfg = check_args(args)
    if not 0 <= start < cfg.num_task:
        raise ConfigError(f"the start task {start} is outside 0..{cfg.num_task - 1} "
                          f"(args.num_task = {cfg.num_task}).")
    ctx = distributed.setup(resolve_device(cfg.device))  # under torchrun: this rank's device
    try:
        return _run(cfg, start, RunStore(cfg, script, override_texts), ctx)
    finally:
        distributed.cleanup(ctx)


def _run(cfg, start, store, ctx):
    store.check_start(start)
    # Everything is read and checked before anything is written: a bad resume costs no training.
    # Under torchrun every rank reads the same files (so every rank stops on the same error).
    job = Job(cfg, store, ctx, [store.read_record(s) for s in range(start)])
    resume = _read_resume(job) if start else Resume({}, None, None)
    _prepare(job, resume.saved)
    distributed.broadcast_module_(job.model, ctx)  # identical start on every rank
    # Only rank 0 locks the folders, writes files and prints tables.
    with store.lock() if ctx.is_main else contextlib.nullcontext():
        job.log = _begin(job, resume) if ctx.is_main else quiet_logger()
        return _sessions(job)


def _read_resume(job):
    """The args changed since the last finished session (refusing those that would change what
    the finished sessions mean), its class order, and the manifest."""
    cfg, store, start = job.cfg, job.store, len(job.history)

    def saved_names():  # only read when a class list has moved
        return load_class_order(cfg, store).get("class_names")
    changes = check_resume(cfg, job.history[-1], store.session_json(start - 1), saved_names)
    return Resume(changes, load_class_order(cfg, store), read_manifest(store, start))


def _begin(job, resume):
    """Clear what a killed run left half-written, write the run's own files, say what happens next."""
    cfg, store, start = job.cfg, job.store, len(job.history)
    removed = store.remove_temporaries()
    log = get_logger(cfg.checkpoint)
    log.info(_start_line(job))
    if start == 0:
        write_json(store.class_order_file, {"class_order": job.data.class_order,
                                            "class_names": job.data.class_names})
        write_text(store.class_list_file, "".join(f"{name}\n" for name in job.data.class_names))
        write_json(store.manifest_file, started(cfg, store, start, job.device))
    else:
        _record_resume(job, resume, log)
    if removed:
        log.info(f"removed {len(removed)} half-written file(s) an interrupted run left: "
                 + ", ".join(removed))
    return log


def _record_resume(job, resume, log):
    store, start = job.store, len(job.history)
    manifest = resume.manifest or rebuilt(job.history[-1], store.session_json(start - 1))
    manifest, setup = resumed(manifest, job.cfg, store, start, job.device, resume.changes)
    write_json(store.manifest_file, manifest)
    if resume.changes:
        log.info("args changed since the finished sessions (recorded in manifest.json): "
                 + ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in resume.changes.items()))
    if setup:
        log.warning(f"resuming on another setup ({', '.join(setup)}): the sessions from here may "
                    "differ slightly from an uninterrupted run's.")


def _start_line(job):
    cfg, store, start, ctx = job.cfg, job.store, len(job.history), job.ctx
    where = (f"resuming from finished session {start - 1} ({store.model_file(start - 1)}, "
             f"{store.memory_file(start - 1)})" if start else "starting afresh")
    ranks = f" × {ctx.world_size} ranks (torchrun)" if ctx.enabled else ""
    return (f"{store.script}: iTAML ({describe_training(cfg)}) on {cfg.dataset}, sessions {start}.."
            f"{cfg.num_task - 1} on {job.device}{ranks}, {where}; results to {cfg.checkpoint}, "
            f"weights to {cfg.savepoint}")


def _sessions(job):
    start = len(job.history)
    try:
        for t in range(start, job.cfg.num_task):
            job.history.append(run_session(job, t))
    except KeyboardInterrupt:
        # Ask the disk, not the loop: Ctrl-C may land after a session's record is in place.
        nxt = len(job.store.finished())
        job.log.error(f"interrupted in session {nxt}; sessions before it are saved: resume with "
                      f"`{job.store.command(nxt)}`." if nxt < job.cfg.num_task else
                      "interrupted after the last session was saved; the run is complete.")
        sys.exit(130)
    return job.history[start:]


def _prepare(job, saved):
    """Fresh model and memory at task 0; otherwise the last finished session's model, memory and
    class order."""
    cfg, store, start = job.cfg, job.store, len(job.history)
    if start == 0:
        job.data = IncrementalData(cfg)
        job.memory, state = ReplayMemory(cfg.memory, cfg.selection, cfg.seed), None
    else:
        job.data = IncrementalData(cfg, saved["class_order"])
        job.memory = load_memory(cfg, store, job.data, start - 1, job.history[-1])
        state = store.load_model_state(start - 1)
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.dataset, job.data.input_shape, cfg.num_class)
    if state is not None:
        load_weights(model, state, cfg, store, start - 1, job.history[-1])
    job.model = model.to(job.device)


def load_weights(model, state, cfg, store, t, record):
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError):
        raise ConfigError(f"{store.model_file(t)} does not fit the network of this args (dataset "
                          f"{cfg.dataset!r}, num_class {cfg.num_class}); was it written by another "
                          "configuration?") from None
    store.check_checksum(store.model_file(t), record, t)


def load_class_order(cfg, store):
    # Every session depends on the class order: redoing one session cannot repair it.
    hint = "restore it or start again at task 0 with a new args.checkpoint"
    saved = store.read_json(store.class_order_file, hint)
    order = saved.get("class_order") if isinstance(saved, dict) else None
    if (not isinstance(order, list) or len(order) != cfg.num_class or len(set(order)) != len(order)
            or not all(isinstance(c, int) for c in order)):
        raise ConfigError(f"{store.class_order_file} is corrupt or does not hold "
                          f"args.num_class = {cfg.num_class} distinct classes; {hint}.")
    return saved


def load_memory(cfg, store, data, t, record):
    path = store.memory_file(t)
    state = store.read_json(path, store.redo_hint(t))
    try:
        memory = ReplayMemory.from_state(state)
        for c in memory.classes():
            if not np.all(data.train_labels[memory.exemplars[c]] == c):
                raise ValueError(f"class {c}")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ConfigError(f"{path} is corrupt or does not match the training set; "
                          f"{store.redo_hint(t)}.") from None
    expected = set(range((t + 1) * cfg.class_per_task))
    if set(memory.classes()) != expected:
        raise ConfigError(f"{path} holds classes {memory.classes()} but session {t} leaves "
                          f"exemplars of classes 0..{max(expected)}; {store.redo_hint(t)}.")
    store.check_checksum(path, record, t)
    memory.size, memory.selection = cfg.memory, cfg.selection
    return memory


def run_session(job, t):
    """Train on task t plus the memory, update the memory, evaluate, save; returns the record.
    Under torchrun every rank trains on its shard and evaluates its share of the test set; rank 0
    alone writes."""
    cfg, data, model, memory, device, ctx = (job.cfg, job.data, job.model, job.memory, job.device,
                                             job.ctx)
    began = time.time()
    seed = session_seed(cfg, t)
    scfg = for_session(cfg, t)  # args.sessions[t] applied
    torch.manual_seed(seed)
    learner = MetaLearner(model, scfg, t, device, ctx)
    selection = (None if scfg.model_selection == "last" else
                 lambda: base_test_accuracy(model, data, t, scfg, device, ctx))
    try:
        loss = learner.train_session(data.train_loader(t, memory, seed, ctx),
                                     desc=f"session {t}/{cfg.num_task - 1}",
                                     test_accuracy=selection)
    except Diverged as e:  # nothing of session t is written; the finished ones stay as they are
        raise ConfigError(e.extended(f"nothing of session {t} was written; resume with "
                                     f"`{job.store.command(t)}`")) from None
    trained = time.time()
    _update_memory(job, t)
    results = evaluate(model, data, memory, t, scfg, device, seed, ctx)
    done = time.time()
    record = {"session": t, "seen_classes": (t + 1) * cfg.class_per_task,
              "continuum": cfg.continuum, **results, "eta": learner.eta, "variant": cfg.variant,
              "session_settings": session_settings(cfg, t), **learner.selection,
              "final_train_loss": loss, "train_loss_per_epoch": learner.epoch_losses,
              "memory_exemplars": len(memory),
              "train_seconds": trained - began, "eval_seconds": done - trained,
              "seconds": done - began, "device": str(device), "args": vars(cfg)}
    if ctx.enabled:
        record["world_size"] = ctx.world_size
    if ctx.is_main:
        _save_session(job, t, record)
    distributed.barrier(ctx)  # no rank starts the next session before session t is on disk
    return record


def _update_memory(job, t):
    """M(t): chosen once, on rank 0, and broadcast, so every rank replays the same exemplars."""
    memory, ctx = job.memory, job.ctx
    if ctx.is_main:
        memory.update(job.data, job.data.task_classes(t), t, job.model, job.device)
    if ctx.enabled:
        state = distributed.broadcast_object(memory.state_dict() if ctx.is_main else None, ctx)
        memory.exemplars = ReplayMemory.from_state(state).exemplars


def _save_session(job, t, record):
    """Model, memory, summary, report, and the record last: then session t is finished."""
    store, records = job.store, job.history + [record]
    record["checksums"] = {
        os.path.basename(store.model_file(t)): store.save_model(t, job.model),
        os.path.basename(store.memory_file(t)): store.save_memory(t, job.memory.state_dict())}
    write_text(store.summary_file, summary_csv(records))
    headline = _report(job.cfg, records, job.log)
    write_json(store.session_json(t), record)  # written last: the session is now finished
    job.log.info(format_table(record))
    if headline:
        job.log.info(headline)


def _report(cfg, records, log):
    """report.csv, report.md and accuracy.png over the sessions so far. A failure here must not cost
    the session its record: it is logged with the command that redoes the report. Returns the
    headline metrics as a line for the log, or None."""
    try:
        table = write_report([(os.path.normpath(cfg.checkpoint), records)], cfg.checkpoint)
    except Exception as e:  # plotting back ends and file systems fail in many ways
        log.warning(f"the report could not be written ({type(e).__name__}: {e}); run "
                    f"`python3 -m utils.report {cfg.checkpoint}` once the session has finished.")
        return None
    main = table[table.protocol == "task_agnostic"].iloc[0]
    forgetting = "" if main.avg_forgetting != main.avg_forgetting else \
        f", average forgetting {main.avg_forgetting:.2f}"
    return (f"task-agnostic: final {main.final_acc:.2f}, average incremental "
            f"{main.avg_incremental_acc:.2f}{forgetting}; report.md and accuracy.png in "
            f"{cfg.checkpoint}")

