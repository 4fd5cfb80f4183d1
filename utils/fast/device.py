"""Where the learner and the inference meet the device: ``args.device`` resolved (the one place
"auto" is decided), the memory layout (``channels_last``) and bf16 autocast (``amp``)."""
import torch

from utils.errors import ConfigError


def resolve_device(name):
    """The torch device ``args.device`` names: "auto" is a GPU when one is visible, else the CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"args.device = {name!r} but no GPU is visible (check "
                          "CUDA_VISIBLE_DEVICES); use 'auto' or 'cpu'.")
    return torch.device(name)


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
