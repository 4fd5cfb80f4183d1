"""The learner's speed and torchrun internals, none of which changes what is computed: the weights
in one flat buffer (``flat``), every task's first inner step in one pass (``batched``), the device
options (``device``), data sets held on the GPU (``gpu_data``), and torchrun's process setup and
collectives (``distributed``)."""
