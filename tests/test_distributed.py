"""utils.fast.distributed and the learner's distributed meta-update: sharding, the collectives, and
``MetaLearner.meta_step`` on two gloo ranks against the update computed here in closed form.

Two ranks are spawned once for the module (tests/support/dist_workers.py: every collective, then a
``MetaLearner`` per scenario on each rank's shard) and joined with a deadline, so a hang fails the
tests instead of blocking them. Sharding and the one-process cases run in this process. The expected
weights come from ``sgd_inner_loop`` below, plain SGD steps written out here, not from the learner.
"""
import multiprocessing
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import learner_task_itaml as L
from tests.support import dist_workers as W
from utils.errors import ConfigError
from utils.fast import distributed as D

WORLD = 2
DEADLINE_S = 120  # generous: other test runs share the two cores
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's results from tests/support/dist_workers.py, or a failure naming the ranks that
    hung."""
    out = tmp_path_factory.mktemp("ranks")
    spawn = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [spawn.Process(target=W.rank_main, args=(r, WORLD, port, str(out)), daemon=True)
             for r in range(WORLD)]
    for p in procs:
        p.start()
    stop = time.monotonic() + DEADLINE_S
    for p in procs:
        p.join(max(0.0, stop - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = "".join((out / f"rank{r}.err").read_text() for r in range(WORLD)
                     if (out / f"rank{r}.err").exists())
    assert not hung, f"ranks {hung} still ran after {DEADLINE_S} s: a collective call hung\n{errors}"
    assert [p.exitcode for p in procs] == [0] * WORLD, errors
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture
def plain_env(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def one_rank(plain_env):
    """A torchrun context of one gloo rank in this process: the learner takes its distributed
    path (task shares, the sum over ranks) with no other rank in the group."""
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        plain_env.setenv(name, value)
    ctx = D.setup("cpu")
    try:
        yield ctx
    finally:
        D.cleanup(ctx)


def sgd_inner_loop(model, x, y, k, r=1):
    """r plain SGD steps on BCE-with-logits over task k's slice: Alg. 1's inner loop with the
    workers' config (lr, no momentum, no weight decay), written out without the learner."""
    for _ in range(r):
        model.zero_grad(set_to_none=True)
        onehot = F.one_hot(y - k * W.CPT, W.CPT).to(x.dtype)
        logits = model(x)[:, k * W.CPT:(k + 1) * W.CPT]
        F.binary_cross_entropy_with_logits(logits, onehot).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= W.LR * p.grad


# ---------------------------------------------------------------- started plainly

def test_plain_start_gives_a_disabled_context_whose_helpers_do_nothing(plain_env):
    ctx = D.setup("cpu")
    assert (ctx.enabled, ctx.rank, ctx.world_size, ctx.is_main, ctx.device) == \
        (False, 0, 1, True, torch.device("cpu"))
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])
    D.all_reduce_sum_([a, b], ctx)
    D.all_reduce_mean_([a, b], ctx)
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [[3.0]]
    assert D.gather_cat(a, ctx) is a
    memory = {"exemplars": {"0": [3, 1]}}
    assert D.broadcast_object(memory, ctx) is memory and D.gather_object(memory, ctx) == [memory]
    net = W.Net()
    before = D.checksum(net)
    D.broadcast_module_(net, ctx)
    D.broadcast_tensors_(D.counters(net), ctx)
    D.barrier(ctx)
    D.cleanup(ctx)
    assert D.checksum(net) == before and not dist.is_initialized()
    shares = L.task_shares(torch.tensor([2, 0, 2, 2]), 4, ctx)
    assert shares.ranks.tolist() == [1, 0, 1, 0] and shares.samples.tolist() == [1, 0, 3, 0]
    assert shares.tasks == [0, 2]
    for weighting in ("ranks", "samples"):  # one process: every task's weight is exactly 1 / K
        shares = L.task_shares(torch.tensor([2, 0, 2, 2]), 4, ctx, weighting)
        assert shares.head_weight(2, 3) == 1.0 and shares.theta_weight(2, 3) == 1.0 / 2


def test_auto_device_follows_cuda(plain_env):
    want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert D.setup("auto").device == want


@pytest.mark.parametrize("weighting", ["ranks", "samples"])
@pytest.mark.parametrize("r", [1, 2])
def test_one_rank_update_is_bit_identical_to_the_single_process_one(one_rank, weighting, r):
    got, want = W.Net(), W.Net()
    with W.weighted_by(weighting) as shares:
        W.meta_step(got, W.GLOBAL_X, W.GLOBAL_Y, one_rank, r=r)
    assert len(shares) == 1 and shares[0].tasks == [0, 1, 2]  # the distributed path was taken,
    assert shares[0].weighting == weighting  # weighted as asked ("samples": the learner's choice)
    with W.weighted_by(weighting) as shares:
        W.meta_step(want, W.GLOBAL_X, W.GLOBAL_Y, D.DistContext(), r=r)
    assert shares == []  # and here the single-process one
    assert D.checksum(got) == D.checksum(want)
    assert not torch.equal(got.head.weight, W.Net().head.weight)  # the step did move the weights
    assert torch.equal(got.head.weight[6:], W.Net().head.weight[6:])  # task 3 absent: base rows


MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "MASTER_ADDR, MASTER_PORT missing"),
    ({"RANK": "one", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **MASTER}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **MASTER}, "not a valid torchrun rank"),
    ({"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0", **MASTER}, "not a valid torchrun rank"),
])
def test_bad_torchrun_environment_is_one_sentence(plain_env, env, match):
    for name, value in env.items():
        plain_env.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        D.setup("cpu")
    assert not dist.is_initialized()


def test_ranks_that_cannot_meet_are_one_sentence(plain_env):
    """torch.distributed's own failure to form the group (here gloo told to use an interface this
    machine lacks) is one sentence naming the rank, the address and what to check."""
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port()), GLOO_SOCKET_IFNAME="no-such-if").items():
        plain_env.setenv(name, value)
    with pytest.raises(ConfigError, match=r"^rank 0 of 1 could not join the gloo process group at "
                       r"127\.0\.0\.1:\d+ \(.*no-such-if\); on one node start the ranks with "
                       r"`torchrun --standalone`, .* in GLOO_SOCKET_IFNAME\.$"):
        D.setup("cpu")
    assert not dist.is_initialized()


@pytest.mark.parametrize("device,match", [("cuda", "LOCAL_RANK=1 but this node sees 1 GPU"),
                                          ("cuda:1", "names one GPU")])
def test_gpu_ranks_need_their_own_gpu(plain_env, device, match):
    plain_env.setattr(torch.cuda, "device_count", lambda: 1)  # a node with one GPU
    plain_env.setattr(torch.cuda, "is_available", lambda: True)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **MASTER}.items():
        plain_env.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        D.setup(device)
    assert not dist.is_initialized()


# ---------------------------------------------------------------- sharding (no processes needed)

@pytest.mark.parametrize("n", [0, 1, 5, 23, 24])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_training_shards_are_equal_strided_and_cover_every_index(n, world):
    order = np.random.default_rng(n).permutation(100 + np.arange(n))
    shares = [D.shard(order, r, world) for r in range(world)]
    assert {len(s) for s in shares} == {D.local_batch(n, world)}
    interleaved = np.stack(shares, 1).reshape(-1)  # rank r holds every world-th position from r
    assert interleaved[:n].tolist() == order.tolist()
    assert set(interleaved[n:].tolist()) <= set(order.tolist())  # padding repeats indices
    if world == 1:
        assert shares[0].tolist() == order.tolist()


def test_local_batch_keeps_the_global_batch():
    assert [D.local_batch(b, w) for b, w in [(64, 1), (64, 2), (65, 2), (8, 3), (1, 4)]] == \
        [64, 32, 33, 3, 1]


def single_process_batches():
    generator = torch.Generator().manual_seed(W.SEED)
    data = TensorDataset(torch.arange(100, 100 + W.TRAIN_N))
    loader = DataLoader(data, batch_size=W.TRAIN_BATCH, shuffle=True, generator=generator)
    return [[batch.tolist() for (batch,) in loader] for _ in range(W.EPOCHS)]


def test_one_rank_loader_gives_the_single_process_batches():
    assert W.train_batches(0, 1) == single_process_batches()


def test_two_ranks_together_make_the_single_process_batches():
    single, per_rank = single_process_batches(), [W.train_batches(r, 2) for r in range(2)]
    assert single[0] != single[1]  # a new permutation every epoch
    for epoch, batches in enumerate(single):
        mine, yours = per_rank[0][epoch], per_rank[1][epoch]
        assert len(mine) == len(yours) == len(batches)
        for j, batch in enumerate(batches):
            union = sorted(mine[j] + yours[j])
            if j < len(batches) - 1:
                assert union == sorted(batch)
            else:  # the last batch is completed by wrapping around to the epoch's first index
                assert union == sorted(batch + batches[0][:len(union) - len(batch)])


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_shards_are_contiguous_blocks_that_concatenate_back(n, world):
    indices = 50 + np.arange(n)
    shares = [D.eval_shard(indices, r, world) for r in range(world)]
    assert {len(s) for s in shares} == {D.local_batch(n, world)}
    assert np.concatenate(shares)[:n].tolist() == indices.tolist()


# ---------------------------------------------------------------- two gloo ranks

def test_torchrun_environment_starts_a_gloo_group(ranks):
    assert [res["ctx"] for res in ranks] == [[True, r, WORLD, r, "cpu", r == 0] for r in range(WORLD)]
    assert [res["initialized_after_cleanup"] for res in ranks] == [False, False]


def test_processes_draw_the_same_permutation(ranks):
    assert [res["train_batches"] for res in ranks] == [W.train_batches(r, WORLD) for r in range(WORLD)]


@pytest.mark.parametrize("n", W.EVAL_SIZES)
def test_eval_outputs_gather_back_in_the_original_order(ranks, n):
    expected = torch.stack([torch.arange(50, 50 + n) * 10, torch.arange(50, 50 + n) * 10 + 1], 1)
    for res in ranks:
        size, gathered = res["eval"][n]
        assert size == D.local_batch(n, WORLD)
        assert torch.equal(gathered, expected.double())


def test_gather_of_unequal_and_empty_shards(ranks):
    ones, twos = torch.ones(3, 2), torch.full((2, 2), 2.0)
    for res in ranks:
        first, none, second = res["gather_ragged"]
        assert torch.equal(first, torch.cat([ones, twos]))
        assert none.shape == (0, 2) and torch.equal(second, twos)


def test_coalesced_sum_and_mean_equal_the_hand_computed_ones(ranks):
    for res in ranks:
        a, b, c, d = res["sum"]
        assert torch.equal(a, torch.full((2, 3), 1.5 + 2.5, dtype=torch.float64))
        assert torch.equal(b, torch.arange(4.0) * 3) and torch.equal(c, torch.tensor([3, 10]))
        assert c.dtype == torch.int64 and torch.equal(d, torch.tensor(2.0))
        mean_a, mean_b = res["mean"]
        assert torch.equal(mean_a, torch.full((3,), 2.0)) and torch.equal(mean_b, torch.tensor([[2.0]]))


def test_rank_0_broadcasts_objects_and_weights(ranks):
    assert [res["broadcast_object"] for res in ranks] == [{"exemplars": {"0": [4, 9, 1], "1": [7]}}] * 2
    assert [res["gather_object"] for res in ranks] == [[("rank", 0), ("rank", 1)]] * 2
    before = [res["checksum_before_broadcast"] for res in ranks]
    assert before[0] != before[1]
    assert [res["checksum_after_broadcast"] for res in ranks] == [before[0]] * 2


def expected_paper(scenario, weighting):
    """Closed form: per task, the weighted mean over the ranks that saw it of its fast weights;
    θ and BatchNorm statistics: mean over the batch's tasks; head rows: task k's own average."""
    bn = scenario != "unbalanced"
    base = W.Net(bn).state_dict()
    runs = {}  # task -> [(fast state, samples)]
    for r in range(WORLD):
        x, y = W.shard_of(scenario, r)
        for k in torch.unique(y // W.CPT).tolist():
            net, mask = W.Net(bn), (y // W.CPT) == k
            sgd_inner_loop(net, x[mask], y[mask], k)
            runs.setdefault(k, []).append((net.state_dict(), int(mask.sum())))

    def average(name, runs_k, rows=slice(None)):
        weights = [1 / len(runs_k) if weighting == "ranks" else m / sum(m for _, m in runs_k)
                   for _, m in runs_k]
        return sum(w * state[name][rows] for w, (state, _) in zip(weights, runs_k))

    expected = {}
    for name, value in base.items():
        if not value.is_floating_point():
            continue
        if name.startswith("head"):
            fast = value.clone()
            for k, runs_k in runs.items():
                rows = slice(k * W.CPT, (k + 1) * W.CPT)
                fast[rows] = average(name, runs_k, rows)
        else:
            fast = sum(average(name, runs_k) for runs_k in runs.values()) / len(runs)
        expected[name] = (1 - W.ETA) * value + W.ETA * fast
    return expected


def test_the_workers_run_the_learner_as_configured():
    """What the expectations below assume of the workers' configs (a changed preset or demo
    field shows here, not as weights that differ)."""
    paper, official = W.learner_cfg("paper"), W.learner_cfg("official")
    assert (paper.task_start, paper.meta_target, paper.task_optimizer, paper.batch_forward) == \
        ("base", "mean", "per_task", False)
    assert (official.task_start, official.meta_target, official.task_optimizer,
            official.batch_forward) == ("previous", "last", "shared", True)
    for cfg in (paper, official):
        assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.lr, cfg.r) == \
            ("sgd", 0, 0, W.LR, 1)
        assert (cfg.num_task, cfg.class_per_task, cfg.num_class) == (W.NUM_TASK, W.CPT, 8)
        assert (cfg.batched_tasks, cfg.compile, cfg.amp, cfg.channels_last) == (False,) * 4
    assert L.eta_for(paper.beta, W.SESSION, paper.num_task) == W.ETA < 1


@pytest.mark.parametrize("key", W.STEPS)
def test_every_meta_step_returns_its_loss(ranks, key):
    """A loss from every rank with samples; None from a rank whose shard is empty (it still takes
    part in the update, and its epoch's mean loss skips the step)."""
    for rank, res in enumerate(ranks):
        step = res["steps"][key]
        assert step["error"] is None, step["error"]
        empty = len(W.shard_of(key.split("/")[1], rank)[1]) == 0
        assert step["loss"] is None if empty else step["loss"] > 0


@pytest.mark.parametrize("key", [key for key in W.STEPS if key.startswith("paper/")])
def test_paper_update_is_the_closed_form_average_and_identical_on_both_ranks(ranks, key):
    _, scenario, weighting = key.split("/")
    expected = expected_paper(scenario, weighting)
    states = [res["steps"][key]["state"] for res in ranks]
    for name, want in expected.items():
        for state in states:
            torch.testing.assert_close(state[name], want, rtol=0, atol=1e-12, msg=name)
    checksums = [res["steps"][key]["checksum"] for res in ranks]
    assert checksums[0] == checksums[1]  # bit-identical, counters too
    if scenario != "empty_shard":  # guards the expectation: weighting matters when shares differ
        other = expected_paper(scenario, "samples" if weighting != "samples" else "ranks")
        assert (other["features.0.weight"] - expected["features.0.weight"]).abs().max() > 1e-6


def test_sample_weighting_equals_one_sgd_step_on_the_whole_global_batch(ranks):
    rows = torch.tensor(W.SHARDS["unbalanced"][0] + W.SHARDS["unbalanced"][1])
    single = W.Net(bn=False)
    W.meta_step(single, W.GLOBAL_X[rows], W.GLOBAL_Y[rows], D.DistContext())  # one process
    got = ranks[0]["steps"]["paper/unbalanced/samples"]["state"]
    for name, want in single.state_dict().items():
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-12, msg=name)
    by_ranks = ranks[0]["steps"]["paper/unbalanced/ranks"]["state"]
    assert (by_ranks["features.0.weight"] - single.features[0].weight).abs().max() > 1e-6


@pytest.mark.parametrize("key", W.ER_STEPS)
def test_experience_replay_on_shards_is_its_step_on_the_whole_global_batch(ranks, key):
    """The ranks' gradients of the loss summed over their samples, over the global count, add up
    to the single process's gradient of the mean loss: both ranks end where one process does."""
    loss, scenario = key.split("/")
    rows = torch.tensor(W.SHARDS[scenario][0] + W.SHARDS[scenario][1])
    single = W.Net(bn=False)
    W.er_step(single, W.GLOBAL_X[rows], W.GLOBAL_Y[rows], D.DistContext(), loss)
    for rank, res in enumerate(ranks):
        step = res["er_steps"][key]
        assert step["error"] is None, step["error"]
        assert (step["loss"] is None) == (len(W.SHARDS[scenario][rank]) == 0)
        for name, want in single.state_dict().items():
            torch.testing.assert_close(step["state"][name], want, rtol=0, atol=1e-12, msg=name)
    assert not torch.equal(single.head.weight, W.Net(bn=False).head.weight)


@pytest.mark.parametrize("key", [key for key in W.STEPS if key.startswith("official/")])
def test_official_update_interpolates_towards_the_mean_live_weights(ranks, key):
    scenario, bn = key.split("/")[1], "unbalanced" not in key
    base, live = W.Net(bn).state_dict(), []
    for r in range(WORLD):
        x, y = W.shard_of(scenario, r)
        net = W.Net(bn)
        with torch.no_grad():
            net(x)  # batch_forward: BatchNorm's running statistics take a step on the whole shard
        for k in torch.unique(y // W.CPT).tolist():  # task_start "previous": one after another
            sgd_inner_loop(net, x[(y // W.CPT) == k], y[(y // W.CPT) == k], k)
        live.append(net.state_dict())
    params = {name for name, _ in W.Net(bn).named_parameters()}
    states = [res["steps"][key]["state"] for res in ranks]
    for name, value in base.items():
        if not value.is_floating_point():
            continue
        mean = (live[0][name] + live[1][name]) / 2
        want = (1 - W.ETA) * value + W.ETA * mean if name in params else mean
        for state in states:
            torch.testing.assert_close(state[name], want, rtol=0, atol=1e-12, msg=name)
    assert ranks[0]["steps"][key]["checksum"] == ranks[1]["steps"][key]["checksum"]
