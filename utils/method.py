"""The seam every training method sits behind (``args.method``): iTAML's ``MetaLearner``
(learner_task_itaml.py) and the baselines (baselines.py) are each one ``Method``. The session loop
(utils/run/session.py) gets the class from one factory (utils/run/methods.py), asks it what a
session trains on and whether it keeps a replay memory, and hands the object to the session's
epochs (utils/run/epochs.py); everything else (the memory's exemplars, the evaluation by the four
protocols, the records, the report) is the same code for every method.
"""
import numpy as np


class Method:
    """Trains one session's model a mini-batch at a time.

    It has ``model``, ``cfg`` (the session's args), ``session``, ``device`` and ``ctx`` (its torchrun
    place), and implements ``set_lr``, ``step``, ``weights_finite`` and ``finish``. As a class it
    says what a session trains on (``train_indices``), whether it keeps a replay memory
    (``keeps_memory``), how the log names it (``describe``) and what its records add (``summary``).
    """
    keeps_memory = True  # the memory M(t) is chosen after every session (and read by the update)

    def __init__(self, model, cfg, session, device="cpu", ctx=None):
        self.model, self.cfg, self.session, self.device, self.ctx = model, cfg, session, device, ctx

    @staticmethod
    def train_indices(data, session, memory):
        """The training-set indices session ``session`` trains on: D(t) ∪ M(t−1) (Alg. 1, line 3)."""
        return np.concatenate([data.task_indices(session), memory.indices()])

    @staticmethod
    def describe(cfg):
        """How the log's first line names what trains."""
        raise NotImplementedError

    def summary(self):
        """The method's own keys of a session's record."""
        return {}

    def set_lr(self, lr):
        """The learning rate of the epoch to come."""
        raise NotImplementedError

    def step(self, x, y):
        """Train on one mini-batch; the loss as a 0-d tensor, or None where this rank's shard of the
        batch was empty (it still takes part in the collectives)."""
        raise NotImplementedError

    def weights_finite(self):
        """Whether every weight is finite, as a 0-d tensor (read with the epoch's loss: one wait)."""
        raise NotImplementedError

    def finish(self):
        """The session's training is over: hand the model back as a plain module."""
        raise NotImplementedError
