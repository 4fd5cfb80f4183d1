"""``args.batched_tasks``: the first inner step of every task of a mini-batch as one pass.

Why: on a GPU each task's inner step is its own forward and backward on a handful of samples (at
session 9 a batch of 128 holds ~90 samples of the new task and a few of each older one), so kernel
launches, not arithmetic, set the time, and K tasks cost about K small passes. When every task
starts from Φ_base (``task_start = "base"``, Alg. 1), the K first steps see the same weights and can
run as one forward and backward: the tasks' samples padded to one length M and stacked [K, M, ...],
and ``torch.func.vmap`` over the tasks of ``torch.func.grad`` of the task's loss through
``torch.func.functional_call`` of the model at Φ_base. Only that forward/backward changes: each
task's optimizer step, its remaining r − 1 steps, Φ_fast and the meta-update stay the learner's.

Padding. A padded slot repeats its task's first sample (finite values) and has weight 0 in the loss
and in every BatchNorm statistic, so its gradient is exactly zero. What it costs is arithmetic: K·M
samples go through the network instead of the N of the batch.

BatchNorm is the one layer that mixes samples. During the pass each BatchNorm layer in training
mode runs ``_masked_norm``: each task normalises with the statistics of its own real samples, and
hands them back (mean, unbiased variance) for its running statistics,
(1 − momentum)·base + momentum·batch, as the layer's own update would have made them. Where a task
has one value a channel (one sample, a 1×1 map) the layer uses and keeps its running statistics, as
``single_sample_guard`` makes it do in the per-task loop.

Cost: on the CPU, where arithmetic sets the time, the step is slower than the loop; and on any
device the padded pass holds K·M samples' activations, more memory than the loop's largest task.
"""
import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from utils.config import check_batched_tasks
from utils.errors import ConfigError
from utils.tasks import class_at, within_task


class FirstSteps:
    """What the batched pass hands the learner, for the i-th task of the batch: its flat gradient
    at Φ_base (``grads[i]``, laid out like the learner's gradient buffer), its loss, and its
    BatchNorm running statistics after that first forward (``running[i]``; None without them)."""

    def __init__(self, grads, losses, running):
        self.grads, self.losses, self.running = grads, losses, running

    @torch.no_grad()
    def start(self, i, live_running):
        """Task i's first step, taken: put its running statistics in the live buffer (restored to
        the base's just before) and return (its gradient, its loss) for the optimizer step."""
        if self.running is not None:
            live_running.copy_(self.running[i])
        return self.grads[i], self.losses[i]


class BatchedFirstSteps:
    """The batched first inner step of a learner's tasks. Made once per learner: it checks that the
    configuration and the network allow it and finds where every weight and statistic lives in the
    learner's flat buffers."""

    def __init__(self, model, cfg, weights, running):
        check_batched_tasks(cfg)  # an args class built by hand, not through check_args
        self.model, self.cfg, self.weights, self.running = model, cfg, weights, running
        self.norms = _MaskedNorms(model)
        index = {id(t): i for i, t in enumerate(weights.tensors)}
        self.params = [(name, weights.layout[index[id(p)]])
                       for name, p in model.named_parameters() if p.requires_grad]

    def __call__(self, batches):
        """``batches``: (k, x_k, y_k) of the batch's tasks, in the learner's order, on the device.
        Runs under the caller's autocast (``args.amp``)."""
        if not batches:  # a torchrun shard without samples: no task, nothing to run
            return None
        sizes = [len(y) for _, _, y in batches]
        x, rows, cols, target, count = pad_tasks(batches, self.cfg, self.weights.data.dtype)
        params = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        self.norms.smallest = min(sizes)

        def loss_of_task(params, x, rows, cols, target, count):
            self.norms.rows, self.norms.count = rows, count
            logits = torch.func.functional_call(self.model, params, (x,))
            picked = logits.gather(1, cols.expand(len(logits), -1))  # task k's slice of the head
            each = F.binary_cross_entropy_with_logits(picked, target, reduction="none")
            loss = (each * rows[:, None]).sum() / (count * target.shape[1])  # real samples only
            return loss, (loss.detach(), self.norms.take())

        per_task = torch.func.vmap(torch.func.grad(loss_of_task, has_aux=True),
                                   in_dims=(None, 0, 0, 0, 0, 0))
        with self.norms.masked():
            grads, (losses, stats) = per_task(params, x, rows, cols, target, count)
        return FirstSteps(self._flat(grads, len(sizes)), losses,
                          self._running_of_tasks(stats, len(sizes)))

    @torch.no_grad()
    def _flat(self, grads, num_tasks):
        """Every task's gradient laid out as the learner's gradient buffer: row i of a [K, size]
        tensor cut like ``FlatBuffer.views`` cuts one row (channels_last strides kept)."""
        flat = self.weights.data
        out = flat.new_empty(num_tasks, flat.numel())
        for name, (shape, stride, offset) in self.params:
            rows = out.as_strided((num_tasks,) + shape, (flat.numel(),) + stride, offset)
            rows.copy_(grads[name])
        return out

    @torch.no_grad()
    def _running_of_tasks(self, stats, num_tasks):
        """[K, size of the statistics' buffer]: task i's running statistics after its first
        forward, (1 − momentum)·base + momentum·(its batch statistic) where the layer took batch
        statistics, the base where it did not (one value a channel) or was not called. Also counts
        the forwards in ``num_batches_tracked``, as the layers' own forwards would have."""
        if self.running is None:
            return None
        base = self.running.data
        statistic, rate = {}, {}  # by buffer: [K, C] batch statistics, [K, 1] momentum or 0
        for norm, (mean, var, used) in zip(self.norms.called, stats):
            momentum = (used.to(base.dtype) * norm.momentum)[:, None]
            for buffer, value in ((norm.running_mean, mean), (norm.running_var, var)):
                statistic[id(buffer)], rate[id(buffer)] = value.to(base.dtype), momentum
            norm.num_batches_tracked.add_(used.sum().to(norm.num_batches_tracked.dtype))
        statistics, rates = [], []
        for t, (_, _, offset) in zip(self.running.tensors, self.running.layout):
            own = base[offset:offset + t.numel()]
            statistics.append(statistic.get(id(t), own.expand(num_tasks, -1)))
            rates.append(rate.get(id(t), own.new_zeros(1, 1)).expand(num_tasks, t.numel()))
        statistics, rates = torch.cat(statistics, 1), torch.cat(rates, 1)
        # The order of BatchNorm's own update: momentum·batch + (1 − momentum)·running.
        return rates * statistics + (1 - rates) * base


def pad_tasks(batches, cfg, dtype):
    """The tasks' samples stacked [K, M, ...] (M the largest task), with, per task: ``rows`` [K, M]
    (1 for a real sample, 0 for a padded slot, which repeats the task's first sample), ``cols``
    [K, C] (its head rows), ``target`` [K, M, C] (one-hot on its slice) and ``count`` [K] (real
    samples).
    Planned on the host from the sizes; one gather on the device."""
    cpt = cfg.class_per_task
    sizes = [len(y) for _, _, y in batches]
    num_tasks, longest = len(sizes), max(sizes)
    starts = [sum(sizes[:i]) for i in range(num_tasks)]
    index = torch.tensor([s + (j if j < n else 0) for s, n in zip(starts, sizes)
                          for j in range(longest)])
    rows = torch.tensor([[1.0] * n + [0.0] * (longest - n) for n in sizes], dtype=dtype)
    tasks = torch.tensor([k for k, _, _ in batches])
    cols = class_at(torch.arange(cpt), tasks[:, None], cpt)
    count = torch.tensor(sizes, dtype=dtype)
    x = torch.cat([xk for _, xk, _ in batches])
    y = torch.cat([yk for _, _, yk in batches])

    def on_device(t):  # from the host without waiting for the device (the learner's habit)
        return t.to(x.device, non_blocking=True)
    index = on_device(index)
    x = x[index]
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)  # each task's [M, ...] slice stays so
    x = x.reshape(num_tasks, longest, *x.shape[1:])
    within = within_task(y[index].reshape(num_tasks, longest), on_device(tasks)[:, None], cpt)
    target = F.one_hot(within, cpt).to(dtype)
    return x, on_device(rows), on_device(cols), target, on_device(count)


class _MaskedNorms:
    """Every BatchNorm layer of the model, run per task on its real samples under ``masked()``.

    The layers' ``forward`` is swapped for the duration of the pass because their own forward would
    take statistics over the padded [M, ...] slices and write running statistics in place, which
    vmap cannot do. ``rows`` and ``count`` are the task's (vmap's per-task values), set before each
    call of the model; ``called`` lists the layers in the order they ran, and ``take()`` hands back
    their statistics as the pass's output."""

    def __init__(self, model):
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        for m in self.norms:
            if not m.track_running_stats or m.momentum is None:
                raise ConfigError(f"args.batched_tasks = True needs BatchNorm layers with running "
                                  f"statistics and a fixed momentum, but {m} has "
                                  f"track_running_stats={m.track_running_stats} and "
                                  f"momentum={m.momentum}; set batched_tasks = False.")
        self.rows = self.count = None
        self.smallest = 2
        self.called, self._stats = [], []

    @contextlib.contextmanager
    def masked(self):
        self.called, self._stats = [], []
        for m in self.norms:
            m.forward = functools.partial(self._forward, m)
        try:
            yield
        finally:
            for m in self.norms:
                del m.forward  # the class's forward again
            self.rows = self.count = None

    def take(self):
        stats, self._stats = tuple(self._stats), []
        return stats

    def _forward(self, norm, x):
        if not norm.training:  # running statistics throughout: nothing mixes the samples
            return type(norm).forward(norm, x)
        if norm in self.called:
            raise ConfigError(f"args.batched_tasks = True needs every BatchNorm layer to run once "
                              f"a forward pass, but {norm} ran twice; set batched_tasks = False.")
        out, stats = _masked_norm(norm, x, self.rows, self.count, self.smallest)
        self.called.append(norm)
        self._stats.append(stats)
        return out


def _masked_norm(norm, x, rows, count, smallest):
    """BatchNorm of one task's [M, C, ...] slice over its real samples (``rows``, ``count`` of
    them): the output, and (mean, unbiased variance, whether batch statistics were used) for the
    running statistics. In float32 at least, as BatchNorm's own kernels compute the statistics."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    per_sample = math.prod(x.shape[2:])  # values of a channel in one sample (H·W)
    n = count.to(wide.dtype) * per_sample
    weight = rows.to(wide.dtype).reshape([-1] + [1] * (x.dim() - 1))
    mean = (wide * weight).sum(dims) / n
    centred = wide - mean.reshape(shape)
    var = (centred.square() * weight).sum(dims) / n  # biased, to normalise
    out = centred * torch.rsqrt(var + norm.eps).reshape(shape)
    single = n == 1
    if smallest * per_sample == 1:  # some task sees one value a channel (decided on the host)
        running = (wide - norm.running_mean.reshape(shape)) \
            * torch.rsqrt(norm.running_var + norm.eps).reshape(shape)
        out = torch.where(single, running, out)
    if norm.affine:
        out = out * norm.weight.reshape(shape) + norm.bias.reshape(shape)
    unbiased = var * n / (n - 1).clamp(min=1)  # the running variance's, as BatchNorm's update
    return out.to(x.dtype), (mean, unbiased, ~single)
