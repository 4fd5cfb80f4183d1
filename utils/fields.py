"""Every field of ``args`` in one table: what it accepts, its default, what it means, and its kind, which
says what a resume, ``utils.run.evaluate`` and the report do with it.

Every list of fields elsewhere is a filter over ``FIELDS`` (``of_kind``): what a resume refuses, what
``args.sessions`` may set, what an evaluation may change, what the report pools over. ``--help`` and
docs/args.md are written from it: ``python3 -m utils.fields > docs/args.md`` (a test checks the page).
"""
import os
import sys
from dataclasses import dataclass
from numbers import Integral, Real

from data_sources import DATASETS, resizable

REQUIRED = object()  # no default: the args class must give the field
UNKNOWN = object()   # no value is known for a record that predates the field

# kind -> (what a field of that kind is, what a resume and utils.run.evaluate do when it changes)
KINDS = {
    "experiment": ("what the finished sessions mean", "a resume that changes it is refused"),
    "training": ("how a session trains", "a resume may change it for the sessions still to run"),
    "session": ("how a session trains; `args.sessions` may set it for one session alone",
                "a resume may change it for the sessions still to run"),
    "inference": ("how a session's models are tested",
                  "a resume or `utils.run.evaluate` may change it"),
    "speed": ("how fast it runs; the numbers may differ by rounding",
              "a resume or `utils.run.evaluate` may change it"),
    "machine": ("where it runs; the numbers are the same",
                "may change anywhere; the report pools runs that differ in it as seeds"),
    "place": ("where the run's files are",
              "may change anywhere (the models follow a moved checkpoint); the report pools over it"),
}


def _int(low=None):
    def check(v):
        return isinstance(v, Integral) and not isinstance(v, bool) and (low is None or v >= low)
    return check, f"an integer{'' if low is None else f' >= {low}'}"


def _real(low=0.0, strict=False):
    def check(v):
        if not isinstance(v, Real) or isinstance(v, bool):
            return False
        return v > low if strict else v >= low
    return check, f"a number {'>' if strict else '>='} {low}"


def _choice(*options):
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


def _switch(*options):
    return (lambda v: v is None or v in options), \
        "None (the variant's choice) or one of " + ", ".join(repr(o) for o in options)


def _str(empty=False):
    return (lambda v: isinstance(v, str) and (empty or v != "")), \
        "a string" if empty else "a non-empty string"


def _bool():
    return (lambda v: isinstance(v, bool)), "True or False"


def _milestones():
    def check(v):
        return isinstance(v, (list, tuple)) and all(
            isinstance(e, Integral) and not isinstance(e, bool) and e >= 0 for e in v)
    return check, "a list of epoch numbers >= 0"


CLASS_ORDERS = ("natural", "shuffled", "seed1993")


def _class_order():
    def check(v):
        return isinstance(v, str) and (v in CLASS_ORDERS or os.path.isfile(v))
    return check, ", ".join(repr(o) for o in CLASS_ORDERS) + \
        " or the path of an existing text file of class names"


def _image_size():
    def check(v):
        return v is None or (isinstance(v, Integral) and not isinstance(v, bool) and v >= 16)
    return check, "None (the data set's standard size) or an integer >= 16"


def _device():
    def check(v):
        return isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
    return check, "'auto', 'cpu' or 'cuda[:N]'"


def _r_newest():
    return (lambda v: v is None or _int(1)[0](v)), "None (the same as r) or an integer >= 1"


def _batch_forward():
    return (lambda v: v is None or isinstance(v, bool)), "None (the variant's choice), True or False"


def _sessions():
    return (lambda v: isinstance(v, dict)), "a dict {session: {field: value}}"


@dataclass(frozen=True)
class Field:
    """One field of ``args``. ``fixed``: for an experiment field, what changing it on resume would
    change (the refusal's sentence says it). ``before``: what a record that predates the field ran
    with, where that is not the default. ``see``: (title, docs page#anchor) of its longer story."""
    name: str
    checked: tuple          # (check(value) -> bool, what it accepts)
    meaning: str
    kind: str
    default: object = REQUIRED
    fixed: str = None
    before: object = UNKNOWN
    gpu_only: bool = False
    see: tuple = None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert (self.fixed is not None) == (self.kind == "experiment"), self.name

    def check(self, value):
        return self.checked[0](value)

    @property
    def valid(self):
        return self.checked[1]

    def recorded(self, old_args):
        """Its value in a record's args; for a record older than the field, what that run used
        (``before``, else the default; UNKNOWN for a required field)."""
        if self.name in old_args:
            return old_args[self.name]
        if self.before is not UNKNOWN:
            return self.before
        return UNKNOWN if self.default is REQUIRED else self.default


VARIANTS_SEE = ("Where we differ from the authors' release", "release.md#the-variants-and-their-switches")
THE_META_UPDATE = "the meta-update"

_FIELDS = [
    Field("dataset", _choice(*DATASETS), "the data set, which also picks the network",
          "experiment", fixed="the data and the network",
          see=("Data sets, pipelines and networks", "data.md")),
    Field("checkpoint", _str(),
          "folder for results: session JSONs, `summary.csv`, `class_order.json`, `classes.txt`, "
          "`log.txt`", "place"),
    Field("savepoint", _str(),
          "folder for each session's model and replay memory (the scripts: `models/` + the "
          "checkpoint's path)", "place"),
    Field("data_path", _str(empty=True),
          "where the data set lives or is downloaded to (unused by digits and digits32)", "place"),
    Field("num_class", _int(1), "classes in the run", "experiment", fixed="the task split"),
    Field("class_per_task", _int(1), "classes a task", "experiment",
          fixed="the task split and the head rows each task owns"),
    Field("num_task", _int(1), "tasks; `num_task × class_per_task` must equal `num_class`",
          "experiment", fixed="the task split and η = exp(−β·t/T)"),
    Field("class_order", _class_order(),
          "`\"natural\"` (0, 1, …; the release's), `\"shuffled\"` (seeded by `seed`), `\"seed1993\"` "
          "(the permutation of PyCIL and FACIL's `cifar100_icarl`: numpy seeded 1993, whatever "
          "`seed`) or the path of a text file naming classes one a line (e.g. another run's "
          "`classes.txt`); the first `num_class` are used; saved with the run", "experiment",
          fixed="the class order"),
    Field("seed", _int(0),
          "seeds the class order, digits split, initialisation, loaders, memory and continua",
          "experiment", fixed="the data split and every session's random draws"),
    Field("memory", _int(1),
          "exemplars kept in total, split equally over the seen classes (at least one a class)",
          "experiment", fixed="the replay memory, whose classes must hold equal shares of it"),
    Field("selection", _choice("random", "herding", "first"),
          "exemplar choice: `\"first\"` m of each class in data-set order (the release's), "
          "`\"random\"` (seeded) or `\"herding\"` (iCaRL)", "experiment",
          fixed="the rule that chose the replay memory's exemplars"),
    Field("method", _choice("itaml", "er", "finetune", "joint"),
          "what trains: `\"itaml\"` (Alg. 1 as `variant` says), `\"er\"` (experience replay: one "
          "step a mini-batch of the same data and memory), `\"finetune\"` (ER without a memory) or "
          "`\"joint\"` (every seen task's data); every method is evaluated alike", "experiment",
          default="itaml", fixed="the method that trained the finished sessions",
          see=("Baselines under iTAML's protocol", "study.md#baselines-under-itamls-protocol")),
    Field("er_loss", _choice("ce", "task_bce"),
          "the baselines' loss: cross-entropy over the seen classes (`\"ce\"`, the field's ER), or "
          "BCE on each sample's own task slice, iTAML's objective without the meta-update "
          "(`\"task_bce\"`); iTAML ignores it", "experiment", default="ce",
          fixed="the baselines' objective"),
    Field("variant", _choice("paper", "official"),
          "`\"official\"`: the release's training, which made the paper's numbers; `\"paper\"`: "
          "Alg. 1 as printed; a preset of the four switches below", "experiment",
          fixed=THE_META_UPDATE, see=VARIANTS_SEE),
    Field("task_start", _switch("base", "previous"),
          "each task's inner loop starts from Φ_base (`\"base\"`) or from the weights the previous "
          "task left (`\"previous\"`)", "experiment", default=None, fixed=THE_META_UPDATE),
    Field("meta_target", _switch("mean", "last"),
          "θ moves towards the mean of the tasks' θ_k, each φ_k towards its own (`\"mean\"`), or all "
          "of Φ towards the last task's weights (`\"last\"`)", "experiment", default=None,
          fixed=THE_META_UPDATE),
    Field("task_optimizer", _switch("per_task", "shared"),
          "one optimizer state a task (`\"per_task\"`) or one for all (`\"shared\"`)", "experiment",
          default=None, fixed=THE_META_UPDATE),
    Field("batch_forward", _batch_forward(),
          "the release's extra train-mode forward of the whole mini-batch, which moves BatchNorm's "
          "statistics (`True`)", "experiment", default=None, before=False,
          fixed="the BatchNorm statistics the meta-update keeps"),
    Field("beta", _real(0.0), "decay of η = exp(−β·t/T), t the 0-based session", "training"),
    Field("r", _int(1), "inner-loop optimizer steps per task and mini-batch", "session"),
    Field("r_newest", _r_newest(), "inner steps of the session's newest task; `None`: `r`",
          "session", default=None),
    Field("optimizer", _choice("sgd", "adam", "radam"), "the inner loop's `torch.optim` optimizer",
          "training"),
    Field("lr", _real(0.0, strict=True), "learning rate of the inner loop", "session"),
    Field("momentum", _real(0.0), "SGD's momentum (the other optimizers ignore it)", "session"),
    Field("weight_decay", _real(0.0), "L2 penalty of the optimizer", "session"),
    Field("epochs", _int(1), "epochs a session", "session"),
    Field("schedule", _milestones(),
          "0-based epochs at which the learning rate is multiplied by `gamma`", "session"),
    Field("gamma", _real(0.0, strict=True), "learning-rate decay factor of `schedule`", "session"),
    Field("model_selection", _choice("last", "release"),
          "the last epoch's model (`\"last\"`), or the release's best late epoch by test accuracy "
          "(`\"release\"`)", "session", default="last"),
    Field("sessions", _sessions(),
          "`{session: {field: value}}`: one session's own settings of the fields of kind session "
          "(MNIST and SVHN ship the release's)", "training", default={}),
    Field("train_batch", _int(1), "mini-batch of Alg. 1 (new task and memory shuffled together)",
          "training"),
    Field("test_batch", _int(1), "evaluation batch", "inference"),
    Field("num_workers", _int(0), "DataLoader workers (decoding and augmentation on the CPU)",
          "machine"),
    Field("continuum", _int(1), "test samples a continuum shares (the paper's p; 20 in its "
          "analysis)", "inference"),
    Field("adapt_lr", _real(0.0, strict=True),
          "the single update's Adam learning rate (1e-3 in the release)", "inference"),
    Field("adapt_epochs", _int(0),
          "the single update's epochs over the task's exemplars (1 in the release; 0: no update)",
          "inference"),
    Field("adapt_batch", _int(1), "the single update's batch (64 in the release)", "inference"),
    Field("adapt_bn", _choice("release", "reestimate"),
          "BatchNorm's statistics after the single update: as its train-mode passes left them "
          "(`\"release\"`) or measured anew on the task's plain exemplars (`\"reestimate\"`)",
          "inference", default="release",
          see=("The single update on BatchNorm networks",
               "study.md#the-single-update-on-batchnorm-networks")),
    Field("device", _device(), "`\"auto\"` (a GPU when one is visible), `\"cpu\"` or `\"cuda[:N]\"`",
          "machine", default="auto"),
    Field("augmentation", _choice("release", "corrected"),
          "the release's pipelines and statistics (`\"release\"`) or ours (`\"corrected\"`)",
          "experiment", default="release", before="corrected",
          fixed="the images' augmentation and normalisation the saved weights were trained on",
          see=("Augmentation and normalisation", "data.md#augmentation-and-normalisation")),
    Field("image_size", _image_size(),
          "side of the square crops of the data sets read from image files ("
          + ", ".join(resizable()) + "); `None`: the data set's standard size", "experiment",
          default=None, fixed="the network and its input"),
    Field("channels_last", _bool(), "convolutions and image batches in the channels-last memory "
          "layout (the CNN scripts ship `True`)", "speed", default=False,
          see=("Speed", "speed.md")),
    Field("amp", _bool(), "bf16 autocast of forward passes and losses; weights and optimizer "
          "states stay float32", "speed", default=False, gpu_only=True),
    Field("compile", _bool(), "`torch.compile` of the inner loop's forward", "speed",
          default=False, gpu_only=True),
    Field("gpu_data", _bool(), "the data sets held in memory kept as one tensor on the GPU, "
          "batches gathered, augmented and normalised there", "speed", default=False,
          gpu_only=True),
    Field("batched_tasks", _bool(), "the first inner step of all tasks of a mini-batch as one "
          "padded forward/backward (`torch.func.vmap`); needs `task_start = \"base\"`", "speed",
          default=False),
]
FIELDS = {f.name: f for f in _FIELDS}

# The training the two variants stand for, one switch per way the release's computation differs
# from Alg. 1 as printed (docs/release.md, "The variants and their switches"). A switch left at
# None takes its variant's value; set one to change that step alone.
VARIANTS = {
    "paper": dict(task_start="base", meta_target="mean", task_optimizer="per_task",
                  batch_forward=False),
    "official": dict(task_start="previous", meta_target="last", task_optimizer="shared",
                     batch_forward=True),
}
SWITCHES = tuple(VARIANTS["paper"])


def of_kind(*kinds):
    """The names of the fields of these kinds, in the table's order."""
    return tuple(f.name for f in _FIELDS if f.kind in kinds)


def gpu_only():
    return tuple(f.name for f in _FIELDS if f.gpu_only)


# ------------------------------------------------------------------------- --help and docs/args.md

def _plain(text):
    return text.replace("`", "")


def help_lines():
    """One entry per field for ``--help``: name, meaning, what it accepts, and the default."""
    import textwrap
    width = max(map(len, FIELDS))
    lines = []
    for f in _FIELDS:
        default = "" if f.default is REQUIRED else f"; default {f.default!r}"
        text = f"{_plain(f.meaning)} [{f.kind}] ({f.valid}{default})"
        lines += textwrap.wrap(text, 100, initial_indent=f"  {f.name:<{width}}  ",
                               subsequent_indent=" " * (width + 4))
    return lines


def _cell(text):
    return text.replace("|", "\\|")


def reference():
    """docs/args.md."""
    head = ["# `args`: every field", "", "[Back to the README](../README.md)", "",
            "Each `train_<dataset>.py` writes out every field with a one-line comment. A misspelt or "
            "missing field, or a value of the wrong kind, stops the run before any data is read, "
            "with one sentence naming the field. This page is written from the table of fields, "
            "`utils/fields.py` (`python3 -m utils.fields > docs/args.md`), in its order; "
            "`python3 train_X.py --help` prints the same. A field without a default must be given.",
            "", "Each field has a kind, which says what a resume "
            "([`args` on resume](running.md#args-on-resume)), an evaluation of a finished run "
            "([Evaluating a finished run again](running.md#evaluating-a-finished-run-again)) and "
            "the pooled report do when it changes:", "", "| kind | what it is | when it changes |",
            "|---|---|---|"]
    head += [f"| {kind} | {what} | {change} |" for kind, (what, change) in KINDS.items()]
    head += ["", "| field | kind | meaning | accepts | default |", "|---|---|---|---|---|"]
    rows = []
    for f in _FIELDS:
        meaning = f.meaning + (f" ([{f.see[0]}]({f.see[1]}))" if f.see else "")
        if f.fixed:
            meaning += f"; fixed for a run: it decides {f.fixed}"
        default = "" if f.default is REQUIRED else f"`{f.default!r}`"
        rows.append(f"| `{f.name}` | {f.kind} | {_cell(meaning)} | {_cell(f.valid)} | {default} |")
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
