"""What each of the two gloo ranks of tests/test_distributed.py runs, importable by spawned children.

``paper_step`` and ``official_step`` show how the learner wires utils.fast.distributed into one
mini-batch of Alg. 1 (plain SGD inner loops, so the expected values can be computed independently);
``single_process_paper_step`` transcribes the current single-process arithmetic of
``learner_task_itaml._MeanOfTasks`` for the one-process comparison.
"""
import datetime
import os
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import learner_task_itaml as L
from utils.fast import distributed as D

CPT, NUM_TASK, LR, ETA = 2, 4, 0.4, 0.7
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


def sgd_inner_loop(model, x, y, k, r=1):
    """r plain SGD steps on BCE-with-logits over task k's slice (the learner's task loss)."""
    for _ in range(r):
        model.zero_grad(set_to_none=True)
        onehot = F.one_hot(y - k * CPT, CPT).to(x.dtype)
        F.binary_cross_entropy_with_logits(model(x)[:, k * CPT:(k + 1) * CPT], onehot).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad


def _split(model):
    head = {id(p) for p in model.head.parameters()}
    params = list(model.parameters())
    return params, [id(p) in head for p in params], [b for b in model.buffers() if b.is_floating_point()]


def paper_step(model, x, y, ctx, weighting="ranks", r=1):
    """One distributed mini-batch of the paper variant, as the learner will run it."""
    params, is_head, buffers = _split(model)
    base = [p.detach().clone() for p in params]
    base_buffers = [b.clone() for b in buffers]
    shares = L.task_shares(y // CPT, NUM_TASK, ctx, weighting)   # before the inner loops
    theta = [p for p, h in zip(params, is_head) if not h]
    head = [p for p, h in zip(params, is_head) if h]
    fast = [torch.zeros_like(b) for b in base]
    fast_theta = [f for f, h in zip(fast, is_head) if not h]
    fast_head = [f for f, h in zip(fast, is_head) if h]
    fast_buffers = [torch.zeros_like(b) for b in base_buffers]
    for k in torch.unique(y // CPT).tolist():                    # this shard's tasks only
        _reset(params, base, buffers, base_buffers)
        mask = (y // CPT) == k
        sgd_inner_loop(model, x[mask], y[mask], k, r)
        m = int(mask.sum())
        with torch.no_grad():
            for f, p in zip(fast_theta + fast_buffers, theta + buffers):
                f.add_(p, alpha=shares.theta_weight(k, m))
            for f, p in zip(fast_head, head):
                rows = slice(k * CPT, (k + 1) * CPT)
                f[rows] = p[rows] * shares.head_weight(k, m)
    D.all_reduce_sum_(fast + fast_buffers, ctx)                  # every rank, even with no task
    with torch.no_grad():
        L.keep_absent_rows_(fast_head, [b for b, h in zip(base, is_head) if h], shares, CPT)
        _interpolate(params, base, fast, buffers, base_buffers, fast_buffers)
    D.broadcast_tensors_(D.counters(model), ctx)


def single_process_paper_step(model, x, y, r=1):
    """The current single-process arithmetic (head fast = base with φ_k slices, θ += θ_k / n)."""
    params, is_head, buffers = _split(model)
    tasks = torch.unique(y // CPT).tolist()
    base = [p.detach().clone() for p in params]
    base_buffers = [b.clone() for b in buffers]
    fast = [b.clone() if h else torch.zeros_like(b) for b, h in zip(base, is_head)]
    fast_buffers = [torch.zeros_like(b) for b in base_buffers]
    for k in tasks:
        _reset(params, base, buffers, base_buffers)
        mask = (y // CPT) == k
        sgd_inner_loop(model, x[mask], y[mask], k, r)
        with torch.no_grad():
            for f, p, h in zip(fast, params, is_head):
                if h:
                    f[k * CPT:(k + 1) * CPT] = p[k * CPT:(k + 1) * CPT]
                else:
                    f.add_(p, alpha=1.0 / len(tasks))
            for f, b in zip(fast_buffers, buffers):
                f.add_(b, alpha=1.0 / len(tasks))
    with torch.no_grad():
        _interpolate(params, base, fast, buffers, base_buffers, fast_buffers)


def official_step(model, x, y, ctx):
    """Official variant: this shard's tasks one after another, then the live weights are averaged
    over the ranks before the interpolation."""
    params, _, buffers = _split(model)
    base = [p.detach().clone() for p in params]
    for k in torch.unique(y // CPT).tolist():
        mask = (y // CPT) == k
        sgd_inner_loop(model, x[mask], y[mask], k)
    # BatchNorm statistics stay live, as in the single-process official update, but averaged.
    D.all_reduce_mean_(params + buffers, ctx)
    D.broadcast_tensors_(D.counters(model), ctx)
    with torch.no_grad():
        _interpolate(params, base, [p.detach().clone() for p in params], [], [], [])


@torch.no_grad()
def _reset(params, base, buffers, base_buffers):
    for t, b in zip(params + buffers, base + base_buffers):
        t.copy_(b)


def _interpolate(params, base, fast, buffers, base_buffers, fast_buffers):
    for t, b, f in zip(params + buffers, base + base_buffers, fast + fast_buffers):
        t.copy_(torch.lerp(b, f, ETA))


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
    out["steps"] = {}
    for scenario, step, kwargs in [("absent_task", paper_step, {}),
                                   ("empty_shard", paper_step, {}),
                                   ("unbalanced", paper_step, {"weighting": "samples"}),
                                   ("unbalanced", paper_step, {"weighting": "ranks"}),
                                   ("absent_task", official_step, {})]:
        net = Net(bn=scenario != "unbalanced")
        step(net, *shard_of(scenario, rank), ctx, **kwargs)
        key = f"{step.__name__}/{scenario}/{kwargs.get('weighting', '')}"
        out["steps"][key] = ({k: v.clone() for k, v in net.state_dict().items()}, D.checksum(net))
    D.barrier(ctx)
    D.cleanup(ctx)
    out["initialized_after_cleanup"] = torch.distributed.is_initialized()
    return out
