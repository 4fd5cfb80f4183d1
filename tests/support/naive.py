"""Reference implementations written the straightforward way, from the paper (docs/method.md) and
the release's deviations (docs/release.md) alone, for the benchmark and the equivalence tests only.

It shares no code with what it checks: nothing here comes from ``learner_task_itaml``,
``utils.inference`` or ``utils.fast`` (``tests/test_layout.py`` holds it to that). It imports only
torch and takes the network and the data's loaders from its caller, so a mistake in the fast
code's η, task loss, BatchNorm rule, task scores, continua, task prediction, single update or
accuracy shows up as a difference instead of passing both sides.

``NaiveMetaLearner.meta_step`` is Alg. 1 (with the release's deviations as the same switches of
``args``: task_start, meta_target, task_optimizer, batch_forward, r and r_newest) as one would
first write it: Φ_base is a deep copy of the model taken at every mini-batch, every tensor is
handled in its own Python loop, tasks are picked out with boolean masks, and the optimizers are
torch's defaults for the device. ``naive_evaluate`` classifies every routed sample with the
adapted model of the task it is routed to, protocol by protocol. Where the fast code draws random
numbers (the continua, the single update's order and augmentations) the reference draws the same
ones from the same seeds: that is the contract the comparisons rely on.
"""
import contextlib
import copy
import math

import torch
import torch.nn.functional as F

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
               torch.nn.SyncBatchNorm)


# ---------------------------------------------------------------- the pieces, from the paper

def eta(beta, session, num_task):
    """η = exp(−β·t/T), t the 0-based session (the release's convention: η = 1 at session 0)."""
    return math.exp(-beta * session / num_task)


def rows_of(k, cpt):
    """Task k's rows of the head: classes k·C … (k+1)·C − 1."""
    return slice(k * cpt, k * cpt + cpt)


def slice_bce(logits, y, k, cpt):
    """Binary cross-entropy with logits on task k's C logits; the target is 1 at the class's
    position within the task (y − k·C) and 0 elsewhere."""
    z = logits[:, rows_of(k, cpt)]
    target = torch.zeros_like(z)
    for n, label in enumerate(y.tolist()):
        target[n, label - k * cpt] = 1.0
    return F.binary_cross_entropy_with_logits(z, target)


@contextlib.contextmanager
def one_value_rule(model):
    """A BatchNorm layer in train mode cannot take statistics from a single value per channel (a
    batch of one vector, or one 1×1 map); such a layer uses its running statistics for the pass
    instead, leaving them as they are. Every other layer, a one-image feature map included,
    normalises with the batch's statistics as usual."""
    training = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.training]

    def decide(norm, inputs):
        x = inputs[0]
        values_per_channel = x.numel() // x.shape[1]
        norm.training = values_per_channel > 1

    handles = [m.register_forward_pre_hook(decide) for m in training]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in training:
            m.training = True


def max_logit_per_task(logits, num_tasks, cpt):
    """s[n, k] = the largest of sample n's logits in task k's rows."""
    s = torch.empty(len(logits), num_tasks, dtype=logits.dtype)
    for k in range(num_tasks):
        s[:, k] = logits[:, rows_of(k, cpt)].max(1).values
    return s


def cut_continua(true_task, size, generator):
    """Each sample's continuum: the samples of every task, in increasing task order, are put in a
    random order (one ``torch.randperm`` of their number from ``generator``) and cut into runs of
    ``size``, the last one shorter where they do not divide. Continuum numbers run on across
    tasks."""
    ids = torch.full_like(true_task, -1)
    first = 0
    for k in sorted(set(true_task.tolist())):
        mine = [n for n in range(len(true_task)) if int(true_task[n]) == k]
        order = torch.randperm(len(mine), generator=generator).tolist()
        for j, o in enumerate(order):
            ids[mine[o]] = first + j // size
        first += math.ceil(len(mine) / size)
    return ids


def route_continua(scores, continuum):
    """Each sample's task: the argmax over tasks of its continuum's mean score."""
    route = torch.empty(len(scores), dtype=torch.long)
    for c in sorted(set(continuum.tolist())):
        members = continuum == c
        route[members] = int(scores[members].mean(0).argmax())
    return route


def percent(pred, labels):
    """Percentage of pred equal to labels (NaN for none)."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (int((pred == labels).sum()) / len(labels))


@torch.no_grad()
def logits_of(model, loader, device):
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def single_update(model, data, memory, k, cfg, device, seed):
    """A copy of the model, fine-tuned on task k's exemplars: Adam at ``adapt_lr`` on every
    parameter, ``adapt_epochs`` epochs in batches of ``adapt_batch`` with the training transforms,
    BatchNorm in train mode, BCE on task k's slice. The order and the augmentations come from the
    global generator seeded by ``seed`` (inside a fork, so the caller's draws are untouched) and the
    loader seeded by ``seed``. ``adapt_bn = "reestimate"``: BatchNorm's statistics are then measured
    again on the plain exemplars."""
    adapted = copy.deepcopy(model)
    exemplars = memory.indices(data.task_classes(k))
    if len(exemplars) == 0 or cfg.adapt_epochs == 0:
        return adapted
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        adapted.train()
        opt = torch.optim.Adam(adapted.parameters(), lr=cfg.adapt_lr)
        loader = data.loader(data.train_set, exemplars, cfg.adapt_batch, shuffle=True, seed=seed)
        for _ in range(cfg.adapt_epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                opt.zero_grad()
                with one_value_rule(adapted):
                    loss = slice_bce(adapted(x), y, k, cfg.class_per_task)
                loss.backward()
                opt.step()
    if cfg.adapt_bn == "reestimate":
        measure_statistics(adapted, data, exemplars, cfg, device)
    return adapted


@torch.no_grad()
def measure_statistics(model, data, exemplars, cfg, device):
    """Every BatchNorm layer's running mean and variance as the plain average over one pass of
    the un-augmented exemplars in train mode; no weight changes."""
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        return
    saved = {}
    for m in norms:
        saved[m] = m.momentum
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    for x, _ in data.loader(data.train_plain, exemplars, cfg.adapt_batch):
        with one_value_rule(model):
            model(x.to(device))
    for m in norms:
        m.momentum = saved[m]


# ---------------------------------------------------------------- training (Alg. 1)

def default_optimizer(cfg, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class NaiveMetaLearner:
    """Alg. 1 and the release's deviations, read from the same switches as ``MetaLearner``."""

    def __init__(self, model, cfg, session):
        self.model, self.cfg, self.session = model, cfg, session
        self.eta = eta(cfg.beta, session, cfg.num_task)
        self.optimizers = {}

    def optimizer_for(self, k):
        key = k if self.cfg.task_optimizer == "per_task" else "shared"
        if key not in self.optimizers:
            self.optimizers[key] = default_optimizer(self.cfg, self.model.parameters())
        return self.optimizers[key]

    def steps(self, k):
        """r; the session's newest task takes r_newest where it is set (the release's SVHN)."""
        if k == self.session and self.cfg.r_newest is not None:
            return self.cfg.r_newest
        return self.cfg.r

    def inner_loop(self, x, y, k):
        opt = self.optimizer_for(k)
        for _ in range(self.steps(k)):
            opt.zero_grad()
            with one_value_rule(self.model):
                loss = slice_bce(self.model(x), y, k, self.cfg.class_per_task)
            loss.backward()
            opt.step()
        return loss.item()

    def meta_step(self, x, y):
        cpt = self.cfg.class_per_task
        tasks = sorted(set((y // cpt).tolist()))
        if self.cfg.batch_forward:
            with torch.no_grad(), one_value_rule(self.model):
                self.model(x)  # the release's extra forward: BatchNorm statistics only
        base = copy.deepcopy(self.model)  # Φ_base
        losses = []
        fast = self._start_mean(base) if self.cfg.meta_target == "mean" else None
        for k in tasks:
            if self.cfg.task_start == "base":
                with torch.no_grad():
                    for p, b in zip(self.model.parameters(), base.parameters()):
                        p.copy_(b)
                    for buf, b in zip(self.model.buffers(), base.buffers()):
                        if buf.is_floating_point():
                            buf.copy_(b)
            losses.append(self.inner_loop(x[y // cpt == k], y[y // cpt == k], k))
            if fast is not None:
                self._add_to_mean(fast, k, len(tasks))
        if fast is None:  # "last": the live weights; BatchNorm statistics stay as they are
            fast = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                b = base.get_parameter(name)
                p.copy_(b + self.eta * (fast[name] - b))
            if self.cfg.meta_target == "mean":
                for name, buf in self.model.named_buffers():
                    if buf.is_floating_point():
                        b = base.get_buffer(name)
                        buf.copy_(b + self.eta * (fast[name] - b))
        return sum(losses) / len(losses)

    @staticmethod
    def _start_mean(base):
        """θ and BatchNorm statistics accumulate from zero; the head starts as the base's."""
        fast = {}
        for name, p in base.named_parameters():
            fast[name] = p.detach().clone() if name.startswith("head.") else torch.zeros_like(p)
        for name, b in base.named_buffers():
            if b.is_floating_point():
                fast[name] = torch.zeros_like(b)
        return fast

    @torch.no_grad()
    def _add_to_mean(self, fast, k, n):
        """θ and BatchNorm statistics averaged over tasks, φ_k (rows and bias) from task k."""
        rows = rows_of(k, self.cfg.class_per_task)
        for name, p in self.model.named_parameters():
            if name.startswith("head."):
                fast[name][rows] = p[rows]
            else:
                fast[name] += p / n
        for name, buf in self.model.named_buffers():
            if buf.is_floating_point():
                fast[name] += buf / n


# ---------------------------------------------------------------- inference (Alg. 2)

def naive_evaluate(model, data, memory, session, cfg, device, seed=0):
    """The four accuracies, each routed sample classified by the adapted model of its route."""
    cpt, num_tasks = cfg.class_per_task, session + 1
    indices = data.seen_test_indices(session)
    logits, labels = logits_of(model, data.loader(data.test_set, indices, cfg.test_batch), device)
    true_task = labels // cpt
    scores = max_logit_per_task(logits, num_tasks, cpt)
    generator = torch.Generator().manual_seed(seed)
    routes = {
        "task_agnostic": route_continua(scores, cut_continua(true_task, cfg.continuum, generator)),
        "per_sample": scores.argmax(1),
        "task_aware": true_task,
    }
    preds = {name: torch.full_like(labels, -1) for name in routes}
    for k in range(num_tasks):
        adapted = model if session == 0 else single_update(model, data, memory, k, cfg, device,
                                                           seed + k)
        for name, route in routes.items():
            positions = torch.nonzero(route == k).squeeze(1)
            if len(positions):
                out, _ = logits_of(adapted, data.loader(
                    data.test_set, indices[positions.numpy()], cfg.test_batch), device)
                preds[name][positions] = out[:, rows_of(k, cpt)].argmax(1) + k * cpt
    preds["base"] = logits[:, :num_tasks * cpt].argmax(1)
    results = {f"acc_{name}": percent(pred, labels) for name, pred in preds.items()}
    results["per_task"] = {name: [percent(pred[true_task == j], labels[true_task == j])
                                  for j in range(num_tasks)] for name, pred in preds.items()}
    return results
