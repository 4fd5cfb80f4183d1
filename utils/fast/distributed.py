"""``torchrun``'s side of data-parallel iTAML: the process group, sharding of batches and test sets,
and the collectives, and nothing of the method (the distributed meta-update, with its task shares and
the head rows of absent tasks, is in ``learner_task_itaml.py``).

Started plainly (no RANK/WORLD_SIZE/LOCAL_RANK in the environment), :func:`setup` returns a disabled
context and every helper here returns its input or does nothing, so a single-process run computes
exactly what it computed before. Under ``torchrun`` each rank trains on its share of every global
mini-batch and the ranks meet in a fixed number of collective calls per step, whatever their shards
hold, so none can wait for a call another rank skips.

Integer buffers (BatchNorm's step counters) count each rank's own inner steps; they are not part of
the update, so rank 0's are broadcast after it (:func:`counters`) to keep the ranks bit-identical.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from utils.errors import ConfigError
from utils.fast.device import resolve_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands; ``enabled`` is False for a plain single-process run."""
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        """Only rank 0 writes files and prints tables."""
        return self.rank == 0


# ---------------------------------------------------------------- process group

def setup(device="cpu", timeout=None):
    """Join the torchrun process group (NCCL on GPUs, gloo on the CPU); disabled without torchrun.

    ``device``: the run's device, or ``args.device``'s text (``utils.fast.device.resolve_device``).
    Under torchrun a GPU device becomes ``cuda:LOCAL_RANK``, one GPU per rank on each node.
    ``timeout`` (a ``datetime.timedelta``) bounds every collective call; None keeps torch's default.
    """
    device = resolve_device(device)
    env = _torchrun_env()
    if env is None:
        return DistContext(device=device)
    rank, world_size, local_rank = env
    device = _rank_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not _backend_available(backend):
        raise ConfigError(f"torchrun started this run but this torch build lacks the {backend} "
                          "backend of torch.distributed; install a build that has it or start "
                          "the script plainly.")
    extra = {} if timeout is None else {"timeout": timeout}
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
        extra["device_id"] = device    # binds the group to it (no guessing in barrier)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, init_method="env://", rank=rank,
                                    world_size=world_size, **extra)
        except RuntimeError as e:  # torch's own: the store, the network interface or a peer
            raise ConfigError(_unmet(e, rank, world_size, backend)) from e
    return DistContext(True, rank, world_size, local_rank, device)


def _unmet(error, rank, world_size, backend):
    """The sentence for ranks that torch.distributed could not bring together."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    interface = "NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME"
    return (f"rank {rank} of {world_size} could not join the {backend} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({reason}); on one node start "
            f"the ranks with `torchrun --standalone`, across nodes check that every node reaches "
            f"MASTER_ADDR, and name the network interface the ranks share in {interface}.")


def cleanup(ctx):
    """Leave the process group (at the end of the run, also after an error)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _backend_available(backend):
    # is_nccl_available/is_gloo_available exist on every torch >= 2.4 built with distributed.
    if not dist.is_available():
        return False
    return dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()


def _torchrun_env():
    """(rank, world_size, local_rank) from torchrun's variables, None if none is set."""
    present = [name for name in TORCHRUN_VARS if name in os.environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARS + ("MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise ConfigError(f"{', '.join(present)} set but {', '.join(missing)} missing: start the "
                          "script with torchrun, or unset those variables to run one process.")
    try:
        rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARS)
    except ValueError:
        values = ", ".join(f"{n}={os.environ[n]!r}" for n in TORCHRUN_VARS)
        raise ConfigError(f"torchrun's variables must be integers, got {values}.") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} is not a "
                          "valid torchrun rank (0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0).")
    return rank, world_size, local_rank


def _rank_device(device, local_rank):
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"args.device = '{device}' names one GPU, but under torchrun each rank "
                          "takes the GPU of its LOCAL_RANK; use 'auto' or 'cuda'.")
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise ConfigError(f"LOCAL_RANK={local_rank} but this node sees {visible} GPU(s); start at "
                          f"most {visible} processes a node (--nproc_per_node) or make more GPUs "
                          "visible (CUDA_VISIBLE_DEVICES).")
    return torch.device("cuda", local_rank)


# ---------------------------------------------------------------- sharding

def local_batch(global_batch, world_size):
    """Per-rank batch so that world_size of them make at least ``global_batch`` (equal if it
    divides): ⌈global_batch / world_size⌉."""
    return -(-global_batch // world_size)


def shard(order, rank, world_size):
    """Rank ``rank``'s share of ``order``: every world_size-th element starting at ``rank``, after
    padding ``order`` by wrapping around to a multiple of world_size (as DistributedSampler does).

    All shares have ⌈n/world_size⌉ elements, so every rank runs as many mini-batches. With a per-rank
    batch b, the j-th mini-batches of all ranks together are positions [j·b·W, (j+1)·b·W) of
    ``order``: with b·W = args.train_batch, exactly the single-process j-th mini-batch (the last one
    completed by the first W·⌈n/W⌉ − n elements). With world_size 1 it is ``order`` itself.
    """
    order = np.asarray(order)
    if world_size == 1 or len(order) == 0:
        return order
    padded = np.resize(order, local_batch(len(order), world_size) * world_size)  # cyclic repeat
    return padded[rank::world_size]


class ShardSampler(Sampler):
    """Shards the order another sampler gives, anew each epoch (see :func:`shard`).

    Wrap ``RandomSampler(subset, generator=g)`` and give the DataLoader the same ``g``: the
    DataLoader and the sampler then draw from ``g`` exactly as ``DataLoader(subset, shuffle=True,
    generator=g)`` does, so every rank (same seed) sees the single-process permutation of every epoch
    and shards it; with world_size 1 the batches are the single-process ones.
    """

    def __init__(self, sampler, rank, world_size):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __iter__(self):
        return iter(shard(list(self.sampler), self.rank, self.world_size).tolist())

    def __len__(self):
        return local_batch(len(self.sampler), self.world_size)


def eval_shard(indices, rank, world_size):
    """Rank ``rank``'s contiguous block of ``indices``, all blocks ⌈n/W⌉ long (the tail padded by
    wrapping around), so no rank is empty while n > 0. ``gather_cat(outputs)[:n]`` puts the
    outputs of every index back exactly once, in the original order."""
    indices = np.asarray(indices)
    if world_size == 1 or len(indices) == 0:
        return indices
    size = local_batch(len(indices), world_size)
    return np.resize(indices, size * world_size)[rank * size:(rank + 1) * size]


# ---------------------------------------------------------------- collectives

@torch.no_grad()
def all_reduce_sum_(tensors, ctx):
    """Sum each tensor over the ranks, in place: one collective call per dtype (usually one)."""
    if ctx.enabled:
        _coalesced(tensors, lambda flat: dist.all_reduce(flat))


@torch.no_grad()
def all_reduce_mean_(tensors, ctx):
    """Mean of each tensor over the ranks, in place (the live weights of meta_target "last")."""
    if ctx.enabled:
        all_reduce_sum_(tensors, ctx)
        torch._foreach_div_(list(tensors), float(ctx.world_size))


def _coalesced(tensors, collective):
    # One flat buffer per (device, dtype): one call instead of one per parameter, through public
    # calls only (all_reduce_coalesced is deprecated and not on every backend). Groups are formed
    # in a fixed order so all ranks issue the same calls.
    groups = {}
    for t in tensors:
        groups.setdefault((str(t.device), t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        for t, part in zip(group, torch.split(flat, [t.numel() for t in group])):
            t.copy_(part.view_as(t))


# ---------------------------------------------------------------- the rest of the loop

def barrier(ctx):
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj, ctx, src=0):
    """``src``'s picklable object on every rank (the replay memory, chosen once on rank 0)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj, ctx):
    """Every rank's picklable object, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_tensors_(tensors, ctx, src=0):
    """Copy ``src``'s values into every rank's tensors, in place."""
    if ctx.enabled:
        _coalesced(tensors, lambda flat: dist.broadcast(flat, src=src))


def broadcast_module_(module, ctx, src=0):
    """Copy ``src``'s parameters and buffers into every rank's module (identical start)."""
    broadcast_tensors_(list(module.parameters()) + list(module.buffers()), ctx, src)


def counters(module):
    """Integer buffers (BatchNorm's num_batches_tracked). Each rank counts its own inner steps, so
    they drift apart; they are not interpolated, so broadcast_tensors_(counters(model), ctx) after
    each meta-update keeps the ranks bit-identical (rank 0's count; one process: unchanged)."""
    return [b for b in module.buffers() if not b.is_floating_point()]


def gather_cat(tensor, ctx):
    """Concatenate along dim 0 every rank's tensor, in rank order, on every rank. Lengths may
    differ (zero included); dtype and trailing shape must agree, so an empty rank passes
    ``torch.empty((0, *trailing), dtype=...)``."""
    if not ctx.enabled:
        return tensor
    local = tensor.to(ctx.device)
    size = torch.tensor([len(local)], device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    if max(sizes) == 0:
        return tensor
    # all_gather needs equal shapes: pad to the longest, cut the padding off afterwards.
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)


def checksum(module):
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): equal strings mean
    bit-identical weights."""
    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
