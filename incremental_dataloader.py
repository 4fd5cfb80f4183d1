"""Class-incremental data: data sets, class order, tasks, the replay memory and loaders.

Labels are handled as *positions* in the class order: position p is the p-th class to arrive, task k
holds positions ``[k*class_per_task, (k+1)*class_per_task)`` and so owns the same rows of the head.
The memory stores indices into the training set, so it is small, exact and saved as JSON.
"""
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from data_sources import DATA_SOURCES, augment_batch, normalise_batch
from utils.distributed import ShardSampler, local_batch, shard
from utils.errors import ConfigError


class Relabeled(Dataset):
    """A data set whose labels are replaced by their position in the class order."""

    def __init__(self, dataset, position):
        self.dataset, self.position = dataset, position

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return x, int(self.position[y])


def make_class_order(kind, num_data_classes, seed, class_names=None):
    """The order in which classes arrive: "natural" (0, 1, …), "shuffled" (seeded by ``seed``), or a
    path to a text file naming classes one per line, e.g. the classes.txt another run wrote."""
    if kind == "natural":
        return list(range(num_data_classes))
    if kind == "shuffled":
        return np.random.RandomState(seed).permutation(num_data_classes).tolist()
    names = class_names or [str(c) for c in range(num_data_classes)]
    with open(kind, encoding="utf-8") as f:
        listed = [line.strip() for line in f if line.strip()]
    index = {name: c for c, name in enumerate(names)}
    unknown = [name for name in listed if name not in index]
    if unknown or len(set(listed)) != len(listed):
        problem = f"names classes the data set does not have ({unknown[:3]})" if unknown \
            else "lists a class twice"
        raise ConfigError(f"args.class_order = {kind!r} {problem}; list each class of the data set "
                          "at most once, one name per line.")
    return [index[name] for name in listed]


class IncrementalData:
    """A data set cut into tasks along a class order; loaders for training, evaluation and memory."""

    def __init__(self, cfg, class_order=None, source=None):
        self.cfg = cfg
        src = source if source is not None else DATA_SOURCES[cfg.dataset](cfg)
        if cfg.num_class > src.num_class:
            raise ConfigError(f"args.num_class = {cfg.num_class} but {cfg.dataset} has only "
                              f"{src.num_class} classes; lower num_class.")
        names = src.class_names or [str(c) for c in range(src.num_class)]
        if class_order is None:
            class_order = make_class_order(cfg.class_order, src.num_class, cfg.seed, names)
            if len(class_order) < cfg.num_class:
                raise ConfigError(f"args.class_order = {cfg.class_order!r} lists {len(class_order)} "
                                  f"classes but args.num_class = {cfg.num_class}; list more classes "
                                  "or lower num_class.")
            class_order = class_order[:cfg.num_class]
        self.class_order = [int(c) for c in class_order]
        if not all(0 <= c < src.num_class for c in self.class_order):
            raise ConfigError(f"the saved class order {self.class_order} names classes outside "
                              f"0..{src.num_class - 1}, which {cfg.dataset} does not have; restore "
                              "class_order.json in args.checkpoint or start again at task 0.")
        position = np.full(src.num_class, -1, dtype=np.int64)  # -1: a class outside the run
        position[self.class_order] = np.arange(cfg.num_class)
        self.input_shape = src.input_shape
        self.class_names = [names[c] for c in self.class_order]
        self.train_labels = position[src.train_labels]
        self.test_labels = position[src.test_labels]
        self.train_set = Relabeled(src.train, position)
        self.train_plain = Relabeled(src.train_plain, position)
        self.test_set = Relabeled(src.test, position)
        self.on_device = self._hold_on_device(src) if cfg.gpu_data else {}

    def _hold_on_device(self, src):
        """args.gpu_data: each split as one tensor on the run's device, with its augmentation."""
        if src.tensors is None:
            raise ConfigError(f"args.gpu_data = True but {self.cfg.dataset} is not held in memory; "
                              "set gpu_data = False.")
        device = torch.device("cuda" if self.cfg.device == "auto" else self.cfg.device)
        t = src.tensors
        train, test = t.train.to(device), t.test.to(device)
        train_y, test_y = torch.from_numpy(self.train_labels), torch.from_numpy(self.test_labels)
        return {id(self.train_set): (train, train_y, t.augment, t.stats),
                id(self.train_plain): (train, train_y, None, t.stats),
                id(self.test_set): (test, test_y, None, t.stats)}

    def task_classes(self, k):
        cpt = self.cfg.class_per_task
        return list(range(k * cpt, (k + 1) * cpt))

    def class_indices(self, c):
        """Training-set indices of the class at position ``c``."""
        return np.flatnonzero(self.train_labels == c)

    def task_indices(self, k):
        """Training-set indices of task k's classes: D(k) in the paper."""
        cpt = self.cfg.class_per_task
        return np.flatnonzero((self.train_labels >= k * cpt) & (self.train_labels < (k + 1) * cpt))

    def seen_test_indices(self, session):
        """Test-set indices of every class seen up to and including ``session``."""
        seen = (session + 1) * self.cfg.class_per_task
        return np.flatnonzero((self.test_labels >= 0) & (self.test_labels < seen))

    def train_loader(self, session, memory, seed, ctx=None):
        """D(t) ∪ M(t−1), shuffled together (paper Alg. 1, line 3). Under torchrun (``ctx``) each
        rank gets its shard of every global mini-batch of ``args.train_batch`` samples."""
        indices = np.concatenate([self.task_indices(session), memory.indices()])
        return self.loader(self.train_set, indices, self.cfg.train_batch, shuffle=True, seed=seed,
                           ctx=ctx)

    def loader(self, dataset, indices, batch_size, shuffle=False, seed=0, ctx=None):
        ranks = (ctx.rank, ctx.world_size) if ctx is not None and ctx.enabled else None
        if id(dataset) in self.on_device:
            return TensorBatches(*self.on_device[id(dataset)], indices, batch_size, shuffle, seed,
                                 ranks)
        generator = torch.Generator().manual_seed(int(seed))
        subset = Subset(dataset, np.asarray(indices, dtype=np.int64).tolist())
        options = dict(num_workers=self.cfg.num_workers, persistent_workers=False,
                       pin_memory=torch.cuda.is_available())
        if ranks is None:
            return DataLoader(subset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                              **options)
        # Every rank draws the single-process order of each epoch from the same seeded generator
        # and takes its shard of it; the shards of one step make the global mini-batch.
        order = RandomSampler(subset, generator=generator) if shuffle else SequentialSampler(subset)
        return DataLoader(subset, batch_size=local_batch(batch_size, ranks[1]),
                          sampler=ShardSampler(order, *ranks), generator=generator, **options)


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


class ReplayMemory:
    """At most ``size`` exemplars, split equally over the classes seen so far.

    Each class's exemplars are kept in priority order (a seeded shuffle, herding order, or data-set
    order for the release's "first" selection), so when new classes arrive and the per-class quota
    shrinks, a class keeps its first ``quota`` exemplars.
    """

    def __init__(self, size, selection="random", seed=0):
        self.size, self.selection, self.seed = size, selection, seed
        self.exemplars = {}  # class position -> np.ndarray of training-set indices

    def quota(self, num_seen):
        return self.size // num_seen

    def __len__(self):
        return sum(len(v) for v in self.exemplars.values())

    def classes(self):
        return sorted(self.exemplars)

    def indices(self, classes=None):
        classes = self.classes() if classes is None else classes
        parts = [self.exemplars[c] for c in classes if c in self.exemplars]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def update(self, data, new_classes, session, model=None, device="cpu"):
        """Shrink old classes to the new quota, then pick exemplars of ``new_classes``."""
        m = self.quota(len(self.exemplars) + len(new_classes))
        for c in self.exemplars:
            self.exemplars[c] = self.exemplars[c][:m]
        for c in new_classes:
            candidates = data.class_indices(c)
            if self.selection == "random":
                rng = np.random.default_rng([self.seed, session, c])
                chosen = rng.permutation(candidates)[:m]
            elif self.selection == "first":  # the release: the first m in data-set order
                chosen = candidates[:m]
            else:
                feats = extract_features(model, data, candidates, device)
                chosen = candidates[herding(feats, m)]
            self.exemplars[c] = np.asarray(chosen, dtype=np.int64)

    def state_dict(self):
        return {"size": self.size, "selection": self.selection, "seed": self.seed,
                "exemplars": {str(c): v.tolist() for c, v in sorted(self.exemplars.items())}}

    @classmethod
    def from_state(cls, state):
        memory = cls(int(state["size"]), state["selection"], int(state["seed"]))
        memory.exemplars = {int(c): np.asarray(v, dtype=np.int64)
                            for c, v in state["exemplars"].items()}
        return memory


@torch.no_grad()
def extract_features(model, data, indices, device):
    """L2-normalised features θ(x) of training samples, seen with test transforms."""
    was_training = model.training
    model.eval()
    feats = [model.features(x.to(device)).flatten(1).float().cpu()
             for x, _ in data.loader(data.train_plain, indices, data.cfg.test_batch)]
    model.train(was_training)
    feats = torch.cat(feats)
    return feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)


def herding(features, m):
    """iCaRL's herding: greedily pick samples whose running mean best tracks the class mean."""
    m = min(m, len(features))
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(len(features), dtype=torch.bool)
    order = []
    for k in range(1, m + 1):
        dist = (mu - (running + features) / k).norm(dim=1)
        dist[taken] = float("inf")
        i = int(dist.argmin())
        order.append(i)
        taken[i] = True
        running += features[i]
    return np.asarray(order, dtype=np.int64)
