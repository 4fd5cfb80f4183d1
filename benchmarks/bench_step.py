"""How close iTAML's meta-training step and inference come to plain training, on CIFAR-shaped data.

    python3 benchmarks/bench_step.py [--device cuda] [--reps 3] [--batched] [--json bench.json]

In one process, on synthetic 3×32×32 images, 100 classes, 10 a task, and the CIFAR network
(``resnet.ReducedResNet18``) with ``train_cifar.py``'s args, it times, for both presets (``--presets``:
``paper``, Alg. 1 as printed, and ``official``, the release's training that ``train_cifar.py`` ships,
whose extra forward of the whole batch is part of its step):

- ``plain``: one ordinary supervised step, BCE over all 100 seen classes, on a batch of 128;
- ``itaml``: ``MetaLearner.meta_step`` on a batch of 128 holding 1, 5 or 10 tasks, r = 1 and 2;
- ``naive``: the same update written the straightforward way (``tests/support/naive.py``);
- ``itaml_batched``: ``meta_step`` with ``args.batched_tasks`` (every task's first inner step in one
  padded forward/backward), where the tasks all start from the base (the paper preset), and only
  where it can pay: on a GPU, or with ``--batched`` (on the CPU its padding costs many plain steps
  and gigabytes of memory);
- ``er``: ``baselines.ExperienceReplay.step``, experience replay's one step on the whole batch (the
  default ``er_loss``), on the batches of 1, 5 and 10 tasks, each timed right after a plain step
  (target: at most 1.05 plain);
- ``eval``: ``evaluate`` (all four protocols) over 10,000 test images at session 9, the adaptation
  on the 2,000 exemplars included, against one plain forward pass over the same images.

A batch with n tasks is drawn from the training pool of session n − 1 of CIFAR-100 10×10: the new
task's 5,000 images and 2,000 exemplars spread over the earlier tasks, so most of it is the new task
and the earlier tasks hold a few samples each, as in a real run. Repetitions are interleaved, each
case's steps of both presets timed right after a plain step, and every ratio is the median over the
repetitions of the ratio within one repetition, which cancels most of a shared machine's drift.
The JSON keeps each preset's ratios under ``presets`` and the process's peak resident memory
(``peak_rss_mb``). The full-run estimate scales the measured times of ``train_cifar.py``'s preset
(official) to the 70 epochs of every session.
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import train_cifar  # noqa: E402
from baselines import ExperienceReplay  # noqa: E402
from incremental_dataloader import IncrementalData  # noqa: E402
from learner_task_itaml import MetaLearner, make_optimizer  # noqa: E402
from resnet import ReducedResNet18  # noqa: E402
from tests.support.naive import NaiveMetaLearner  # noqa: E402
from utils.config import check_args  # noqa: E402
from utils.data.memory import ReplayMemory  # noqa: E402
from utils.data.sources import Source, TensorData, Tensors  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.fast.device import autocast, prepare_model, to_input  # noqa: E402
from utils.inference import evaluate, predict_logits  # noqa: E402
from utils.tasks import class_at, seen_classes, task_classes  # noqa: E402

TASK_COUNTS = (1, 5, 10)
R_VALUES = (1, 2)
NEW_TASK_IMAGES = 5000  # CIFAR-100: 500 training images a class, 10 classes a task
# The JSON's ratios, each case's the median over repetitions of the ratio within one:
RATIOS = ("ratio_itaml_vs_plain",     # itaml ÷ (r × plain)
          "speedup_vs_naive",         # naive ÷ itaml
          "ratio_naive_vs_plain",     # naive ÷ (r × plain): the most speedup_vs_naive can reach
          "ratio_batched_vs_plain",   # itaml_batched ÷ (r × plain)
          "speedup_batched_vs_loop")  # itaml ÷ itaml_batched


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:N]'")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every training step")
    p.add_argument("--eval-reps", type=int, default=None,
                   help="repetitions of the evaluation (default: 1 on the CPU, 3 on a GPU)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--amp", action="store_true", help="args.amp: bf16 autocast (GPU only)")
    p.add_argument("--compile", action="store_true", help="args.compile (GPU only)")
    p.add_argument("--presets", default="paper,official",
                   help="the trainings to time, comma-separated (default: both; train_cifar.py "
                        "ships official)")
    p.add_argument("--batched", action="store_true",
                   help="also time args.batched_tasks on the CPU (on a GPU it is always timed)")
    p.add_argument("--no-channels-last", action="store_true",
                   help="args.channels_last = False (train_cifar.py ships True)")
    # Smaller sizes for the test of this script; the defaults are the issue's.
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--memory", type=int, default=2000)
    return p.parse_args(argv)


def make_cfg(opts, variant="official"):
    over = dict(device=opts.device, amp=opts.amp, compile=opts.compile, num_workers=0,
                channels_last=not opts.no_channels_last, memory=opts.memory,
                gpu_data=opts.device.startswith("cuda"), train_batch=opts.batch, variant=variant)
    return check_args(type("args", (train_cifar.args,), over))


def presets(opts):
    names = [name.strip() for name in opts.presets.split(",") if name.strip()]
    unknown = [name for name in names if name not in ("paper", "official")]
    if unknown or not names:
        raise ConfigError(f"--presets {opts.presets!r} must name paper, official or both.")
    return names


def time_batched(opts):
    """The batched step is timed where it can pay, a GPU, or when asked for."""
    return opts.batched or torch.device(opts.device).type == "cuda"


def synced(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synced(device)
    began = time.perf_counter()
    fn()
    synced(device)
    return time.perf_counter() - began


# ---------------------------------------------------------------- training steps

def session_batch(cfg, tasks, size, generator):
    """Labels of a mini-batch of session ``tasks`` − 1: one sample of every task, the rest drawn
    from the new task's images and the memory's exemplars (equal shares of the earlier classes)."""
    cpt, t = cfg.class_per_task, tasks - 1
    pool = np.repeat(task_classes(t, cpt), NEW_TASK_IMAGES // cpt)
    if t > 0:
        old = seen_classes(t - 1, cpt)
        pool = np.concatenate([pool, np.repeat(np.arange(old), cfg.memory // old)])
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    one_each = class_at(rng.integers(cpt, size=tasks), np.arange(tasks), cpt)
    y = np.concatenate([one_each, rng.choice(pool, size - tasks, replace=False)])
    return torch.from_numpy(rng.permutation(y))


class Plain:
    """One ordinary supervised step: BCE with logits over all seen classes, the same optimizer,
    memory layout and autocast as the learner's."""

    def __init__(self, model, cfg, device, seen):
        self.model = prepare_model(model, cfg).train()
        self.cfg, self.device, self.seen = cfg, device, seen
        self.opt = make_optimizer(cfg, model.parameters(), cfg.lr)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.cfg, self.device):
            logits = self.model(x)[:, :self.seen]
            loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(y, self.seen).float())
        loss.backward()
        self.opt.step()


def step_cases(cfgs, device, opts, model):
    """The plain step, and every (tasks, r) case one after another: its name and, for every
    preset, our learner, the naive one and, where the tasks all start from the base and the
    batched step is timed, our learner with ``batched_tasks`` (else None), each on its own copy of
    the model. Made one case at a time, so a case's learners are gone before the next's exist."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(opts.batch, 3, opts.image_size, opts.image_size, generator=generator)
    any_cfg = next(iter(cfgs.values()))
    labels = {tasks: session_batch(any_cfg, tasks, opts.batch, generator) for tasks in TASK_COUNTS}
    plain = Plain(copy.deepcopy(model), any_cfg, device, any_cfg.num_class)
    xp = to_input(x, any_cfg, device)
    yp = torch.randint(any_cfg.num_class, (opts.batch,), generator=generator).to(device)

    def cases():
        for tasks in TASK_COUNTS:
            y = labels[tasks]
            for r in R_VALUES:
                yield f"tasks{tasks}_r{r}", {preset: _preset_steps(cfg, r, tasks, model, x, y,
                                                                   device, opts)
                                             for preset, cfg in cfgs.items()}
    return cases(), lambda: plain.step(xp, yp)


def _preset_steps(cfg, r, tasks, model, x, y, device, opts):
    case_cfg = copy.copy(cfg)
    case_cfg.r = r
    ours = MetaLearner(copy.deepcopy(model).train(), case_cfg, tasks - 1, device)
    plain_cfg = copy.copy(case_cfg)
    plain_cfg.channels_last = plain_cfg.amp = plain_cfg.compile = False
    naive = NaiveMetaLearner(copy.deepcopy(model).train(), plain_cfg, tasks - 1)
    batched = batched_learner(model, case_cfg, tasks - 1, device) if time_batched(opts) else None
    xd, yd = x.to(device), y.to(device)
    return (lambda: ours.meta_step(xd, y).item(),  # ours plans its task split from host labels
            lambda: naive.meta_step(xd, yd),
            None if batched is None else lambda: batched.meta_step(xd, y).item())


def batched_learner(model, cfg, session, device):
    """Our learner with ``batched_tasks`` on its own copy, or None where the preset's tasks start
    from the previous task's weights (they cannot run together)."""
    if cfg.task_start != "base":
        return None
    batched_cfg = copy.copy(cfg)
    batched_cfg.batched_tasks = True
    return MetaLearner(copy.deepcopy(model).train(), batched_cfg, session, device)


def bench_steps(cfgs, device, opts, model):
    """Median seconds of every step ({"plain": s, preset: {"itaml_<case>": s, ...}}) and each
    preset's ratios ({preset: {ratio: {case: median}}}). Case by case: its steps warmed up once,
    then each repetition times a plain step and, right after it, every preset's steps."""
    cases, plain = step_cases(cfgs, device, opts, model)
    plain()
    plain_times = []
    times = {p: {} for p in cfgs}
    ratios = {p: {key: {} for key in RATIOS} for p in cfgs}
    for case, steps in cases:
        r = int(case.rsplit("_r", 1)[1])
        for preset_steps in steps.values():  # warm-up: optimizer states, kernels, compilation
            for step in filter(None, preset_steps):
                step()
        got = {p: {key: [] for key in RATIOS} for p in cfgs}
        took = {p: {} for p in cfgs}
        for _ in range(opts.reps):
            tp = timed(plain, device)
            plain_times.append(tp)
            for preset, (ours, naive, batched) in steps.items():
                ti, tn = timed(ours, device), timed(naive, device)
                tb = None if batched is None else timed(batched, device)
                for kind, t in (("itaml", ti), ("naive", tn), ("itaml_batched", tb)):
                    if t is not None:
                        took[preset].setdefault(f"{kind}_{case}", []).append(t)
                got[preset]["ratio_itaml_vs_plain"].append(ti / (r * tp))
                got[preset]["speedup_vs_naive"].append(tn / ti)
                got[preset]["ratio_naive_vs_plain"].append(tn / (r * tp))
                if tb is not None:
                    got[preset]["ratio_batched_vs_plain"].append(tb / (r * tp))
                    got[preset]["speedup_batched_vs_loop"].append(ti / tb)
        for preset in cfgs:
            times[preset].update({k: statistics.median(v) for k, v in took[preset].items()})
            for key, values in got[preset].items():
                if values:
                    ratios[preset][key][case] = statistics.median(values)
        del steps
        release_memory()  # this case's learners, optimizers and graphs
    return {"plain": statistics.median(plain_times), **times}, ratios


def bench_er(cfg, device, opts, model):
    """Experience replay's step against the plain step, on the batches of every task count:
    ({"er_tasks<n>": median seconds}, {"tasks<n>": median of er ÷ plain within a repetition})."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(opts.batch, 3, opts.image_size, opts.image_size, generator=generator)
    er_cfg = copy.copy(cfg)
    er_cfg.method = "er"
    plain = Plain(copy.deepcopy(model), cfg, device, cfg.num_class)
    xp = to_input(x, cfg, device)
    yp = torch.randint(cfg.num_class, (opts.batch,), generator=generator).to(device)
    seconds, ratios = {}, {}
    for tasks in TASK_COUNTS:
        y = session_batch(cfg, tasks, opts.batch, generator)
        er = ExperienceReplay(copy.deepcopy(model).train(), er_cfg, tasks - 1, device)
        xd, yd = x.to(device), y.to(device)

        def step():
            er.step(xd, yd)
        step(), plain.step(xp, yp)  # warm-up
        took, got = [], []
        for _ in range(opts.reps):
            tp, te = timed(lambda: plain.step(xp, yp), device), timed(step, device)
            took.append(te)
            got.append(te / tp)
        seconds[f"er_tasks{tasks}"] = statistics.median(took)
        ratios[f"tasks{tasks}"] = statistics.median(got)
        del er
        release_memory()
    return seconds, ratios


# ---------------------------------------------------------------- inference

def eval_setup(cfg, opts, model):
    """Session 9 of a synthetic CIFAR-100: 10,000 test images, a memory of 2,000 exemplars."""
    g = torch.Generator().manual_seed(1)
    side, classes = opts.image_size, cfg.num_class
    per_class = max(1, opts.test_images // classes)
    test_labels = np.repeat(np.arange(classes), per_class)
    train_labels = np.repeat(np.arange(classes), max(1, cfg.memory // classes))
    test = TensorData(torch.randn(len(test_labels), 3, side, side, generator=g), test_labels)
    train = TensorData(torch.randn(len(train_labels), 3, side, side, generator=g), train_labels)
    source = Source(train, train, test, train.labels, test.labels, classes, (3, side, side),
                    [str(c) for c in range(classes)], Tensors(train.x, test.x))
    data = IncrementalData(cfg, source=source)
    memory = ReplayMemory(cfg.memory, "random", cfg.seed)
    session = cfg.num_task - 1
    memory.update(data, list(range(classes)), session)
    prepare_model(model, cfg)
    return data, memory, session


def bench_eval(cfg, device, opts, model):
    data, memory, session = eval_setup(cfg, opts, model)
    indices = data.seen_test_indices(session)

    def forward():
        predict_logits(model, data.loader(data.test_set, indices, cfg.test_batch), device, cfg)

    def inference():
        evaluate(model, data, memory, session, cfg, device, seed=session)
    reps = opts.eval_reps or (3 if torch.device(device).type == "cuda" else 1)
    forwards, evals, ratios = [], [], []
    for _ in range(reps):
        # The forward pass on both sides of each evaluation; the faster of the two is the one a
        # neighbour's burst of work on a shared machine spared (which only makes the ratio larger).
        before, ev, after = timed(forward, device), timed(inference, device), timed(forward, device)
        forwards.append(min(before, after))
        evals.append(ev)
        ratios.append(ev / min(before, after))
    return (statistics.median(forwards), statistics.median(evals), statistics.median(ratios),
            len(indices))


# ---------------------------------------------------------------- report

def full_run_hours(cfg, med, forward_s, eval_s, test_images):
    """The CIFAR-100 10×10 run of train_cifar.py (70 epochs a session) from the measured times:
    session t's step takes the r = 1 time interpolated at t + 1 tasks; its evaluation takes the
    forward passes in proportion to its test images plus the adaptation on the exemplars."""
    counts = list(TASK_COUNTS)
    steps = [med[f"itaml_tasks{n}_r1"] for n in counts]
    per_image = forward_s / test_images
    adaptation = max(0.0, eval_s - 2 * forward_s)
    total = 0.0
    for t in range(cfg.num_task):
        pool = NEW_TASK_IMAGES + (cfg.memory if t else 0)
        step = float(np.interp(t + 1, counts, steps))
        images = (t + 1) * test_images / cfg.num_task
        evaluation = per_image * images if t == 0 else 2 * per_image * images + adaptation
        total += cfg.epochs * math.ceil(pool / cfg.train_batch) * step + evaluation
    return total / 3600


def table(med, ratios, forward_s, eval_s, eval_ratio):
    rows = [f"{'preset':<10}{'case':<14}{'plain s':>10}{'itaml s':>10}{'naive s':>10}"
            f"{'itaml_batched s':>17}{'itaml/(r·plain)':>17}{'naive/itaml':>13}"
            f"{'naive/(r·plain)':>17}{'batched/(r·plain)':>19}{'itaml/batched':>15}"]

    def cell(value, width):  # "-" where the preset has no batched step, or it was not timed
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"
    for preset, got in ratios.items():
        sec = med[preset]
        for case in got["ratio_itaml_vs_plain"]:
            rows.append(f"{preset:<10}{case:<14}{med['plain']:>10.3f}{sec['itaml_' + case]:>10.3f}"
                        f"{sec['naive_' + case]:>10.3f}{cell(sec.get('itaml_batched_' + case), 17)}"
                        f"{got['ratio_itaml_vs_plain'][case]:>17.3f}"
                        f"{got['speedup_vs_naive'][case]:>13.3f}"
                        f"{got['ratio_naive_vs_plain'][case]:>17.3f}"
                        f"{cell(got['ratio_batched_vs_plain'].get(case), 19)}"
                        f"{cell(got['speedup_batched_vs_loop'].get(case), 15)}")
    rows += [f"{'er':<10}{case:<14}{med['er']['er_' + case]:>10.3f}  er/plain {ratio:.3f}"
             for case, ratio in med["er_ratios"].items()]
    rows.append(f"eval at session 9: {eval_s:.2f} s, one forward pass {forward_s:.2f} s, "
                f"ratio {eval_ratio:.3f}")
    return "\n".join(rows)


def release_memory():
    """Hand freed memory back to the system, so that the evaluation's peak does not stack on what
    the allocator kept of the training steps' (glibc keeps freed blocks otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def device_name(device):
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def main(argv=None):
    opts = parse(sys.argv[1:] if argv is None else argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        cfgs = {preset: make_cfg(opts, preset) for preset in presets(opts)}
    except ConfigError as e:  # e.g. --device cuda without a GPU: one sentence, as the scripts do
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    device = torch.device(opts.device)
    torch.manual_seed(0)
    any_cfg = next(iter(cfgs.values()))
    model = ReducedResNet18((3, opts.image_size, opts.image_size), any_cfg.num_class).to(device)
    med, ratios = bench_steps(cfgs, device, opts, model)
    release_memory()  # the steps' learners and graphs are gone: give their memory back first
    med["er"], med["er_ratios"] = bench_er(any_cfg, device, opts, model)
    forward_s, eval_s, eval_ratio, test_images = bench_eval(any_cfg, device, opts, model)
    print(table(med, ratios, forward_s, eval_s, eval_ratio))
    shipped = "official" if "official" in cfgs else next(iter(cfgs))  # train_cifar.py's preset
    result = {
        "presets": {p: {**ratios[p], "seconds": med[p]} for p in cfgs},
        "er": {"ratio_er_vs_plain": med["er_ratios"], "seconds": med["er"]},
        "ratio_eval_vs_forward": eval_ratio,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": device_name(device),
        "seconds": {"plain": med["plain"]}, "eval_seconds": eval_s, "forward_seconds": forward_s,
        "test_images": test_images,
        "estimated_full_cifar100_run_hours": full_run_hours(any_cfg, med[shipped], forward_s,
                                                            eval_s, test_images),
        "estimate_preset": shipped,
        "settings": {"batch": opts.batch, "reps": opts.reps, "channels_last": any_cfg.channels_last,
                     "amp": any_cfg.amp, "compile": any_cfg.compile, "gpu_data": any_cfg.gpu_data,
                     "optimizer": any_cfg.optimizer, "presets": list(cfgs),
                     "batched": time_batched(opts), "torch": torch.__version__},
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"estimated full CIFAR-100 run (10 sessions × {any_cfg.epochs} epochs, {shipped}): "
          f"{result['estimated_full_cifar100_run_hours']:.1f} h; peak resident memory "
          f"{result['peak_rss_mb']:.0f} MB")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
