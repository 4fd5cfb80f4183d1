"""args.batched_tasks: every task's first inner step in one forward/backward gives the per-task
loop's weights, BatchNorm statistics and losses (float64, to 1e-10), and is refused where it
cannot be."""
import copy
import math
import socket

import pytest
import torch
import torch.nn as nn

import learner_task_itaml as L
from resnet import MLP, CelebResNet18, ReducedResNet18
from utils.errors import ConfigError
from utils.fast import distributed as D

CPT, TASKS = 2, 4
# The MS-Celeb network's maps are 1×1 from layer3 on at 16 px: there a one-sample task sees one
# value a channel.
NETWORKS = {"reduced": (ReducedResNet18, (3, 8, 8)), "mlp": (MLP, (3, 8, 8)),
            "celeb": (CelebResNet18, (3, 16, 16))}
# Task sizes differ widely, a task of one sample in each step, and a task absent from the first
# step whose optimizer state (per task) only starts at the second. Labels shuffled, so that the
# split by task matters. No task of 2 or 3 samples: BatchNorm over two or three values of a 1×1
# map is so ill-conditioned that the loop itself then differs from itself by more than 1e-10 when
# only its summation order changes (channels_last).
LABELS = ([4, 6, 5, 4, 0, 5, 4, 7, 4, 5, 6, 4, 5, 6, 7],              # task 0: 1, 2: 9, 3: 5
          [5, 2, 1, 4, 0, 4, 7, 5, 4, 0, 6, 1, 6, 0, 7, 1, 6])        # 0: 6, 1: 1, 2: 5, 3: 5
LR = 1e-3  # Adam's step g/(|g| + 1e-8) turns rounding in a near-zero gradient into lr·1e-8 ones


def cfg_for(cfg_factory, batched, optimizer="sgd", r=1, task_optimizer="per_task",
            meta_target="mean", batch_forward=False, channels_last=False):
    return cfg_factory(variant="paper", r=r, optimizer=optimizer, lr=LR, momentum=0.9,
                       weight_decay=1e-3, beta=1.0, num_class=CPT * TASKS, class_per_task=CPT,
                       num_task=TASKS, task_optimizer=task_optimizer, meta_target=meta_target,
                       batch_forward=batch_forward, channels_last=channels_last,
                       batched_tasks=batched)


def batches(name, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(len(y), *NETWORKS[name][1], generator=g, dtype=dtype), torch.tensor(y))
            for y in LABELS]


def state(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def network(name, dtype=torch.float64):
    torch.manual_seed(0)
    net, shape = NETWORKS[name]
    return net(shape, CPT * TASKS).to(dtype)


def two_steps(cfg_factory, name, **switches):
    """The loop and the batched step, two meta-steps each from the same network (session 2: η < 1);
    returns both models, the start, both losses and each one's count of forward passes."""
    start = network(name)
    runs = {}
    for batched in (False, True):
        model = copy.deepcopy(start)
        learner = L.MetaLearner(model, cfg_for(cfg_factory, batched, **switches), session=2)
        passes = []
        model.register_forward_pre_hook(lambda *_: passes.append(1))
        losses = [learner.meta_step(x, y) for x, y in batches(name)]
        runs[batched] = model, losses, len(passes)
    return runs[False], runs[True], start


# Every optimizer with r = 1 and 2; every pair of values of two switches appears in some case.
CASES = [dict(zip(("optimizer", "r", "task_optimizer", "meta_target", "batch_forward"), case))
         for case in [("sgd", 1, "per_task", "mean", False), ("sgd", 2, "shared", "last", True),
                      ("adam", 1, "shared", "mean", True), ("adam", 2, "per_task", "last", False),
                      ("radam", 1, "per_task", "last", True),
                      ("radam", 2, "shared", "mean", False)]]
# On the MS-Celeb network (its stem, its pooling, its head's bias), one case: the switches are each
# network's to take in turn above, and this network's float64 weights take seconds a step to touch.
# RAdam with per-task optimizers and batch_forward's extra pass asks the most of it; Adam with r = 2
# is never the case: there the loop alone moves by 1e-9 with its summation order (channels_last), so
# the comparison would measure that, not the batched step.
CELEB_CASES = [CASES[4]]


@pytest.mark.parametrize("name, switches",
                         [(n, c) for n in ("reduced", "mlp") for c in CASES]
                         + [("celeb", c) for c in CELEB_CASES],
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_batched_step_equals_the_loop(cfg_factory, name, switches):
    """Weights, running statistics, BatchNorm step counters and losses after two meta-steps."""
    (loop, loop_losses, loop_passes), (ours, our_losses, our_passes), start = \
        two_steps(cfg_factory, name, **switches)
    want = state(loop)
    for key, tensor in state(ours).items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, want[key], rtol=0, atol=1e-10, msg=key)
        else:
            assert torch.equal(tensor, want[key]), key  # num_batches_tracked
    for got, expected in zip(our_losses, loop_losses):
        assert got.item() == pytest.approx(expected.item(), rel=0, abs=1e-10)
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), start.parameters()))
    assert moved > 1e-5  # the steps moved the weights by far more than the tolerance
    # each step's first inner steps were one pass: 3 + 4 tasks of r passes became 1 + (r − 1) each
    # (batch_forward's extra pass only where there are BatchNorm statistics to move)
    r, extra = switches["r"], 2 * (switches["batch_forward"] and name != "mlp")
    assert loop_passes == 7 * r + extra and our_passes == 2 + 7 * (r - 1) + extra


def test_each_tasks_first_step_is_its_own(cfg_factory):
    """The batched pass alone, against each task's forward/backward at the base weights: gradient,
    loss and running statistics, (1 − momentum)·base + momentum·(the task's batch statistic), task
    by task. The MS-Celeb network: a one-sample task sees one value a channel from layer3 on."""
    model = network("celeb")
    learner = L.MetaLearner(model, cfg_for(cfg_factory, True), session=2)
    x, y = batches("celeb")[0]
    tasks, xs, ys = L.split_by_task(x, y, CPT)
    first = learner.batched(list(zip(tasks, xs, ys)))
    base, base_running = learner.weights.data.clone(), learner.running.data.clone()
    for i, (k, xk, yk) in enumerate(zip(tasks, xs, ys)):
        with torch.no_grad():
            learner.weights.data.copy_(base)
            learner.running.data.copy_(base_running)
        learner.grads.zero_()
        for p, g in zip(learner.weights.tensors, learner.grad_views):
            p.grad = g
        with L.single_sample_guard(model, len(xk)):
            loss = L.task_loss(model(xk), yk, k, CPT)
        loss.backward()
        torch.testing.assert_close(first.grads[i], learner.grads, rtol=0, atol=1e-12)
        torch.testing.assert_close(first.running[i], learner.running.data, rtol=0, atol=1e-12)
        assert first.losses[i].item() == pytest.approx(loss.item(), rel=0, abs=1e-12)
    assert [len(yk) for yk in ys] == [1, 9, 5]
    layer4 = model.features.layer4[0].bn1
    stats = learner.running.views(first.running[0])
    mean_of = {id(t): v for t, v in zip(learner.running.tensors, stats)}
    base_of = {id(t): v for t, v in zip(learner.running.tensors,
                                         learner.running.views(base_running))}
    assert torch.equal(mean_of[id(layer4.running_mean)], base_of[id(layer4.running_mean)])


def test_channels_last_gives_the_same_step(cfg_factory):
    (loop, _, _), (ours, _, _), _ = two_steps(cfg_factory, "reduced", channels_last=True, r=2,
                                              optimizer="radam")
    assert ours.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    want = state(loop)
    for key, tensor in state(ours).items():
        torch.testing.assert_close(tensor, want[key], rtol=0, atol=1e-10, msg=key)


def test_frozen_batchnorm_layers_keep_their_running_statistics(cfg_factory):
    """Layers a user put in eval mode normalise with their running statistics in both paths."""
    start = network("reduced")
    models = []
    for batched in (False, True):
        model = copy.deepcopy(start)
        learner = L.MetaLearner(model, cfg_for(cfg_factory, batched, r=2), session=2)
        model.features.bn1.eval()
        model.features.layer1.eval()
        for x, y in batches("reduced"):
            learner.meta_step(x, y)
        models.append(model)
    want = state(models[0])
    for key, tensor in state(models[1]).items():
        torch.testing.assert_close(tensor, want[key], rtol=0, atol=1e-10, msg=key)
    assert torch.equal(models[1].features.bn1.running_mean, start.features.bn1.running_mean)


def test_amp_runs_the_batched_step(cfg_factory):
    """bf16 autocast (on the CPU here; check_args asks a GPU for it): the batched pass computes in
    bf16, and its step is finite and as close to the loop's as two bf16 evaluations of the same
    gradients can be."""
    start = network("reduced", torch.float32)
    models, seen = [], []
    for batched in (False, True):
        model = copy.deepcopy(start)
        cfg = cfg_for(cfg_factory, batched, optimizer="radam", channels_last=True)
        cfg.amp = True
        learner = L.MetaLearner(model, cfg, session=2)
        model.features.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        x, y = batches("reduced", torch.float32)[0]
        assert torch.isfinite(learner.meta_step(x, y))
        models.append(model)
    assert seen == [torch.bfloat16] * 4  # the loop's three tasks, then the one batched pass
    loop, ours, s = (torch.cat([p.detach().double().flatten() for p in m.parameters()])
                     for m in (*models, start))
    assert torch.isfinite(ours).all()
    # RAdam's first step is not adaptive (rho_1 = 1 <= 5): theta - lr·(g + wd·theta), and the
    # meta-update is linear in the tasks' weights, so the two steps differ by eta·lr times the
    # difference of the same gradients computed twice in bf16 (unit roundoff u = 2^-8) with
    # different intermediates rounded (summation orders, the batched pass's own BatchNorm). With
    # fp32 accumulation, as ATen's and oneDNN's bf16 kernels do on any CPU, each conv or linear
    # layer rounds at most 6 values on a gradient's way (its output, its BatchNorm's, the residual
    # sum; the gradients of its input, its weight, its BatchNorm's input): R roundings over both
    # passes. Summed in the worst case, R·u > 1 bounds nothing; errors of mean zero grow as
    # lambda·sqrt(R)·u (Higham & Mary, SIAM J. Sci. Comput. 2019), lambda = 3, and BatchNorm
    # renormalises every layer, so no layer amplifies them. Normwise, against the step itself, plus
    # the fp32 rounding of the updated weights (a few ulps of each). The bound is 0.19 of the step;
    # measured 0.041 with AVX512-BF16 kernels, 0.064 with AVX2's; a task skipped, a gradient
    # doubled or averaged over the padding give 0.43 to 1.
    roundings = 2 * 6 * sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in start.modules())
    bound = 3 * math.sqrt(roundings) * 2**-8 * (loop - s).norm() + 8 * 2**-24 * s.norm()
    assert (loop - ours).norm() <= bound


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_one_rank_batched_equals_the_loop(cfg_factory, monkeypatch):
    """Under torchrun (one gloo rank here) the meta-update weights tasks by their shares and sums
    the ranks' parts; the batched first steps feed it the same fast weights."""
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    ctx = D.setup("cpu")
    try:
        assert ctx.enabled
        start, models, passes = network("reduced"), [], []
        for batched in (False, True):
            model = copy.deepcopy(start)
            learner = L.MetaLearner(model, cfg_for(cfg_factory, batched, r=2), 2, ctx=ctx)
            model.register_forward_pre_hook(lambda *_: passes.append(batched))
            for x, y in batches("reduced"):
                learner.meta_step(x, y)
            models.append(model)
    finally:
        D.cleanup(ctx)
    want = state(models[0])
    for key, tensor in state(models[1]).items():
        torch.testing.assert_close(tensor, want[key], rtol=0, atol=1e-10, msg=key)
    assert passes.count(False) == 14 and passes.count(True) == 2 + 7  # one pass for the first steps
    assert learner.batched([]) is None  # a rank whose shard holds no sample runs nothing


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("over", [dict(variant="official"),
                                  dict(variant="paper", task_start="previous")])
def test_tasks_that_start_from_the_previous_one_cannot_run_together(cfg_factory, over):
    with pytest.raises(ConfigError, match=r"^args.batched_tasks = True runs the first inner step "
                                          r"of all tasks together from the base weights, but "
                                          r"args.task_start = 'previous' starts each task from the "
                                          r"weights the one before it left; set task_start = "
                                          r"'base' or batched_tasks = False.$"):
        cfg_factory(batched_tasks=True, **over)
    cfg = cfg_factory(batched_tasks=False, **over)
    cfg.batched_tasks = True  # built past check_args: the learner checks again
    with pytest.raises(ConfigError, match=r"^args.batched_tasks = True runs"):
        L.MetaLearner(network("mlp"), cfg, session=0)


def test_batched_tasks_is_a_boolean_off_by_default(cfg_factory):
    assert cfg_factory().batched_tasks is False  # scripts without the field keep working
    assert cfg_factory(variant="official").batched_tasks is False
    assert cfg_factory(variant="paper", batched_tasks=True).batched_tasks is True
    with pytest.raises(ConfigError, match=r"^args.batched_tasks = 'yes' is invalid; it must be "
                                          r"True or False.$"):
        cfg_factory(batched_tasks="yes")


class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64 * 3, 4), nn.BatchNorm1d(4, momentum=None))
        self.head = nn.Linear(4, CPT * TASKS)

    def forward(self, x):
        return self.head(self.features(x.flatten(1)))


def test_batchnorm_without_a_fixed_momentum_is_refused(cfg_factory):
    with pytest.raises(ConfigError, match=r"^args.batched_tasks = True needs BatchNorm layers with "
                                          r"running statistics and a fixed momentum, but "
                                          r"BatchNorm1d\(.*\) has track_running_stats=True and "
                                          r"momentum=None; set batched_tasks = False.$"):
        L.MetaLearner(Cumulative().double(), cfg_for(cfg_factory, True), session=2)


class Twice(nn.Module):
    """One BatchNorm layer run twice a pass: the loop moves its statistics twice in a row, which the
    batched pass does not reproduce."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3, 4))
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, CPT * TASKS)

    def forward(self, x):
        return self.head(self.norm(self.norm(self.features(x))))


def test_batchnorm_run_twice_a_pass_is_refused(cfg_factory):
    learner = L.MetaLearner(Twice().double(), cfg_for(cfg_factory, True), session=2)
    x, y = batches("mlp")[0]
    with pytest.raises(ConfigError, match=r"^args.batched_tasks = True needs every BatchNorm layer "
                                          r"to run once a forward pass, but BatchNorm1d\(.*\) ran "
                                          r"twice; set batched_tasks = False.$"):
        learner.meta_step(x, y)
    assert "forward" not in vars(learner.model.norm)  # the layer's own forward is back
