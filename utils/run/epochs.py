"""A session's epochs around any method's per-batch step: the learning-rate schedule, the model
selection, the divergence stop and the progress bar; ``train_session`` returns what they found.

A method (iTAML's ``learner_task_itaml.MetaLearner``) is the object that trains one session's model
a mini-batch at a time. It has ``model``, ``cfg`` (the session's args), ``session``, ``device`` and
``ctx`` (its torchrun place), and:
  - ``set_lr(lr)``: the learning rate of the epoch to come;
  - ``step(x, y)``: train on one mini-batch; the loss as a 0-d tensor, or None where this rank's
    shard of the batch was empty;
  - ``weights_finite()``: whether every weight is finite, as a 0-d tensor;
  - ``finish()``: after the last epoch, hand the model back as a plain module.
"""
from dataclasses import dataclass

import torch
from tqdm import tqdm

from utils.errors import Diverged
from utils.fast import distributed


def lr_at(cfg, epoch):
    """Step schedule of the release: lr × γ for every milestone reached (0-based epochs)."""
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.schedule)


@dataclass(frozen=True)
class SessionResult:
    """What a session's training found: every epoch's mean loss, and which epoch's model it kept
    (``selection``: the record's model-selection keys)."""
    losses: list
    selection: dict

    @property
    def final_loss(self):
        return self.losses[-1]


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


def train_session(method, loader, desc="train", test_accuracy=None):
    """All epochs of ``method``'s session over ``loader``; a ``SessionResult``. Raises ``Diverged``
    after the first epoch whose loss or weights are not finite, so that a run gone to NaN never saves
    its weights as a finished session.

    Which epoch's model is kept (``args.model_selection``): "last", the last epoch's, so no test data
    reaches a training decision; "release", the release's selection on the test set, through
    ``test_accuracy()`` (the base model's accuracy over the seen classes' test samples, read after
    every epoch): see ``ReleaseSelection``."""
    cfg = method.cfg
    selection = ReleaseSelection(cfg.epochs) if test_accuracy is not None else None
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch",
               disable=None if method.ctx.is_main else True, leave=False)
    losses = []
    try:
        for epoch in bar:
            method.model.train()
            lr = lr_at(cfg, epoch)
            method.set_lr(lr)
            steps = [loss for loss in (method.step(x, y) for x, y in loader) if loss is not None]
            mean = (torch.stack(steps).mean() if steps
                    else torch.zeros((), dtype=torch.float64, device=method.device))
            losses.append(_end_epoch(method, mean, epoch))
            if selection is not None:
                selection.after_epoch(epoch, test_accuracy(), method.model)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2g}")
        if selection is not None:
            selection.restore(method.model)
    finally:
        bar.close()
        method.finish()
    return SessionResult(losses, selection.summary() if selection is not None
                         else {"model_selection": "last", "selected_epoch": cfg.epochs})


def _end_epoch(method, loss, epoch):
    """The epoch's mean loss as a float, read together with the finiteness of the weights: the one
    wait for the device in an epoch. Under torchrun the non-finite flags are summed over the ranks
    (the loss stays each rank's own), so that every rank stops in the same epoch rather than one
    waiting forever for the others."""
    flags = torch.stack([~torch.isfinite(loss), ~method.weights_finite()]).to(loss.dtype)
    distributed.all_reduce_sum_([flags], method.ctx)
    loss, bad_loss, bad_weights = torch.cat([loss.reshape(1), flags]).tolist()
    if bad_loss or bad_weights:
        raise Diverged(method.session, epoch + 1, method.cfg.epochs,
                       "the training loss" if bad_loss else "the weights", method.cfg.lr)
    return loss
