"""Reference implementations written the straightforward way, for the benchmark and the equivalence
tests only: the same arithmetic as ``learner_task_itaml``, without its fast path.

``NaiveMetaLearner.meta_step`` is Alg. 1 (with the release's deviations as the same switches of
``args``) as one would first write it: Φ_base is a deep copy of the model taken at every mini-batch,
every tensor is handled in its own Python loop, tasks are picked out with boolean masks, and the
optimizers are torch's defaults for the device. ``naive_evaluate`` classifies every routed sample
with the adapted model of the task it is routed to, protocol by protocol.
"""
import copy

import torch

from learner_task_itaml import eta_for, single_sample_guard, task_loss, task_slice
from utils.inference import (accuracy, adapt, continuum_ids, predict_logits, predict_tasks,
                             task_scores)


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
        self.model, self.cfg = model, cfg
        self.eta = eta_for(cfg.beta, session, cfg.num_task)
        self.optimizers = {}

    def optimizer_for(self, k):
        key = k if self.cfg.task_optimizer == "per_task" else "shared"
        if key not in self.optimizers:
            self.optimizers[key] = default_optimizer(self.cfg, self.model.parameters())
        return self.optimizers[key]

    def inner_loop(self, x, y, k):
        opt = self.optimizer_for(k)
        for _ in range(self.cfg.r):
            opt.zero_grad()
            with single_sample_guard(self.model, len(x)):
                loss = task_loss(self.model(x), y, k, self.cfg.class_per_task)
            loss.backward()
            opt.step()
        return loss.item()

    def meta_step(self, x, y):
        cpt = self.cfg.class_per_task
        tasks = sorted(set((y // cpt).tolist()))
        if self.cfg.batch_forward:
            with torch.no_grad(), single_sample_guard(self.model, len(x)):
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
        cpt = self.cfg.class_per_task
        for name, p in self.model.named_parameters():
            if name.startswith("head."):
                fast[name][task_slice(k, cpt)] = p[task_slice(k, cpt)]
            else:
                fast[name] += p / n
        for name, buf in self.model.named_buffers():
            if buf.is_floating_point():
                fast[name] += buf / n


def naive_evaluate(model, data, memory, session, cfg, device, seed=0):
    """The four accuracies, each routed sample classified by the adapted model of its route."""
    cpt, num_tasks = cfg.class_per_task, session + 1
    indices = data.seen_test_indices(session)
    logits, labels = predict_logits(model, data.loader(data.test_set, indices, cfg.test_batch),
                                    device)
    true_task = labels // cpt
    scores = task_scores(logits, num_tasks, cpt)
    generator = torch.Generator().manual_seed(seed)
    routes = {
        "task_agnostic": predict_tasks(scores, continuum_ids(true_task, cfg.continuum, generator)),
        "per_sample": scores.argmax(1),
        "task_aware": true_task,
    }
    preds = {name: torch.full_like(labels, -1) for name in routes}
    for k in range(num_tasks):
        adapted = model if session == 0 else adapt(model, data, memory, k, cfg, device, seed + k)
        for name, route in routes.items():
            positions = torch.nonzero(route == k).squeeze(1)
            if len(positions):
                out, _ = predict_logits(adapted, data.loader(
                    data.test_set, indices[positions.numpy()], cfg.test_batch), device)
                preds[name][positions] = out[:, task_slice(k, cpt)].argmax(1) + k * cpt
    preds["base"] = logits[:, :num_tasks * cpt].argmax(1)
    results = {f"acc_{name}": accuracy(pred, labels) for name, pred in preds.items()}
    results["per_task"] = {name: [accuracy(pred[true_task == j], labels[true_task == j])
                                  for j in range(num_tasks)] for name, pred in preds.items()}
    return results
