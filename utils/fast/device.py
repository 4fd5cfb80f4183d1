"""The speed options of ``args`` where the learner and the inference meet the device: the memory
layout (``channels_last``) and bf16 autocast (``amp``)."""
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
