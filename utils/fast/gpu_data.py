"""``args.gpu_data``: a small data set held as one tensor on the GPU, its mini-batches gathered,
augmented and normalised there (``utils/data/augmentation.py``: ``augment_batch``), with no worker
processes and no per-sample Python."""
import math

import numpy as np
import torch

from utils.data.augmentation import augment_batch, normalise_batch
from utils.fast.distributed import local_batch, shard


class TensorBatches:
    """Mini-batches of a split held as one tensor (``args.gpu_data``): one gather per batch and a
    batched augmentation on the tensor's device, so no worker processes and no per-sample Python.
    Labels (class positions) stay on the host, where the learner plans its split by task."""

    def __init__(self, images, labels, augment, stats, indices, batch_size, shuffle, seed,
                 ranks=None):
        self.images, self.labels, self.augment, self.stats = images, labels, augment, stats
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.ranks = ranks  # (rank, world_size) under torchrun: this rank's shard of each epoch
        if ranks is not None:
            batch_size = local_batch(batch_size, ranks[1])
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(int(seed))  # order and augmentation draws

    def __len__(self):
        n = len(self.indices) if self.ranks is None else local_batch(len(self.indices), self.ranks[1])
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.shuffle:  # a new order every epoch, as a DataLoader's
            order = order[torch.randperm(len(order), generator=self.generator)]
        if self.ranks is not None:
            order = torch.as_tensor(shard(order.numpy(), *self.ranks))
        for chunk in order.split(self.batch_size):
            x = self.images[chunk.to(self.images.device)]
            if self.stats is not None:  # uint8 images: to [0, 1], augment, normalise
                x = augment_batch(x.float().div_(255.0), self.augment, self.generator)
                x = normalise_batch(x, self.stats)
            yield x, self.labels[chunk]
