"""Class-incremental data: the data set cut into tasks along a class order, and its loaders.

Labels are handled as *positions* in the class order: position p is the p-th class to arrive, task k
holds positions ``[k*class_per_task, (k+1)*class_per_task)`` and so owns the same rows of the head
(``utils/tasks.py`` holds that arithmetic).
The replay memory lives in ``utils/data/memory.py``; the data sets' readers behind
``data_sources.py``.
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from data_sources import dataset_spec
from utils.errors import ConfigError
from utils.fast.device import resolve_device
from utils.fast.distributed import ShardSampler, local_batch
from utils.fast.gpu_data import TensorBatches
from utils.tasks import seen_classes, task_classes, task_of


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
    """The order in which classes arrive: "natural" (0, 1, …), "shuffled" (seeded by ``seed``),
    "seed1993" (the permutation PyCIL and FACIL's ``cifar100_icarl`` use: ``np.random.seed(1993)``,
    then a permutation of the classes, whatever ``seed``), or a path to a text file naming classes
    one per line, e.g. the classes.txt another run wrote."""
    if kind == "natural":
        return list(range(num_data_classes))
    if kind in ("shuffled", "seed1993"):
        state = np.random.RandomState(1993 if kind == "seed1993" else seed)
        return state.permutation(num_data_classes).tolist()
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

    def __init__(self, cfg, class_order=None, source=None, device=None):
        """``device``: where ``args.gpu_data`` holds the data (None: ``args.device``'s)."""
        self.cfg = cfg
        src = source if source is not None else dataset_spec(cfg.dataset).read(cfg)
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
        self.on_device = self._hold_on_device(src, device) if cfg.gpu_data else {}

    def _hold_on_device(self, src, device):
        """args.gpu_data: each split as one tensor on the run's device, with its augmentation (the
        data sets whose spec holds them in memory: ``check_args`` refuses the others)."""
        device = resolve_device(self.cfg.device) if device is None else device
        t = src.tensors
        train, test = t.train.to(device), t.test.to(device)
        train_y, test_y = torch.from_numpy(self.train_labels), torch.from_numpy(self.test_labels)
        return {id(self.train_set): (train, train_y, t.augment, t.stats),
                id(self.train_plain): (train, train_y, None, t.stats),
                id(self.test_set): (test, test_y, None, t.stats)}

    def task_classes(self, k):
        return task_classes(k, self.cfg.class_per_task)

    def class_indices(self, c):
        """Training-set indices of the class at position ``c``."""
        return np.flatnonzero(self.train_labels == c)

    def task_indices(self, k):
        """Training-set indices of task k's classes: D(k) in the paper."""
        known = self.train_labels >= 0  # -1: a class outside the run
        return np.flatnonzero(known & (task_of(self.train_labels, self.cfg.class_per_task) == k))

    def seen_test_indices(self, session):
        """Test-set indices of every class seen up to and including ``session``."""
        seen = seen_classes(session, self.cfg.class_per_task)
        return np.flatnonzero((self.test_labels >= 0) & (self.test_labels < seen))

    def train_loader(self, session, memory, seed, ctx=None):
        """D(t) ∪ M(t−1), shuffled together (paper Alg. 1, line 3)."""
        indices = np.concatenate([self.task_indices(session), memory.indices()])
        return self.training_loader(indices, seed, ctx)

    def training_loader(self, indices, seed, ctx=None):
        """Mini-batches of ``args.train_batch`` training samples ``indices``, shuffled with
        training transforms. Under torchrun (``ctx``) each rank gets its shard of every global
        mini-batch."""
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
