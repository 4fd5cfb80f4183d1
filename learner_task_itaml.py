"""iTAML's learner: the inner loop and meta-update of Alg. 1, and task-agnostic inference (Alg. 2).

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
import copy
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils import distributed
from utils.batched import BatchedFirstSteps
from utils.errors import Diverged
from utils.flat import FlatBuffer

PROTOCOLS = ("task_agnostic", "per_sample", "task_aware", "base")
CONTINUUM_SIZES = (1, 2, 5, 10, 20, 50)  # the sizes acc_task_agnostic_by_continuum reports


def eta_for(beta, session, num_task):
    """η = exp(−β·t/T), t the 0-based session index as in the release (η = 1 at session 0)."""
    return math.exp(-beta * session / num_task)


def task_slice(k, class_per_task):
    """Task k's rows of the head."""
    return slice(k * class_per_task, (k + 1) * class_per_task)


def task_loss(logits, targets, k, class_per_task):
    """Binary cross-entropy with logits on task k's slice only; targets are class positions."""
    onehot = F.one_hot(targets - k * class_per_task, class_per_task).to(logits.dtype)
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


def lr_at(cfg, epoch):
    """Step schedule of the release: lr × γ for every milestone reached (0-based epochs)."""
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.schedule)


def make_optimizer(cfg, params, lr):
    # foreach: each update is a few multi-tensor kernels over all parameters rather than a Python
    # loop over them (torch picks it by itself on GPUs only); the arithmetic is the same.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.RAdam(params, lr=lr, weight_decay=cfg.weight_decay, foreach=True)


# ---------------------------------------------------------------- speed options (args)

def prepare_model(model, cfg):
    """Put the model in the memory layout ``args.channels_last`` asks for (in place, idempotent)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def to_input(x, cfg, device):
    """A batch on the device, image batches in the layout the convolutions were given."""
    x = x.to(device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(cfg, device):
    """bf16 autocast of forward passes and losses under ``args.amp``; weights and optimizer states
    stay float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.amp)


def split_by_task(x, y, class_per_task):
    """Task k's samples (x_k, y_k) for every task k present in the batch, in increasing k, each in
    batch order. The split is planned on the host from the labels and taken with one gather and
    views, so a batch on the GPU costs no device synchronisation per task (boolean masks would)."""
    task = y.cpu() // class_per_task
    counts = torch.bincount(task)
    tasks = torch.nonzero(counts).squeeze(1)
    order = torch.argsort(task, stable=True)
    sizes = counts[tasks].tolist()
    xs = torch.split(x[order.to(x.device)], sizes)
    ys = torch.split(y[order.to(y.device)], sizes)
    return tasks.tolist(), xs, ys


class _MeanOfTasks:
    """Φ_fast of meta_target "mean": θ_fast = mean_k θ_k and φ_fast = task k's own slice φ_k
    (absent tasks' slices keep their base value); BatchNorm statistics averaged like θ.

    Under torchrun (``shares``) each rank adds the tasks of its shard; task k's fast weights are
    averaged over the ranks that saw it, weighted by their share of its samples, θ_fast is the mean
    of those averages over the K tasks of the global batch, and one all-reduce sums the ranks'
    parts (utils/distributed.py has the derivation). One process: the weights are exactly 1/K for
    θ and 1 for φ_k, and no collective call is made."""

    def __init__(self, learner, base, num_tasks, shares=None):
        self.learner, self.base, self.num_tasks, self.shares = learner, base, num_tasks, shares
        self.cpt, self.t = learner.cfg.class_per_task, learner.theta_size
        self.fast = torch.zeros_like(base)
        # Alone, absent tasks' head rows keep the base; spread over ranks, every rank adds its part
        # to zeros and those rows get their base value back after the sum.
        if shares is None:
            self.fast[self.t:] = base[self.t:]
        self.fast_phi = learner.weights.views(self.fast)[learner.num_theta:]
        self.phi = learner.weights.tensors[learner.num_theta:]
        self.running = learner._running_data()
        self.fast_running = None if self.running is None else torch.zeros_like(self.running)

    @torch.no_grad()
    def add(self, k, samples):
        """Add task k's fast weights (the live ones, after its inner loop)."""
        if self.shares is None:
            w_theta, w_phi = 1.0 / self.num_tasks, None
        else:
            w_theta, w_phi = (self.shares.theta_weight(k, samples),
                              self.shares.head_weight(k, samples))
        self.fast[:self.t].add_(self.learner.weights.data[:self.t], alpha=w_theta)  # mean_k θ_k
        rows = task_slice(k, self.cpt)
        for f, p in zip(self.fast_phi, self.phi):                             # φ_k: k's rows only
            f[rows] = p[rows] if w_phi is None else p[rows] * w_phi
        if self.running is not None:
            self.fast_running.add_(self.running, alpha=w_theta)

    def result(self):
        """(Φ_fast, its BatchNorm statistics), summed over the ranks under torchrun."""
        if self.shares is not None:
            learner = self.learner
            distributed.all_reduce_sum_([self.fast] + ([] if self.running is None
                                                       else [self.fast_running]), learner.ctx)
            distributed.keep_absent_rows_(self.fast_phi,
                                          learner.weights.views(self.base)[learner.num_theta:],
                                          self.shares, self.cpt)
        return self.fast, self.fast_running


class ReleaseSelection:
    """The release's model selection, on the test set: after every epoch the base model's test
    accuracy over the seen classes is read; an epoch's weights (BatchNorm statistics included) are
    kept when the epoch is one of the last 9 (0-based ``epoch > epochs − 10``) and its accuracy beats
    every earlier epoch's, all epochs counted, starting from 0 (ties keep the earlier). When no late
    epoch beats them, the last epoch's weights stay."""

    def __init__(self, epochs):
        self.epochs, self.best, self.kept, self.kept_epoch = epochs, 0.0, None, None
        self.accuracies = []

    def after_epoch(self, epoch, accuracy, model):
        self.accuracies.append(accuracy)
        if accuracy > self.best and epoch > self.epochs - 10:
            self.kept = {name: t.detach().clone() for name, t in model.state_dict().items()}
            self.kept_epoch = epoch
        self.best = max(self.best, accuracy)

    @torch.no_grad()
    def restore(self, model):
        if self.kept is not None:
            model.load_state_dict(self.kept)

    def summary(self):
        """For the session's record: the rule, the epoch kept (1-based) and every epoch's accuracy."""
        kept = self.epochs if self.kept_epoch is None else self.kept_epoch + 1
        return {"model_selection": "release", "selected_epoch": kept,
                "selection_test_acc_per_epoch": self.accuracies}


class MetaLearner:
    """Trains the model through one session (one new task plus the replay memory).

    No copy of the model is made: Φ = {θ, φ} lives in one flat buffer (``utils/flat.py``), θ first,
    so Φ_base is one snapshot tensor restored in place before each task, the mean of the fast weights
    one accumulator, and the meta-update one lerp.
    """

    def __init__(self, model, cfg, session, device="cpu", ctx=distributed.DistContext()):
        self.model, self.cfg, self.session, self.device = model, cfg, session, device
        self.ctx = ctx  # torchrun: this rank's place; disabled in a plain run
        self.eta = eta_for(cfg.beta, session, cfg.num_task)
        prepare_model(model, cfg)  # the buffer keeps each weight's strides, so lay them out first
        head = {id(p) for p in model.head.parameters()}
        trained = [p for p in model.parameters() if p.requires_grad]  # not the release's unused PReLU
        theta = [p for p in trained if id(p) not in head]
        phi = [p for p in trained if id(p) in head]  # rows, and bias entries, by task
        self.weights = FlatBuffer(theta + phi, "parameter")
        self.theta_size, self.num_theta = sum(p.numel() for p in theta), len(theta)
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
        # args.batched_tasks: every task's first inner step in one pass (utils/batched.py)
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
        0-d tensor. ``y`` may stay on the host: the task split is planned there."""
        x = x.to(self.device, non_blocking=True)  # one transfer, then gathered on the device
        tasks, xs, ys = split_by_task(x, y, self.cfg.class_per_task)
        # Under torchrun: which ranks hold which task of the global batch (one tiny all-reduce).
        shares = distributed.task_shares(y.cpu() // self.cfg.class_per_task, self.cfg.num_task,
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
        return torch.stack(losses).double().mean()

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
        mean = (_MeanOfTasks(self, base, len(batches), shares) if self.cfg.meta_target == "mean"
                else None)
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
        when it is called) as one pass: a ``utils.batched.FirstSteps``; otherwise None."""
        if self.batched is None:
            return None
        with autocast(self.cfg, self.device):
            return self.batched(batches)

    def _running_data(self):
        """The BatchNorm statistics' buffer, or None for a network without them (the MLP)."""
        return None if self.running is None else self.running.data

    def _attach(self):
        """Put the weights back in their buffers if they left them (after ``train_session``, or
        a ``model.to``), carrying their current values."""
        for flat in (self.weights, self.running):
            if flat is not None and not flat.attached():
                flat.attach()

    def release(self):
        """Hand the model back with weights in memory of their own and no gradients."""
        for flat in (self.weights, self.running):
            if flat is not None:
                flat.release()
        for p in self.weights.tensors:
            p.grad = None

    def train_session(self, loader, desc="train", test_accuracy=None):
        """All epochs of one session. Returns the last epoch's mean loss; ``self.epoch_losses`` holds
        every epoch's. Raises ``Diverged`` after the first epoch whose loss or weights are not
        finite, so that a run gone to NaN never saves its weights as a finished session.

        Which epoch's model is kept (``args.model_selection``): "last", the last epoch's, so no
        test data reaches a training decision; "release", the release's selection on the test set,
        through ``test_accuracy()`` (the base model's accuracy over the seen classes' test samples,
        read after every epoch): see ``ReleaseSelection``."""
        selection = ReleaseSelection(self.cfg.epochs) if test_accuracy is not None else None
        bar = tqdm(range(self.cfg.epochs), desc=desc, unit="epoch",
                   disable=None if self.ctx.is_main else True, leave=False)
        self.epoch_losses = []
        try:
            for epoch in bar:
                self.model.train()
                self.set_lr(lr_at(self.cfg, epoch))
                losses = [self.meta_step(x, y) for x, y in loader]
                loss = self._end_epoch(torch.stack(losses).mean(), epoch)
                self.epoch_losses.append(loss)
                if selection is not None:
                    selection.after_epoch(epoch, test_accuracy(), self.model)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:.2g}")
            if selection is not None:
                selection.restore(self.model)
        finally:
            bar.close()
            self.release()
        self.selection = (selection.summary() if selection is not None
                          else {"model_selection": "last", "selected_epoch": self.cfg.epochs})
        return self.epoch_losses[-1]

    def _end_epoch(self, loss, epoch):
        """The epoch's mean loss as a float, read together with the finiteness of the weights: the
        one wait for the device in an epoch. Under torchrun the non-finite flags are summed over
        the ranks (the loss stays each rank's own), so that every rank stops in the same epoch
        rather than one waiting forever for the others."""
        flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(self.weights.data).all()])
        flags = flags.to(loss.dtype)
        distributed.all_reduce_sum_([flags], self.ctx)
        loss, bad_loss, bad_weights = torch.cat([loss.reshape(1), flags]).tolist()
        if bad_loss or bad_weights:
            raise Diverged(self.session, epoch + 1, self.cfg.epochs,
                           "the training loss" if bad_loss else "the weights", self.cfg.lr)
        return loss


# ---------------------------------------------------------------- inference (Alg. 2)

@torch.no_grad()
def predict_logits(model, loader, device, cfg=None):
    """Logits and labels over a loader, in loader order (on the host)."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True) if cfg is None else to_input(x, cfg, device)
        with contextlib.nullcontext() if cfg is None else autocast(cfg, device):
            outs.append(model(x).float())
        labels.append(y)
    return torch.cat(outs).cpu(), torch.cat(labels).cpu()


def task_scores(logits, num_tasks, class_per_task):
    """s[n, k]: the largest logit of sample n in task k's slice of the head."""
    seen = logits[:, :num_tasks * class_per_task]
    return seen.reshape(len(logits), num_tasks, class_per_task).amax(2)


def continuum_ids(true_task, size, generator):
    """Cut each task's samples, shuffled, into continua of ``size``; each sample's continuum id.

    A continuum holds samples of one task only (the paper's assumption, confirmed by the authors);
    the last continuum of a task may be shorter.
    """
    ids = torch.empty_like(true_task)
    next_id = 0
    for k in torch.unique(true_task).tolist():
        members = torch.nonzero(true_task == k).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        ids[members] = next_id + torch.arange(len(members)) // size
        next_id += (len(members) + size - 1) // size
    return ids


def predict_tasks(scores, continuum):
    """The task of each continuum: argmax_k of the mean over its samples of s[n, k]."""
    num = int(continuum.max()) + 1
    sums = scores.new_zeros(num, scores.shape[1]).index_add_(0, continuum, scores)
    counts = torch.bincount(continuum, minlength=num).to(scores.dtype)
    return (sums / counts[:, None]).argmax(1)[continuum]


def adapt(model, data, memory, k, cfg, device, seed):
    """The "single update": a copy of the model fine-tuned on task k's exemplars (release: Adam,
    lr 1e-3, one epoch, batch 64, BCE on the slice, training transforms, BatchNorm in train mode).

    Every draw it makes, the exemplars' order and their augmentations, comes from generators seeded
    by ``seed`` alone (the run's seed, the session and the task): the same saved session adapts the
    same way at the end of training, on resume and in any later process, whatever the training
    before it drew. ``args.adapt_bn = "reestimate"`` then re-estimates BatchNorm's statistics on the
    task's plain exemplars (``reestimate_statistics``)."""
    adapted = copy.deepcopy(model)
    indices = memory.indices(data.task_classes(k))
    if len(indices) == 0 or cfg.adapt_epochs == 0:
        return adapted
    with torch.random.fork_rng(devices=[]):  # the global generator feeds torchvision's transforms
        torch.default_generator.manual_seed(seed)
        adapted.train()
        opt = torch.optim.Adam(adapted.parameters(), lr=cfg.adapt_lr, foreach=True)
        loader = data.loader(data.train_set, indices, cfg.adapt_batch, shuffle=True, seed=seed)
        for _ in range(cfg.adapt_epochs):
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                x, y = to_input(x, cfg, device), y.to(device, non_blocking=True)
                with single_sample_guard(adapted, len(x)), autocast(cfg, device):
                    loss = task_loss(adapted(x), y, k, cfg.class_per_task)
                loss.backward()
                opt.step()
    if cfg.adapt_bn == "reestimate":
        reestimate_statistics(adapted, data, indices, cfg, device)
    return adapted


@torch.no_grad()
def reestimate_statistics(model, data, indices, cfg, device):
    """BatchNorm's running statistics measured anew on the exemplars ``indices`` without
    augmentation, for the weights the update left: one pass in train mode, each layer's statistics
    the plain average over the batches (momentum None), no weight changed. After the release's update
    the statistics match neither the old weights nor the new ones (README: *The single update on
    BatchNorm networks*). A network without BatchNorm is left as it is."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in data.loader(data.train_plain, indices, cfg.adapt_batch):
            with single_sample_guard(model, len(x)), autocast(cfg, device):
                model(to_input(x, cfg, device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def accuracy(pred, labels):
    return 100.0 * (pred == labels).double().mean().item() if len(labels) else float("nan")


def predict_test(model, data, indices, cfg, device, ctx=distributed.DistContext()):
    """Logits and labels of test samples ``indices``, in that order. Under torchrun each rank
    predicts a contiguous block and the blocks are gathered, so every rank holds all of them."""
    n = len(indices)
    local = distributed.eval_shard(indices, ctx.rank, ctx.world_size) if ctx.enabled else indices
    logits, labels = predict_logits(model, data.loader(data.test_set, local, cfg.test_batch),
                                    device, cfg)
    return distributed.gather_cat(logits, ctx)[:n], distributed.gather_cat(labels, ctx)[:n]


def base_test_accuracy(model, data, session, cfg, device, ctx=distributed.DistContext()):
    """The base model's accuracy over the test samples of the classes seen after ``session``, the
    prediction the argmax over their rows of the head: what the release's model selection reads."""
    indices = data.seen_test_indices(session)
    logits, labels = predict_test(model, data, indices, cfg, device, ctx)
    return accuracy(logits[:, :(session + 1) * cfg.class_per_task].argmax(1), labels)


def evaluate(model, data, memory, session, cfg, device, seed=0, ctx=distributed.DistContext()):
    """All four protocols over every seen class after ``session``; one adaptation per task.

    A sample routed to a task other than its own is wrong whatever class that task's adapted model
    picks, since the pick lies in the wrong task's slice. So only the true task's adapted model
    ever needs to classify a sample: one forward pass per test sample besides the base model's,
    whatever the routes, with the same accuracies as classifying every routed sample.
    """
    cpt, num_tasks = cfg.class_per_task, session + 1
    prepare_model(model, cfg)
    indices = data.seen_test_indices(session)
    logits, labels = predict_test(model, data, indices, cfg, device, ctx)
    true_task = labels // cpt
    scores = task_scores(logits, num_tasks, cpt)
    generator = torch.Generator().manual_seed(seed)
    routes = {  # the task whose adapted model classifies each sample, per protocol
        "task_agnostic": predict_tasks(scores, continuum_ids(true_task, cfg.continuum, generator)),
        "per_sample": scores.argmax(1),
        "task_aware": true_task,
    }
    within = torch.full_like(labels, -1)  # the class the true task's adapted model picks
    bar = tqdm(range(num_tasks), desc="evaluate", unit="task",
               disable=None if ctx.is_main else True, leave=False)
    for k in bar:
        positions = torch.nonzero(true_task == k).squeeze(1)
        if len(positions) == 0:
            continue
        if session == 0:  # no adaptation: one task, nothing to tell apart; the base logits serve
            logits_k = logits[positions]
        else:
            # every rank adapts its own copy the same way (same exemplars, same seed)
            adapted = adapt(model, data, memory, k, cfg, device, seed + k)
            logits_k, _ = predict_test(adapted, data, indices[positions.numpy()], cfg, device, ctx)
        within[positions] = logits_k[:, task_slice(k, cpt)].argmax(1) + k * cpt
    preds = {name: torch.where(route == true_task, within, -1) for name, route in routes.items()}
    preds["base"] = logits[:, :num_tasks * cpt].argmax(1)
    results = {f"acc_{name}": accuracy(pred, labels) for name, pred in preds.items()}
    results["task_prediction_acc"] = accuracy(routes["task_agnostic"], true_task)
    results["task_prediction_acc_per_sample"] = accuracy(routes["per_sample"], true_task)
    results["per_task"] = {name: [accuracy(pred[true_task == j], labels[true_task == j])
                                  for j in range(num_tasks)] for name, pred in preds.items()}
    results["num_test_samples"] = len(labels)
    results.update(by_continuum_size(scores, true_task, within, labels, cfg.continuum, seed))
    return results


def by_continuum_size(scores, true_task, within, labels, continuum, seed):
    """The task-agnostic accuracy and the task-prediction accuracy for continua of every size of
    CONTINUUM_SIZES and ``continuum``, keyed by the size as a string (the session record is JSON),
    in increasing size. Only the routing is redone: ``within`` holds what the true task's adapted
    model picks. Each size draws its continua from a fresh generator seeded as ``evaluate``'s, so
    the entry of ``continuum`` is ``acc_task_agnostic`` and the entry of 1 is ``acc_per_sample``."""
    acc, task_acc = {}, {}
    for p in sorted(set(CONTINUUM_SIZES) | {continuum}):
        generator = torch.Generator().manual_seed(seed)
        route = predict_tasks(scores, continuum_ids(true_task, p, generator))
        acc[str(p)] = accuracy(torch.where(route == true_task, within, -1), labels)
        task_acc[str(p)] = accuracy(route, true_task)
    return {"acc_task_agnostic_by_continuum": acc, "task_prediction_acc_by_continuum": task_acc}
