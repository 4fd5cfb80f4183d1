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

import torch

from data_sources import build_network
from incremental_dataloader import IncrementalData
from utils.config import check_args, for_session, session_settings
from utils.data.memory import ReplayMemory
from utils.errors import ConfigError, Diverged
from utils.fast import distributed
from utils.fast.device import resolve_device
from utils.files import write_json, write_text
from utils.inference import base_test_accuracy, evaluate
from utils.logger import get_logger, quiet_logger
from utils.report.records import format_table, make_record, summary_csv
from utils.report.tables import write_report
from utils.run import overrides
from utils.run.epochs import train_session
from utils.run.methods import method_class
from utils.run.manifest import check_resume, read_manifest, rebuilt, resumed, started
from utils.run.restore import load_class_order, restore_data, restore_session
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


def session_seed(cfg, t):
    return cfg.seed * 1000 + t


@dataclass
class Job:
    """What every session of one launch shares: the checked args, the run's files, this process's
    place under torchrun, the session it starts at, the records of the finished sessions (appended
    to as sessions finish), the data, the network, the replay memory and the log."""
    cfg: SimpleNamespace
    store: RunStore
    ctx: distributed.DistContext
    start: int
    history: list
    data: IncrementalData
    model: torch.nn.Module
    memory: ReplayMemory
    log: object

    @property
    def device(self):
        return self.ctx.device


# A resume's findings, read before anything is written: args changed since the last finished
# session, the manifest, and that session's record.
Resume = namedtuple("Resume", "changes manifest last")


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
    history = [store.read_record(s) for s in range(start)]
    resume = _read_resume(cfg, store, history) if start else None
    data, model, memory = _prepare(cfg, store, history, ctx.device)
    distributed.broadcast_module_(model, ctx)  # identical start on every rank
    # Only rank 0 locks the folders, writes files and prints tables.
    with store.lock() if ctx.is_main else contextlib.nullcontext():
        log = _begin(cfg, store, ctx, start, data, resume) if ctx.is_main else quiet_logger()
        return _sessions(Job(cfg, store, ctx, start, history, data, model, memory, log))


def _read_resume(cfg, store, history):
    """The args changed since the last finished session (refusing those that would change what
    the finished sessions mean), and the manifest."""
    start = len(history)

    def saved_names():  # only read when a class list has moved
        return load_class_order(cfg, store).get("class_names")
    changes = check_resume(cfg, history[-1], store.session_json(start - 1), saved_names)
    return Resume(changes, read_manifest(store, start), history[-1])


def _prepare(cfg, store, history, device):
    """(data, model, memory): fresh at task 0; otherwise as the last finished session left them."""
    if history:
        data = restore_data(cfg, store, device)
        model, memory = restore_session(cfg, store, data, len(history) - 1, history[-1])
    else:
        data = IncrementalData(cfg, device=device)
        memory = ReplayMemory(cfg.memory, cfg.selection, cfg.seed)
        torch.manual_seed(cfg.seed)
        model = build_network(cfg.dataset, data.input_shape, cfg.num_class)
    return data, model.to(device), memory


def _begin(cfg, store, ctx, start, data, resume):
    """Clear what a killed run left half-written, write the run's own files, say what happens next;
    returns the log."""
    removed = store.remove_temporaries()
    log = get_logger(cfg.checkpoint)
    log.info(_start_line(cfg, store, ctx, start))
    if start == 0:
        write_json(store.class_order_file, {"class_order": data.class_order,
                                            "class_names": data.class_names})
        write_text(store.class_list_file, "".join(f"{name}\n" for name in data.class_names))
        write_json(store.manifest_file, started(cfg, store, start, ctx.device))
    else:
        _record_resume(cfg, store, ctx, start, resume, log)
    if removed:
        log.info(f"removed {len(removed)} half-written file(s) an interrupted run left: "
                 + ", ".join(removed))
    return log


def _record_resume(cfg, store, ctx, start, resume, log):
    manifest = resume.manifest or rebuilt(resume.last, store.session_json(start - 1))
    manifest, setup = resumed(manifest, cfg, store, start, ctx.device, resume.changes)
    write_json(store.manifest_file, manifest)
    if resume.changes:
        log.info("args changed since the finished sessions (recorded in manifest.json): "
                 + ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in resume.changes.items()))
    if setup:
        log.warning(f"resuming on another setup ({', '.join(setup)}): the sessions from here may "
                    "differ slightly from an uninterrupted run's.")


def _start_line(cfg, store, ctx, start):
    where = (f"resuming from finished session {start - 1} ({store.model_file(start - 1)}, "
             f"{store.memory_file(start - 1)})" if start else "starting afresh")
    ranks = f" × {ctx.world_size} ranks (torchrun)" if ctx.enabled else ""
    return (f"{store.script}: {method_class(cfg).describe(cfg)} on {cfg.dataset}, sessions {start}.."
            f"{cfg.num_task - 1} on {ctx.device}{ranks}, {where}; results to {cfg.checkpoint}, "
            f"weights to {cfg.savepoint}")


def _sessions(job):
    try:
        for t in range(job.start, job.cfg.num_task):
            job.history.append(run_session(job, t))
    except KeyboardInterrupt:
        # Ask the disk, not the loop: Ctrl-C may land after a session's record is in place.
        nxt = len(job.store.finished())
        job.log.error(f"interrupted in session {nxt}; sessions before it are saved: resume with "
                      f"`{job.store.command(nxt)}`." if nxt < job.cfg.num_task else
                      "interrupted after the last session was saved; the run is complete.")
        sys.exit(130)
    return job.history[job.start:]


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
    method = method_class(cfg)
    learner = method(model, scfg, t, device, ctx)
    selection = (None if scfg.model_selection == "last" else
                 lambda: base_test_accuracy(model, data, t, scfg, device, ctx))
    loader = data.training_loader(method.train_indices(data, t, memory), seed, ctx)
    try:
        trained = train_session(learner, loader, desc=f"session {t}/{cfg.num_task - 1}",
                                test_accuracy=selection)
    except Diverged as e:  # nothing of session t is written; the finished ones stay as they are
        raise ConfigError(e.extended(f"nothing of session {t} was written; resume with "
                                     f"`{job.store.command(t)}`")) from None
    trained_at = time.time()
    _update_memory(job, t)
    results = evaluate(model, data, memory, t, scfg, device, seed, ctx)
    done = time.time()
    training = {"method": cfg.method, **learner.summary(),
                "session_settings": session_settings(cfg, t), **trained.selection,
                "final_train_loss": trained.final_loss, "train_loss_per_epoch": trained.losses,
                "memory_exemplars": len(memory)}
    if ctx.enabled:
        training["world_size"] = ctx.world_size
    times = {"train_seconds": trained_at - began, "eval_seconds": done - trained_at,
             "seconds": done - began}
    record = make_record(t, cfg, results, training, times, device)
    if ctx.is_main:
        _save_session(job, t, record)
    distributed.barrier(ctx)  # no rank starts the next session before session t is on disk
    return record


def _update_memory(job, t):
    """M(t): chosen once, on rank 0, and broadcast, so every rank replays the same exemplars. A
    method that keeps no memory (fine-tuning) leaves it empty."""
    memory, ctx = job.memory, job.ctx
    if not method_class(job.cfg).keeps_memory:
        return
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

