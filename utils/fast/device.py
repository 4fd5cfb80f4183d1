"""The speed options of ``args`` where the learner and the inference meet the device: the memory
layout (``channels_last``), bf16 autocast (``amp``), and a batch split by task without a device
synchronisation per task."""
import torch


def prepare_model(model, cfg):
    """Put the model in the memory layout ``args.channels_last`` asks for (in place, idempotent)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def to_input(x, cfg, device):
    """A batch on the device, image batches in the layout the convolutions were given."""
    x = x.to(device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(cfg, device):
    """bf16 autocast of forward passes and losses under ``args.amp``; weights and optimizer states
    stay float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.amp)


def split_by_task(x, y, class_per_task):
    """Task k's samples (x_k, y_k) for every task k present in the batch, in increasing k, each in
    batch order. The split is planned on the host from the labels and taken with one gather and
    views, so a batch on the GPU costs no device synchronisation per task (boolean masks would)."""
    task = y.cpu() // class_per_task
    counts = torch.bincount(task)
    tasks = torch.nonzero(counts).squeeze(1)
    order = torch.argsort(task, stable=True)
    sizes = counts[tasks].tolist()
    xs = torch.split(x[order.to(x.device)], sizes)
    ys = torch.split(y[order.to(y.device)], sizes)
    return tasks.tolist(), xs, ys
