"""iTAML's learner: the inner loop and meta-update of Alg. 1, and task-agnostic inference (Alg. 2).

Paper names: the base weights Φ_base = {θ, φ} are snapshotted at every mini-batch; task k's fast weights
Φ_k = {θ_k, φ_k} start from them and take ``r`` optimizer steps on task k's samples; the meta-update
interpolates with η = exp(−β·t/T). ``args.variant`` picks the paper's update ("paper") or what the
authors' release effectively computes ("official"); see the README for the differences.
"""
import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils import distributed
from utils.flat import FlatBuffer

PROTOCOLS = ("task_agnostic", "per_sample", "task_aware", "base")


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
    """BatchNorm cannot normalise a batch of one sample (there is no batch variance; on 1×1 maps it
    raises). A task may hold one sample of a mini-batch, so for such a step BatchNorm uses its running
    statistics and leaves them unchanged; the sample still gives its gradient."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if batch_size > 1 or not norms:
        yield
        return
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


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
        theta = [p for p in model.parameters() if id(p) not in head]
        phi = [p for p in model.parameters() if id(p) in head]
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
        # Paper: one optimizer state per task, so task i's momentum never moves task j's rows
        # (the release shared one RAdam across tasks: deviation 3). Official: one shared optimizer.
        self.optimizers = {}
        self.lr = cfg.lr

    def optimizer_for(self, k):
        key = k if self.cfg.variant == "paper" else "shared"
        if key not in self.optimizers:
            self.optimizers[key] = make_optimizer(self.cfg, [self.weights.data], self.lr)
        return self.optimizers[key]

    def set_lr(self, lr):
        self.lr = lr
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def inner_loop(self, x, y, k):
        """Alg. 1 inner loop: r optimizer steps on task k's samples, loss on task k's slice.
        Returns the last step's loss as a tensor (reading it would wait for the GPU)."""
        opt = self.optimizer_for(k)
        for _ in range(self.cfg.r):
            self.grads.zero_()
            for p, g in zip(self.weights.tensors, self.grad_views):
                p.grad = g  # again every step: a zero_grad elsewhere would have set it to None
            with single_sample_guard(self.model, len(x)), autocast(self.cfg, self.device):
                loss = task_loss(self.forward(x), y, k, self.cfg.class_per_task)
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
        weights, running = self.weights.data, self._running_data()
        with torch.no_grad():
            base = weights.clone()
            base_running = None if running is None else running.clone()
        if self.cfg.variant == "paper":
            losses, fast, fast_running = self._paper_fast_weights(batches, base, base_running,
                                                                  shares)
        else:
            losses, fast, fast_running = self._official_fast_weights(batches)
        with torch.no_grad():
            # The meta-update: Φ ← η·Φ_fast + (1−η)·Φ_base, Φ_fast being mean_k θ_k for θ and the
            # slices φ_k of the tasks in the batch for the head (other slices keep their base value).
            weights.copy_(base.lerp_(fast, self.eta))
            if fast_running is not None:
                running.copy_(base_running.lerp_(fast_running, self.eta))
        # BatchNorm's step counters count each rank's own inner steps: take rank 0's.
        distributed.broadcast_tensors_(distributed.counters(self.model), self.ctx)
        return torch.stack(losses).double().mean()

    def _paper_fast_weights(self, batches, base, base_running, shares=None):
        """Every task starts from Φ_base; returns the fast weights to interpolate towards.

        Under torchrun (``shares``) each rank trains the tasks of its shard; task k's fast weights
        are averaged over the ranks that saw it, weighted by their share of its samples, θ_fast is
        the mean of those averages over the K tasks of the global batch, and one all-reduce sums
        the ranks' parts (utils/distributed.py has the derivation). One process: the weights are
        exactly 1/K for θ and 1 for φ_k, and no collective call is made."""
        cpt, n, t = self.cfg.class_per_task, len(batches), self.theta_size
        weights, running = self.weights.data, self._running_data()
        fast = torch.zeros_like(base)
        # Alone, absent tasks' head rows keep the base; spread over ranks, every rank adds its part
        # to zeros and those rows get their base value back after the sum.
        if shares is None:
            fast[t:] = base[t:]
        fast_phi = self.weights.views(fast)[self.num_theta:]
        phi = self.weights.tensors[self.num_theta:]
        fast_running = None if running is None else torch.zeros_like(running)
        losses = []
        for k, x, y in batches:
            with torch.no_grad():
                weights.copy_(base)
                if running is not None:
                    running.copy_(base_running)
            losses.append(self.inner_loop(x, y, k))
            w_theta, w_phi = (1.0 / n, None) if shares is None else \
                (shares.theta_weight(k, len(y)), shares.head_weight(k, len(y)))
            with torch.no_grad():
                fast[:t].add_(weights[:t], alpha=w_theta)               # mean_k θ_k
                for f, p in zip(fast_phi, phi):                         # φ_k, task k's rows only
                    rows = p[task_slice(k, cpt)]
                    f[task_slice(k, cpt)] = rows if w_phi is None else rows * w_phi
                if running is not None:
                    fast_running.add_(running, alpha=w_theta)
        if shares is not None:
            distributed.all_reduce_sum_([fast] + ([] if running is None else [fast_running]),
                                        self.ctx)
            distributed.keep_absent_rows_(fast_phi, self.weights.views(base)[self.num_theta:],
                                          shares, cpt)
        return losses, fast, fast_running

    def _official_fast_weights(self, batches):
        """The release's effective update: tasks trained one after another from the live weights
        with one shared optimizer (its per-task reset was a no-op, deviation 1), and the "mean" is
        the last task's weights (deviation 2). It did not interpolate BatchNorm statistics."""
        losses = [self.inner_loop(x, y, k) for k, x, y in batches]
        # Under torchrun: the ranks' live weights, averaged (a plain run: unchanged).
        live = [t for t in (self.weights.data, self._running_data()) if t is not None]
        distributed.all_reduce_mean_(live, self.ctx)
        return losses, self.weights.data, None  # the live weights: Φ_last

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

    def train_session(self, loader, desc="train"):
        """All epochs of one session; the last epoch's model is kept (no test-set model selection)."""
        self.model.train()
        bar = tqdm(range(self.cfg.epochs), desc=desc, unit="epoch",
                   disable=None if self.ctx.is_main else True, leave=False)
        loss = float("nan")
        for epoch in bar:
            self.set_lr(lr_at(self.cfg, epoch))
            losses = [self.meta_step(x, y) for x, y in loader]
            loss = torch.stack(losses).mean().item()  # the one wait for the device in an epoch
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:.2g}")
        self.release()
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
    lr 1e-3, one epoch, batch 64, BCE on the slice, training transforms)."""
    adapted = copy.deepcopy(model)
    indices = memory.indices(data.task_classes(k))
    if len(indices) == 0 or cfg.adapt_epochs == 0:
        return adapted
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
    return adapted


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
    return results
