"""Networks of the paper, picked by data set name.

Every network exposes the split the method needs: ``features`` is the feature extractor θ and ``head``
the one bias-free linear classifier φ whose rows ``[k*class_per_task, (k+1)*class_per_task)`` belong to
task k. The learner finds φ through ``model.head``; everything else is θ.
"""
import math

import torch.nn as nn

from utils.errors import ConfigError


class MLP(nn.Module):
    """The paper's MNIST network: 784-400-400 with ReLUs, then a bias-free head (release: RPS-Net MLP)."""

    def __init__(self, input_shape, num_class, hidden=400):
        super().__init__()
        in_features = math.prod(input_shape)
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_class, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


# data set name -> constructor(input_shape, num_class)
NETWORKS = {
    "mnist": MLP,
    "digits": MLP,
}


def build_network(dataset, input_shape, num_class):
    """The paper's network for ``dataset``, with a head of ``num_class`` rows."""
    if dataset not in NETWORKS:
        raise ConfigError(f"args.dataset: no network is defined for {dataset!r}; "
                          f"choose one of {sorted(NETWORKS)}.")
    return NETWORKS[dataset](tuple(input_shape), num_class)
