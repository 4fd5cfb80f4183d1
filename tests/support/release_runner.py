"""Runs the authors' release (github brjathu/iTAML) on the cases tests/test_release_equivalence.py
writes, in a process of its own: ``python3 tests/support/release_runner.py RELEASE_DIR CASES OUT``.

The release's modules are imported from RELEASE_DIR as they are (its ``utils``, ``resnet`` and
``learner_task_itaml`` would clash with ours, hence the separate process, which imports nothing of
ours and takes our repository's folders off ``sys.path``). Two things are changed for the run, both
here and in this process only:
  - ``.cuda()`` returns its tensor or module unchanged, so the release runs on the CPU;
  - with ``exact_optimizer`` set, the ``.float()`` casts inside its RAdam's ``step`` return their
    tensor unchanged. They are no-ops in the float32 training that made the paper's numbers; in this
    float64 comparison they would round every weight to float32 at every step. The run without it
    is also made, and its distance reported, so the effect of the casts is on record.

For each case: build the release's network for the data set from the case's seed, in float64; keep
its initial state dict and its logits on a probe batch (eval and train mode); run one epoch of its
``Learner.train`` over the case's batches; keep the final state dict and eval-mode probe logits.
"""
import copy
import os
import sys
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# Where a module of ours could be found by the release's names: the root, and tests/ and
# tests/support/ (this script's folder, first on sys.path when it runs).
OURS = {os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE), HERE}


def make_cuda_a_no_op():
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def exact_radam_step(radam):
    """Their RAdam's step with its float32 casts made identities (see the module's docstring)."""
    step = radam.RAdam.step

    def step_in_the_weights_dtype(self, closure=None):
        cast = torch.Tensor.float
        torch.Tensor.float = lambda t, *args, **kwargs: t
        try:
            return step(self, closure)
        finally:
            torch.Tensor.float = cast
    return step, step_in_the_weights_dtype


def release_args(case):
    """The attributes the release's network and ``Learner`` read from its args class."""
    return SimpleNamespace(
        dataset=case["dataset"], num_class=case["num_class"], class_per_task=case["class_per_task"],
        num_task=case["num_task"], sess=case["session"], optimizer=case["optimizer"],
        lr=case["lr"], beta=case["beta"], r=1, epochs=1, schedule=[], gamma=1.0, memory=2000,
        checkpoint="results/equivalence", savepoint="models/equivalence", test_batch=100)


def logits(model, x, train):
    model.train(train)
    with torch.no_grad():
        return model(x)[0].clone()


def run_case(case, basic_net, learner_module):
    args = release_args(case)
    torch.manual_seed(case["seed"])
    model = basic_net.BasicNet1(args, 0).double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    probe = case["probe"]
    out = {"initial": initial, "probe_eval_initial": logits(model, probe, False),
           "probe_train_initial": logits(copy.deepcopy(model), probe, True)}
    learner = learner_module.Learner(model=model, args=args, trainloader=case["batches"],
                                     testloader=[], use_cuda=False)
    learner.train(model, 0)
    out["final"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["probe_eval_final"] = logits(model, probe, False)
    return out


def release_first(release_dir):
    """RELEASE_DIR first on sys.path, and none of our folders on it ("" is the working folder)."""
    sys.path[:] = [os.path.abspath(release_dir)] + [p for p in sys.path
                                                    if os.path.abspath(p or ".") not in OURS]


def main(release_dir, cases_file, out_file):
    release_first(release_dir)
    make_cuda_a_no_op()
    import basic_net
    import learner_task_itaml
    import radam
    cast_step, exact_step = exact_radam_step(radam)
    results = {}
    for name, case in torch.load(cases_file, weights_only=False).items():
        for exact in (True, False):
            radam.RAdam.step = exact_step if exact else cast_step
            results[(name, exact)] = run_case(case, basic_net, learner_task_itaml)
    torch.save(results, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:4])
