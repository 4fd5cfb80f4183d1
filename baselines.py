"""The baselines, held to iTAML's protocol: experience replay (``args.method = "er"``), fine-tuning
(``"finetune"``, the lower bound) and joint training (``"joint"``, the upper bound). Each is one
``Method`` (utils/method.py), as iTAML's ``MetaLearner`` is, so every one trains through the same
session loop on the same data, memory, network, optimizer, schedule and epochs, and is evaluated by
the same four protocols (utils/inference.py).

What differs is only the per-batch step and what a session trains on:
  - ER: D(t) ∪ M(t−1), as iTAML; one optimizer step per mini-batch on the whole batch's loss.
  - fine-tuning: D(t) alone, and no replay memory (so the single update has no exemplars).
  - joint: the training data of every task seen so far; the replay memory is kept, for the single
    update only.

``args.er_loss`` is the loss of all three: "ce" (the default), cross-entropy over the classes seen so
far, the ER of Mammoth and Avalanche and the kind of loss the paper's baselines were trained with; or
"task_bce", iTAML's BCE with logits on each sample's own task slice, averaged over the batch: iTAML's
objective without the meta-learning, so iTAML − ER(task_bce) is what the meta-update buys. "ce" is
the default because it is the baseline a reader expects: "task_bce" never sets the logits of one
task against another's, so a prediction over all seen classes (per sample, the base model) ranks
uncalibrated heads, and fine-tuning with it leaves the old tasks' rows untouched, no lower bound
(docs/study.md, *Baselines under iTAML's protocol*, has both).
"""
import numpy as np
import torch
import torch.nn.functional as F

from learner_task_itaml import make_optimizer, single_sample_guard
from utils.fast import distributed
from utils.fast.device import autocast, prepare_model, to_input
from utils.method import Method
from utils.tasks import class_at, seen_classes, task_of, within_task


def er_loss(logits, y, cfg, session, reduction="mean"):
    """``args.er_loss`` of a batch: "task_bce", the mean over samples and over their task's C
    entries of BCE with logits on each sample's own task slice (a task's share is iTAML's
    ``task_loss``); "ce", cross-entropy over the classes seen after ``session``. ``reduction``
    "sum": the sum over samples instead (the C entries still averaged), for a mean over ranks."""
    cpt = cfg.class_per_task
    if cfg.er_loss == "ce":
        return F.cross_entropy(logits[:, :seen_classes(session, cpt)], y, reduction=reduction)
    task = task_of(y, cpt)
    columns = class_at(torch.arange(cpt, device=y.device), task[:, None], cpt)
    target = F.one_hot(within_task(y, task, cpt), cpt).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.gather(1, columns), target,
                                              reduction=reduction)
    return loss / cpt if reduction == "sum" else loss


class ExperienceReplay(Method):
    """Experience replay: one optimizer step a mini-batch of D(t) ∪ M(t−1) on ``er_loss``. One
    optimizer for the session, built as iTAML's (``make_optimizer``: the same SGD, Adam or RAdam
    with the same lr, momentum and weight decay); the args of the meta-update (r, β and the
    variant's switches) do not apply.

    Under torchrun the global mini-batch's mean loss is the sum of every rank's samples' losses
    over the global count, so one SUM all-reduce of the gradients gives every rank the single
    process's gradient; BatchNorm's running statistics are then averaged over the ranks."""

    def __init__(self, model, cfg, session, device="cpu", ctx=distributed.DistContext()):
        super().__init__(model, cfg, session, device, ctx)
        prepare_model(model, cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, self.params, cfg.lr)
        self.forward = torch.compile(model) if cfg.compile else model

    @staticmethod
    def describe(cfg):
        return f"experience replay (er_loss={cfg.er_loss!r})"

    def summary(self):
        return {"er_loss": self.cfg.er_loss}

    def set_lr(self, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, x, y):
        x, y = to_input(x, self.cfg, self.device), y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=False)
        if self.ctx.enabled:
            return self._sharded_step(x, y)
        forward = self.model if len(x) == 1 else self.forward
        with single_sample_guard(self.model, len(x)), autocast(self.cfg, self.device):
            loss = er_loss(forward(x), y, self.cfg, self.session)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _sharded_step(self, x, y):
        """This rank's shard of the global mini-batch; None where it holds no sample."""
        total = torch.tensor([float(len(y))], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum_([total], self.ctx)
        loss = None
        if len(y):
            with single_sample_guard(self.model, len(x)), autocast(self.cfg, self.device):
                summed = er_loss(self.model(x), y, self.cfg, self.session, reduction="sum")
            (summed / total.item()).backward()
            loss = summed.detach() / len(y)
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        distributed.all_reduce_sum_([p.grad for p in self.params], self.ctx)
        self.optimizer.step()
        running = [b for b in self.model.buffers() if b.is_floating_point()]
        if running:
            distributed.all_reduce_mean_(running, self.ctx)
        distributed.broadcast_tensors_(distributed.counters(self.model), self.ctx)
        return loss

    def weights_finite(self):
        return torch.stack([torch.isfinite(p).all() for p in self.params]).all()

    def finish(self):
        for p in self.params:
            p.grad = None


class FineTuning(ExperienceReplay):
    """ER without a memory: each session trains on its new task alone and keeps no exemplar."""
    keeps_memory = False

    @staticmethod
    def train_indices(data, session, memory):
        return data.task_indices(session)

    @staticmethod
    def describe(cfg):
        return f"fine-tuning (er_loss={cfg.er_loss!r}, no memory)"


class JointTraining(ExperienceReplay):
    """Each session trains on the training data of every task seen so far; the replay memory is
    still chosen, for the single update of the evaluation."""

    @staticmethod
    def train_indices(data, session, memory):
        return np.concatenate([data.task_indices(k) for k in range(session + 1)])

    @staticmethod
    def describe(cfg):
        return f"joint training (er_loss={cfg.er_loss!r}, every seen task's data)"
