"""Under torchrun each rank's training loader yields its shard of every global mini-batch: both the
DataLoader path and the tensor-held one (args.gpu_data). No process group is needed for this."""
import torch

from incremental_dataloader import IncrementalData
from utils.data.memory import ReplayMemory
from utils.fast.distributed import DistContext
from utils.fast.gpu_data import TensorBatches


def ctx(rank, world_size):
    return DistContext(enabled=True, rank=rank, world_size=world_size)


def check_shards(single, per_rank, batch):
    """The ranks' j-th batches hold batch/W samples each and together the single-process j-th."""
    assert all(len(mine) == len(single) for mine in per_rank)
    for j, whole in enumerate(single):
        parts = [mine[j] for mine in per_rank]
        union = sorted(sum(parts, []))
        if j < len(single) - 1:
            assert [len(p) for p in parts] == [batch // len(parts)] * len(parts)
            assert union == sorted(whole)
        else:  # the last batch is completed by wrapping around to the epoch's first samples
            assert union == sorted(whole + single[0][:len(union) - len(whole)])


def test_dataloader_shards_make_the_single_process_batches(cfg_factory):
    cfg = cfg_factory(train_batch=16)
    data = IncrementalData(cfg)
    memory = ReplayMemory(cfg.memory, cfg.selection, cfg.seed)
    memory.update(data, data.task_classes(0), 0)
    # the training samples' own identities: their (relabelled) inputs flattened to tuples
    def epoch(loader):
        return [[tuple(x.flatten().tolist()) for x in xs] for xs, _ in loader]
    single = epoch(data.train_loader(1, memory, seed=5))
    per_rank = [epoch(data.train_loader(1, memory, seed=5, ctx=ctx(r, 2))) for r in range(2)]
    check_shards(single, per_rank, 16)
    assert epoch(data.train_loader(1, memory, seed=5, ctx=DistContext())) == single


def test_tensor_batches_shard_every_epoch_like_the_single_process_order():
    images = torch.arange(50, dtype=torch.float32)[:, None]
    labels = torch.arange(50)
    def epochs(ranks):
        loader = TensorBatches(images, labels, None, None, list(range(50)), 8, True, 3, ranks)
        out = [[x.flatten().int().tolist() for x, _ in loader] for _ in range(2)]
        assert len(loader) == len(out[0])
        return out
    single = epochs(None)
    assert single[0] != single[1]  # a new order every epoch, on every rank alike
    per_rank = [epochs((r, 2)) for r in range(2)]
    for e in range(2):
        check_shards(single[e], [mine[e] for mine in per_rank], 8)
