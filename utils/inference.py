"""Task-agnostic inference (Alg. 2) and every protocol we report, after each session.

A continuum of test samples from one unknown task arrives: its task is the argmax over seen tasks of
the mean, over its samples, of the base model's largest logit in that task's slice (``task_scores``,
``continuum_ids``, ``predict_tasks``); a copy of the model is adapted once on that task's exemplars
(the "single update", ``adapt``) and classifies within the task's slice. ``evaluate`` measures this
and the per-sample, task-aware and base protocols over every class seen so far.
"""
import contextlib
import copy

import torch
from tqdm import tqdm

from learner_task_itaml import single_sample_guard, task_loss
from utils.fast import distributed
from utils.fast.device import autocast, prepare_model, to_input
from utils.tasks import class_at, seen_classes, task_of, task_slice

PROTOCOLS = ("task_agnostic", "per_sample", "task_aware", "base")
CONTINUUM_SIZES = (1, 2, 5, 10, 20, 50)  # the sizes acc_task_agnostic_by_continuum reports


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
    seen = logits[:, :seen_classes(num_tasks - 1, class_per_task)]
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
    the statistics match neither the old weights nor the new ones (docs/study.md: *The single update on
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
    return accuracy(logits[:, :seen_classes(session, cfg.class_per_task)].argmax(1), labels)


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
    true_task = task_of(labels, cpt)
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
        within[positions] = class_at(logits_k[:, task_slice(k, cpt)].argmax(1), k, cpt)
    preds = {name: torch.where(route == true_task, within, -1) for name, route in routes.items()}
    preds["base"] = logits[:, :seen_classes(session, cpt)].argmax(1)
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
