"""The learner's speed and torchrun internals. The weights in one flat buffer (``flat``) and every
task's first inner step in one pass (``batched``) compute what the plain loop computes (equal to
rounding; tests/test_flat.py, tests/test_batched.py). The rest may change the numbers a little: the
device options (``device``: bf16 autocast under ``args.amp``, the channels-last layout), data sets
held and augmented on the GPU (``gpu_data``: the same distribution, other random draws) and
torchrun's process setup and collectives (``distributed``: the mean over ranks sums in another
order). ``device`` also resolves ``args.device``."""
