"""What each of the two gloo ranks of tests/test_distributed.py runs, importable by spawned
children.

A rank joins the group as under torchrun (``utils.fast.distributed.setup`` reads RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT), calls every collective once, then, for each of ``STEPS``,
builds the learner the runs use, ``learner_task_itaml.MetaLearner``, on a fresh ``Net`` and calls
its ``meta_step`` on the rank's shard of the global batch. The test computes what the weights must
be from plain SGD steps of its own; nothing here computes an expected value.
"""
import contextlib
import datetime
import math
import os
import traceback

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import baselines as B
import learner_task_itaml as L
from tests.support.cfg import make_cfg
from utils.fast import distributed as D

CPT, NUM_TASK, LR = 2, 4, 0.4
BETA, SESSION = 1.0, 2
ETA = math.exp(-BETA * SESSION / NUM_TASK)  # η = exp(−β·t/T) of Alg. 1 at this session
TRAIN_N, TRAIN_BATCH, EPOCHS, SEED = 23, 8, 3, 5
EVAL_SIZES = (0, 1, 2, 7, 10)

# Rows of the global batch each rank holds, per scenario (labels in GLOBAL_Y).
SHARDS = {
    "absent_task": ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]),   # ranks see tasks {0, 1} and {1, 2}; 3 none
    "empty_shard": ([0, 1, 7, 8, 9], []),                # rank 1 holds nothing at all
    # task 0 split 2:2, task 1 split 5:2, task 2 on rank 1 only, task 3 nowhere
    "unbalanced": ([0, 1, 2, 3, 4, 5, 6], [7, 8, 10, 11, 12, 13]),
}
GLOBAL_Y = torch.tensor([0, 1, 2, 3, 2, 3, 2, 4, 5, 4, 0, 1, 2, 3])
GLOBAL_X = torch.linspace(-1.5, 1.3, len(GLOBAL_Y) * 3, dtype=torch.float64).reshape(-1, 3).sin()

# The meta-steps each rank takes, as "variant/scenario/weighting". The learner weights a task's
# ranks by their samples (m_k^r / M_k); "ranks" (1/n_k each), TaskShares' other weighting, is
# handed to it by ``weighted_by``.
OWN_WEIGHTING = "samples"
# Experience replay's steps, as "loss/scenario", on the network without BatchNorm.
ER_STEPS = ("task_bce/unbalanced", "ce/unbalanced", "task_bce/empty_shard", "ce/absent_task")
STEPS = ("paper/absent_task/samples", "paper/empty_shard/samples", "paper/unbalanced/samples",
         "paper/unbalanced/ranks", "official/absent_task/samples", "official/empty_shard/samples",
         "official/unbalanced/samples")


class Net(nn.Module):
    """θ = a linear layer (and BatchNorm), φ = a bias-free head of CPT rows a task."""

    def __init__(self, bn=True):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        layers = [nn.Linear(3, 3)] + ([nn.BatchNorm1d(3)] if bn else [])
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(3, CPT * NUM_TASK, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.features(x))


def learner_cfg(variant, r=1):
    """A checked config (the digits demo's, shrunk): plain SGD without momentum or weight decay,
    so that the test can take the inner steps by hand; the variant's presets for the rest."""
    return make_cfg(variant=variant, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=LR,
                    beta=BETA, r=r, num_task=NUM_TASK, num_class=CPT * NUM_TASK,
                    class_per_task=CPT)


def er_step(model, x, y, ctx, loss):
    """One mini-batch of experience replay (``args.er_loss`` = ``loss``) at session SESSION."""
    cfg = make_cfg(method="er", er_loss=loss, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                   lr=LR, num_task=NUM_TASK, num_class=CPT * NUM_TASK, class_per_task=CPT)
    return B.ExperienceReplay(model, cfg, SESSION, "cpu", ctx).step(x, y)


def meta_step(model, x, y, ctx, variant="paper", r=1):
    """One mini-batch of Alg. 1 by a fresh ``MetaLearner`` at session SESSION on ``model``."""
    return L.MetaLearner(model, learner_cfg(variant, r), SESSION, "cpu", ctx).meta_step(x, y)


@contextlib.contextmanager
def weighted_by(weighting):
    """The learner's ``task_shares`` calls recorded (the list yielded; none in a plain run). For
    OWN_WEIGHTING they are left as the learner makes them, so that the test sees which weighting
    it picks; any other weighting replaces the learner's."""
    real, computed = L.task_shares, []

    def shares(task_ids, num_task, ctx, *own, **named):
        if weighting == OWN_WEIGHTING:
            computed.append(real(task_ids, num_task, ctx, *own, **named))
        else:
            computed.append(real(task_ids, num_task, ctx, weighting))
        return computed[-1]
    L.task_shares = shares
    try:
        yield computed
    finally:
        L.task_shares = real


def shard_of(scenario, rank):
    rows = torch.tensor(SHARDS[scenario][rank], dtype=torch.long)
    return GLOBAL_X[rows], GLOBAL_Y[rows]


def train_batches(rank, world_size):
    """The sharded training loader as IncrementalData.train_loader will build it, over epochs."""
    generator = torch.Generator().manual_seed(SEED)
    data = TensorDataset(torch.arange(100, 100 + TRAIN_N))
    sampler = D.ShardSampler(RandomSampler(data, generator=generator), rank, world_size)
    loader = DataLoader(data, batch_size=D.local_batch(TRAIN_BATCH, world_size), sampler=sampler,
                        generator=generator)
    return [[batch.tolist() for (batch,) in loader] for _ in range(EPOCHS)]


def rank_main(rank, world_size, port, out_dir):
    """Entry point of a spawned rank: results go to <out_dir>/rank<r>.pt, errors to rank<r>.err."""
    try:
        torch.save(_run(rank, world_size, port), os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _run(rank, world_size, port):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = D.setup("cpu", timeout=datetime.timedelta(seconds=90))
    out = {"ctx": [ctx.enabled, ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device),
                   ctx.is_main]}
    out["train_batches"] = train_batches(rank, world_size)
    out["eval"] = {}
    for n in EVAL_SIZES:
        local = torch.as_tensor(D.eval_shard(torch.arange(50, 50 + n).numpy(), rank, world_size))
        outputs = torch.stack([local * 10, local * 10 + 1], 1).double()  # stands for logits
        out["eval"][n] = (len(local), D.gather_cat(outputs, ctx)[:n])
    lengths = (3, 0, 0) if rank == 0 else (2, 0, 2)
    out["gather_ragged"] = [D.gather_cat(torch.full((m, 2), rank + 1.0), ctx) for m in lengths]
    tensors = [torch.full((2, 3), rank + 1.5, dtype=torch.float64), torch.arange(4.0) * (rank + 1),
               torch.tensor([rank + 1, 10 * rank]), torch.tensor(rank * 2.0)]
    D.all_reduce_sum_(tensors, ctx)
    out["sum"] = tensors
    means = [torch.full((3,), 2.0 * rank + 1.0), torch.tensor([[rank * 4.0]])]
    D.all_reduce_mean_(means, ctx)
    out["mean"] = means
    memory = {"exemplars": {"0": [4, 9, 1], "1": [7]}} if rank == 0 else None
    out["broadcast_object"] = D.broadcast_object(memory, ctx)
    out["gather_object"] = D.gather_object(("rank", rank), ctx)
    model = Net()
    with torch.no_grad():
        model.head.weight.add_(rank)                       # ranks disagree until the broadcast
        model.features[1].running_mean.add_(rank)
    out["checksum_before_broadcast"] = D.checksum(model)
    D.broadcast_module_(model, ctx)
    out["checksum_after_broadcast"] = D.checksum(model)
    out["steps"] = {key: _step(key, rank, ctx) for key in STEPS}
    out["er_steps"] = {key: _er_step(key, rank, ctx) for key in ER_STEPS}
    D.barrier(ctx)
    D.cleanup(ctx)
    out["initialized_after_cleanup"] = torch.distributed.is_initialized()
    return out


def _er_step(key, rank, ctx):
    """One of ER_STEPS on this rank: the weights after it and the loss, or the error."""
    loss_name, scenario = key.split("/")
    net, (x, y) = Net(bn=False), shard_of(scenario, rank)
    loss, error = None, None
    try:
        loss = er_step(net, x, y, ctx, loss_name)
        loss = None if loss is None else float(loss)
    except Exception:
        error = traceback.format_exc()
    return {"state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "loss": loss, "error": error}


def _step(key, rank, ctx):
    """One of STEPS on this rank: the weights after it, their checksum, and the loss meta_step
    returned or the error it raised (kept rather than raised: the rank goes on to the next step,
    whose collectives the other rank expects)."""
    variant, scenario, weighting = key.split("/")
    net, (x, y) = Net(bn=scenario != "unbalanced"), shard_of(scenario, rank)
    loss, error = None, None
    try:
        with weighted_by(weighting):
            loss = meta_step(net, x, y, ctx, variant)
            loss = None if loss is None else float(loss)
    except Exception:
        error = traceback.format_exc()
    return {"state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "checksum": D.checksum(net), "loss": loss, "error": error}
