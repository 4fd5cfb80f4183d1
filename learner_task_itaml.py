"""iTAML's learner: the inner loop and meta-update of Alg. 1, one mini-batch at a time (a session's
epochs, with the schedule, model selection and divergence stop, are ``utils/run/epochs.py``'s, and
task-agnostic inference, Alg. 2, is in ``utils/inference.py``).

Paper names: the base weights Φ_base = {θ, φ} are snapshotted at every mini-batch; task k's fast weights
Φ_k = {θ_k, φ_k} start from them and take ``r`` optimizer steps on task k's samples; the meta-update
interpolates with η = exp(−β·t/T).

``args.variant`` picks Alg. 1 as printed ("paper") or what the authors' release computed ("official",
which produced the published numbers). The release differs in four ways, each its own switch in
``args`` (``utils/config.py``: VARIANTS), all read by the one loop of ``MetaLearner.meta_step``:
  - ``task_start``: each task's inner loop starts from Φ_base ("base"), or from the weights the
    previous task left ("previous": the release's reset to the base was a no-op);
  - ``meta_target``: Φ moves towards the mean of the tasks' θ_k with each task's own φ_k ("mean"),
    or towards the last task's weights, all of them, BatchNorm statistics taken as they are
    ("last": the release's stored weights aliased the live ones);
  - ``task_optimizer``: one optimizer state per task ("per_task") or one for all ("shared");
  - ``batch_forward``: the release's extra train-mode forward of the whole mini-batch before the
    tasks, whose only effect is on BatchNorm's running statistics.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.config import describe_training
from utils.fast import distributed
from utils.fast.batched import BatchedFirstSteps
from utils.fast.device import autocast, prepare_model, to_input
from utils.fast.flat import FlatBuffer
from utils.method import Method
from utils.tasks import task_of, task_slice, within_task


def eta_for(beta, session, num_task):
    """η = exp(−β·t/T), t the 0-based session index as in the release (η = 1 at session 0)."""
    return math.exp(-beta * session / num_task)


def task_loss(logits, targets, k, class_per_task):
    """Binary cross-entropy with logits on task k's slice only; targets are class positions."""
    onehot = F.one_hot(within_task(targets, k, class_per_task), class_per_task).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits[:, task_slice(k, class_per_task)], onehot)


@contextlib.contextmanager
def single_sample_guard(model, batch_size):
    """BatchNorm cannot take statistics from one value per channel (there is no variance; it
    raises). A task may hold one sample of a mini-batch: then every BatchNorm layer whose input
    still has several values per channel (N·H·W > 1: a single image's feature map) keeps using batch
    statistics, as in the release, and only a layer that sees a single value per channel (a vector,
    or a 1×1 map) uses its running statistics, leaving them unchanged, for this pass. The sample
    still gives its gradient."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if batch_size > 1 or not norms:
        yield
        return
    hooks = [m.register_forward_pre_hook(_running_statistics_if_single_value) for m in norms]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for m in norms:
            m.train()


def _running_statistics_if_single_value(norm, inputs):
    x = inputs[0]
    if x.numel() == x.shape[1]:  # one value per channel
        norm.eval()


def make_optimizer(cfg, params, lr):
    # foreach: each update is a few multi-tensor kernels over all parameters rather than a Python
    # loop over them (torch picks it by itself on GPUs only); the arithmetic is the same.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.RAdam(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)


def split_by_task(x, y, class_per_task):
    """Task k's samples (x_k, y_k) for every task k present in the batch, in increasing k, each in
    batch order. The split is planned on the host from the labels and taken with one gather and
    views, so a batch on the GPU costs no device synchronisation per task (boolean masks would)."""
    task = task_of(y.cpu(), class_per_task)
    counts = torch.bincount(task)
    tasks = torch.nonzero(counts).squeeze(1)
    order = torch.argsort(task, stable=True)
    sizes = counts[tasks].tolist()
    xs = torch.split(x[order.to(x.device)], sizes)
    ys = torch.split(y[order.to(y.device)], sizes)
    return tasks.tolist(), xs, ys


# ---------------------------------------------------------------- Φ_fast of meta_target "mean"
#
# On one process Φ_fast is θ_fast = (1/K) Σ_k θ_k over the K tasks of the mini-batch, and each task's
# own head slice φ_k; slices of absent tasks keep their base value. Under torchrun the global
# mini-batch B is split into shards B_r: every rank runs the inner loop of each task k present in ITS
# shard from the same base weights, giving θ_k^r, φ_k^r (BatchNorm statistics treated like θ).
# ``task_shares`` counts, in one all-reduce, n_k = ranks whose shard holds task k and M_k = samples of
# task k in B; the tasks of B are those with n_k > 0, K of them. Per task, the fast weights are
# averaged over the ranks that saw it with weights w_k^r summing to one, w_k^r = 1/n_k ("ranks") or
# m_k^r/M_k ("samples", m_k^r = task k's samples in B_r), and θ_fast is the plain mean of those
# per-task averages over the K tasks:
#
#     θ_fast   = (1/K) Σ_{k: n_k>0} Σ_{r sees k} w_k^r θ_k^r = Σ_r [ Σ_{k in B_r} (w_k^r/K) θ_k^r ]
#     φ_fast,k = Σ_{r sees k} w_k^r φ_k^r  for n_k > 0,   φ_base,k  for n_k = 0.
#
# The bracket is what rank r accumulates (zero when B_r holds nothing); one SUM all-reduce then gives
# θ_fast on every rank, bit-identical everywhere. Head rows are accumulated as w_k^r φ_k^r in task k's
# slice and zero elsewhere; after the sum the slices of tasks absent from B get their base value back
# (``keep_absent_rows_``). One process: n_k = 1 and m_k^r = M_k, so w_k^r = 1.0 and w_k^r/K = 1.0/K
# exactly, no collective is called, and the numbers are the single-process mean's, bit for bit.
# "samples" makes one plain-SGD inner step on the shards equal to that step on the whole global batch
# (the loss is a mean over samples); the learner uses it, so a rank holding one sample of a task moves
# that task less than a rank holding thirty. Under meta_target "last" the ranks' live weights and
# statistics are averaged instead (``distributed.all_reduce_mean_``); with one rank that is the tensor.

@dataclass(frozen=True)
class TaskShares:
    """Who saw which task of one global mini-batch: ``ranks[k]`` = n_k, ``samples[k]`` = M_k."""
    ranks: torch.Tensor
    samples: torch.Tensor
    weighting: str = "ranks"

    @property
    def tasks(self):
        """Tasks of the global mini-batch, ascending."""
        return torch.nonzero(self.ranks > 0).squeeze(1).tolist()

    def head_weight(self, k, local_samples):
        """w_k^r: this rank's share of task k's average (1.0 with one process); ``local_samples``
        is m_k^r, task k's samples in this rank's shard."""
        if self.weighting == "samples":
            return int(local_samples) / int(self.samples[k])
        return 1.0 / int(self.ranks[k])

    def theta_weight(self, k, local_samples):
        """w_k^r / K: this rank's weight of θ_k^r (and BatchNorm statistics) in θ_fast."""
        return self.head_weight(k, local_samples) / len(self.tasks)


def task_shares(task_ids, num_task, ctx, weighting="ranks"):
    """n_k and M_k over all ranks from each rank's per-sample task ids (one tiny all-reduce; call
    it before the inner loops, on every rank, even with an empty shard)."""
    if weighting not in ("ranks", "samples"):
        raise ValueError(f"weighting must be 'ranks' or 'samples', not {weighting!r}")
    task_ids = task_ids.reshape(-1).cpu().long()
    if len(task_ids) and not 0 <= int(task_ids.min()) <= int(task_ids.max()) < num_task:
        raise ValueError(f"task ids must lie in 0..{num_task - 1}")  # else the shapes would differ
    samples = torch.bincount(task_ids, minlength=num_task)
    counts = torch.stack([(samples > 0).long(), samples])
    if ctx.enabled:
        counts = counts.to(ctx.device)
        distributed.all_reduce_sum_([counts], ctx)
        counts = counts.cpu()
    return TaskShares(counts[0], counts[1], weighting)


def keep_absent_rows_(fast_head, base_head, shares, class_per_task):
    """After the sum, tasks absent from the global batch get their base head rows back (their
    accumulators hold zeros)."""
    absent = torch.nonzero(shares.ranks == 0).squeeze(1).tolist()
    for fast, base in zip(fast_head, base_head):
        for k in absent:
            fast[task_slice(k, class_per_task)] = base[task_slice(k, class_per_task)]


@dataclass(frozen=True)
class Layout:
    """Where θ and φ lie in a flat buffer of Φ: θ's ``num_theta`` tensors first (``theta_size``
    entries), then the head's, whose rows (and bias entries) belong to tasks."""
    buffer: FlatBuffer
    num_theta: int
    theta_size: int

    def head(self, flat):
        """The head's tensors as views of ``flat``, any tensor laid out like the buffer."""
        return self.buffer.views(flat)[self.num_theta:]


class MeanOfTasks:
    """Φ_fast of meta_target "mean": θ_fast = mean_k θ_k and φ_fast = task k's own slice φ_k
    (absent tasks' slices keep their base value); BatchNorm statistics averaged like θ.

    It works on the buffers it is handed: ``weights`` and ``running``, the live Φ and BatchNorm
    statistics (None without BatchNorm), which hold task k's fast weights after its inner loop, and
    ``base``, Φ_base, each laid out by ``layout``. Under torchrun (``shares``) each rank adds the
    tasks of its shard; task k's fast weights are averaged over the ranks that saw it, weighted by
    their share of its samples, θ_fast is the mean of those averages over the K tasks of the global
    batch, and one all-reduce over ``ctx`` sums the ranks' parts (the derivation is above). One
    process: the weights are exactly 1/K for θ and 1 for φ_k, and no collective call is made."""

    def __init__(self, weights, running, base, layout, num_tasks, class_per_task, shares=None,
                 ctx=None):
        self.weights, self.running, self.base, self.layout = weights, running, base, layout
        self.num_tasks, self.cpt, self.shares, self.ctx = num_tasks, class_per_task, shares, ctx
        self.t = layout.theta_size
        self.fast = torch.zeros_like(base)
        # Alone, absent tasks' head rows keep the base; spread over ranks, every rank adds its part
        # to zeros and those rows get their base value back after the sum.
        if shares is None:
            self.fast[self.t:] = base[self.t:]
        self.fast_phi, self.phi = layout.head(self.fast), layout.head(weights)
        self.fast_running = None if running is None else torch.zeros_like(running)

    @torch.no_grad()
    def add(self, k, samples):
        """Add task k's fast weights (the live ones, after its inner loop)."""
        if self.shares is None:
            w_theta, w_phi = 1.0 / self.num_tasks, None
        else:
            w_theta, w_phi = (self.shares.theta_weight(k, samples),
                              self.shares.head_weight(k, samples))
        self.fast[:self.t].add_(self.weights[:self.t], alpha=w_theta)  # mean_k θ_k
        rows = task_slice(k, self.cpt)
        for f, p in zip(self.fast_phi, self.phi):                             # φ_k: k's rows only
            f[rows] = p[rows] if w_phi is None else p[rows] * w_phi
        if self.running is not None:
            self.fast_running.add_(self.running, alpha=w_theta)

    def result(self):
        """(Φ_fast, its BatchNorm statistics), summed over the ranks under torchrun."""
        if self.shares is not None:
            distributed.all_reduce_sum_([self.fast] + ([] if self.running is None
                                                       else [self.fast_running]), self.ctx)
            keep_absent_rows_(self.fast_phi, self.layout.head(self.base), self.shares, self.cpt)
        return self.fast, self.fast_running


class MetaLearner(Method):
    """iTAML's training, one mini-batch of one session (one new task plus the replay memory) at a
    time: ``step`` is Alg. 1's ``meta_step``. It is one method (``utils/method.py``) behind a
    session's epochs (``utils/run/epochs.py``), which also call ``set_lr``, ``weights_finite`` and
    ``finish``.

    No copy of the model is made: Φ = {θ, φ} lives in one flat buffer (``utils/fast/flat.py``), θ
    first, so Φ_base is one snapshot tensor restored in place before each task, the mean of the fast
    weights one accumulator, and the meta-update one lerp.
    """

    def __init__(self, model, cfg, session, device="cpu", ctx=distributed.DistContext()):
        super().__init__(model, cfg, session, device, ctx)  # ctx: disabled in a plain run
        self.eta = eta_for(cfg.beta, session, cfg.num_task)
        prepare_model(model, cfg)  # the buffer keeps each weight's strides, so lay them out first
        head = {id(p) for p in model.head.parameters()}
        trained = [p for p in model.parameters() if p.requires_grad]  # not the release's unused PReLU
        theta = [p for p in trained if id(p) not in head]
        phi = [p for p in trained if id(p) in head]  # rows, and bias entries, by task
        self.weights = FlatBuffer(theta + phi, "parameter")
        self.layout = Layout(self.weights, len(theta), sum(p.numel() for p in theta))
        # Backward adds each weight's gradient into its view of one gradient buffer, which the
        # optimizers read. Every weight of our networks takes part in every forward pass, so none is
        # left without a gradient (torch's optimizers would skip such a weight; here it sees zeros).
        self.grads = torch.zeros_like(self.weights.data)
        self.weights.data.grad = self.grads
        self.grad_views = self.weights.views(self.grads)
        # BatchNorm running statistics follow the interpolation; integer counters do not.
        running = [b for b in model.buffers() if b.is_floating_point()]
        self.running = FlatBuffer(running, "buffer") if running else None
        # The compiled forward shares the model's parameters, so the in-place restores reach it.
        self.forward = torch.compile(model) if cfg.compile else model
        self.optimizers = {}  # task k, or "shared": one state for all tasks (task_optimizer)
        self.lr = cfg.lr
        # args.batched_tasks: every task's first inner step in one pass (utils/fast/batched.py)
        self.batched = (BatchedFirstSteps(model, cfg, self.weights, self.running)
                        if cfg.batched_tasks else None)

    def optimizer_for(self, k):
        key = k if self.cfg.task_optimizer == "per_task" else "shared"
        if key not in self.optimizers:
            self.optimizers[key] = make_optimizer(self.cfg, [self.weights.data], self.lr)
        return self.optimizers[key]

    def set_lr(self, lr):
        self.lr = lr
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def steps(self, k):
        """r, the inner steps of task k; the session's newest task takes ``args.r_newest`` where set
        (the release: 4 in SVHN's last session, 1 for every older task)."""
        newest = k == self.session and self.cfg.r_newest is not None
        return self.cfg.r_newest if newest else self.cfg.r

    def inner_loop(self, x, y, k, first=None):
        """Alg. 1 inner loop: r optimizer steps on task k's samples, loss on task k's slice.
        Returns the last step's loss as a tensor (reading it would wait for the GPU). ``first``:
        the first step's (gradient, loss), already computed by the batched pass
        (``args.batched_tasks``), so that step only runs the optimizer."""
        opt = self.optimizer_for(k)
        # One sample switches BatchNorm layers by their input size: not a graph to compile for.
        forward = self.model if len(x) == 1 else self.forward
        for step in range(self.steps(k)):
            for p, g in zip(self.weights.tensors, self.grad_views):
                p.grad = g  # again every step: a zero_grad elsewhere would have set it to None
            if step == 0 and first is not None:
                self.grads.copy_(first[0])
                loss = first[1]
            else:
                self.grads.zero_()
                with single_sample_guard(self.model, len(x)), autocast(self.cfg, self.device):
                    loss = task_loss(forward(x), y, k, self.cfg.class_per_task)
                loss.backward()
            opt.step()
        return loss.detach()

    def meta_step(self, x, y):
        """One mini-batch of Alg. 1; returns the mean over tasks of the last inner-step loss, as a
        0-d tensor, or None where this rank's shard of the batch holds no sample (under torchrun:
        it still takes part in the update). ``y`` may stay on the host: the task split is planned
        there."""
        x = x.to(self.device, non_blocking=True)  # one transfer, then gathered on the device
        tasks, xs, ys = split_by_task(x, y, self.cfg.class_per_task)
        # Under torchrun: which ranks hold which task of the global batch (one tiny all-reduce).
        shares = task_shares(task_of(y.cpu(), self.cfg.class_per_task), self.cfg.num_task,
                             self.ctx, "samples") if self.ctx.enabled else None
        batches = [(k, to_input(xk, self.cfg, self.device), yk.to(self.device, non_blocking=True))
                   for k, xk, yk in zip(tasks, xs, ys)]
        self._attach()
        if self.cfg.batch_forward:
            self._batch_forward(x)
        weights, running = self.weights.data, self._running_data()
        with torch.no_grad():
            base = weights.clone()
            base_running = None if running is None else running.clone()
        losses, fast, fast_running = self._fast_weights(batches, base, base_running, shares)
        with torch.no_grad():
            # The meta-update: Φ ← η·Φ_fast + (1−η)·Φ_base.
            weights.copy_(base.lerp_(fast, self.eta))
            if fast_running is not None:
                running.copy_(base_running.lerp_(fast_running, self.eta))
        # BatchNorm's step counters count each rank's own inner steps: take rank 0's.
        distributed.broadcast_tensors_(distributed.counters(self.model), self.ctx)
        return torch.stack(losses).double().mean() if losses else None

    @torch.no_grad()
    def _batch_forward(self, x):
        """The release's forward of the whole mini-batch in train mode before the tasks (its output
        unused): the weights stay, BatchNorm's running statistics take one step towards the
        batch's. Nothing to do for a network without BatchNorm."""
        if self.running is not None:
            with single_sample_guard(self.model, len(x)), autocast(self.cfg, self.device):
                self.model(to_input(x, self.cfg, self.device))

    def _fast_weights(self, batches, base, base_running, shares=None):
        """The inner loops of the batch's tasks, in increasing task order (the newest last), and
        Φ_fast, what the meta-update moves towards, with its BatchNorm statistics (None: keep the
        live ones).

        task_start "base": every task starts from Φ_base (Alg. 1); "previous": from the weights
        the task before it left. meta_target "mean": θ_fast = mean_k θ_k and φ_fast = each task's
        own slice φ_k, absent tasks' slices keeping the base (``_MeanOfTasks``); "last": Φ_fast is
        the last task's Φ, all of it, and its BatchNorm statistics stay as the tasks left them.
        """
        weights, running = self.weights.data, self._running_data()
        mean = (MeanOfTasks(weights, running, base, self.layout, len(batches),
                            self.cfg.class_per_task, shares, self.ctx)
                if self.cfg.meta_target == "mean" else None)
        losses = []
        first = self._first_steps(batches)
        for i, (k, x, y) in enumerate(batches):
            if self.cfg.task_start == "base":
                with torch.no_grad():
                    weights.copy_(base)
                    if running is not None:
                        running.copy_(base_running)
            losses.append(self.inner_loop(x, y, k, None if first is None
                                          else first.start(i, running)))
            if mean is not None:
                mean.add(k, len(y))
        if mean is not None:
            return (losses,) + mean.result()
        # Under torchrun: the ranks' live weights and statistics, averaged (a plain run: unchanged).
        distributed.all_reduce_mean_([t for t in (weights, running) if t is not None], self.ctx)
        return losses, weights, None

    def _first_steps(self, batches):
        """Under ``args.batched_tasks``, every task's first inner step from Φ_base (the live weights
        when it is called) as one pass: a ``utils.fast.batched.FirstSteps``; otherwise None."""
        if self.batched is None:
            return None
        with autocast(self.cfg, self.device):
            return self.batched(batches)

    def _running_data(self):
        """The BatchNorm statistics' buffer, or None for a network without them (the MLP)."""
        return None if self.running is None else self.running.data

    def _attach(self):
        """Put the weights back in their buffers if they left them (after ``finish``, or a
        ``model.to``), carrying their current values."""
        for flat in (self.weights, self.running):
            if flat is not None and not flat.attached():
                flat.attach()

    @staticmethod
    def describe(cfg):
        return f"iTAML ({describe_training(cfg)})"

    def summary(self):
        return {"eta": self.eta, "variant": self.cfg.variant}

    def step(self, x, y):
        """The per-batch step of every method (``utils/run/epochs.py``): Alg. 1's ``meta_step``."""
        return self.meta_step(x, y)

    def weights_finite(self):
        """Whether every weight is finite, as a 0-d tensor (read with the epoch's loss: one wait)."""
        return torch.isfinite(self.weights.data).all()

    def finish(self):
        """The session's training is over: hand the model back with weights in memory of their own
        (out of the flat buffers) and no gradients. A later ``step`` puts them back."""
        for flat in (self.weights, self.running):
            if flat is not None:
                flat.unflatten()
        for p in self.weights.tensors:
            p.grad = None
