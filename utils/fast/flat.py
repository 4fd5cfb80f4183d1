"""A model's parameters (or buffers) re-homed as views of one contiguous buffer.

Why: iTAML's step touches every weight several times per task (restore Φ_base, one optimizer step,
add to the mean of the fast weights), and each of those is one kernel per tensor when the weights
are ~60 separate tensors; over one buffer it is one kernel. Every optimizer we use is elementwise
(SGD with momentum, Adam, RAdam: per-tensor scalars depend only on the step count), so stepping the
buffer is the same arithmetic as stepping the tensors one by one.

Each tensor keeps its shape and strides (``channels_last`` included): its ``.data`` becomes a strided
view of the buffer, so the model, its state_dict and autograd see the same tensor objects as before.
``views(other)`` lays out any tensor of the buffer's size the same way, e.g. a snapshot of Φ_base.
"""
import torch


def _dense(t):
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class FlatBuffer:
    """``tensors`` (one dtype, one device, each dense) as views of ``self.data``, in the given order."""

    def __init__(self, tensors, what="tensor"):
        self.tensors = list(tensors)
        if not self.tensors:
            raise ValueError(f"FlatBuffer: no {what}s to put in a buffer")
        first = self.tensors[0]
        for t in self.tensors:
            if t.dtype != first.dtype or t.device != first.device:
                raise ValueError(f"FlatBuffer: every {what} must share one dtype and device; found "
                                 f"{first.dtype} on {first.device} and {t.dtype} on {t.device}")
        self.layout, offset = [], 0
        for t in self.tensors:
            self.layout.append((tuple(t.shape), t.stride() if _dense(t) else
                                torch.empty_like(t, memory_format=torch.contiguous_format).stride(),
                                offset))
            offset += t.numel()
        self.data = torch.empty(offset, dtype=first.dtype, device=first.device)
        self._views = self.views(self.data)
        self.attach()

    def views(self, flat):
        """``flat`` (a contiguous 1-D tensor of the buffer's size) cut into views shaped and
        strided like the tensors."""
        base = flat.storage_offset()
        return [flat.as_strided(shape, stride, base + offset) for shape, stride, offset in self.layout]

    def attached(self):
        """Whether every tensor still lives in the buffer (``model.to(...)`` or ``.data = …``
        elsewhere would have moved it out)."""
        return all(t.data_ptr() == v.data_ptr() and t.stride() == v.stride()
                   for t, v in zip(self.tensors, self._views))

    @torch.no_grad()
    def attach(self):
        """Copy the tensors' current values into the buffer and make them its views again."""
        for t, view in zip(self.tensors, self._views):
            if t.device != self.data.device or t.dtype != self.data.dtype:
                raise ValueError(f"FlatBuffer: a tensor moved to {t.dtype} on {t.device} after the "
                                 f"buffer was made on {self.data.dtype} on {self.data.device}")
            view.copy_(t.detach())
            t.data = view

    @torch.no_grad()
    def unflatten(self):
        """Give every tensor its own memory again (same values, shapes and strides)."""
        for t in self.tensors:
            t.data = t.data.clone(memory_format=torch.preserve_format)
