"""The replay memory M(t): at most ``args.memory`` exemplars, split equally over the classes seen so
far, chosen at random (seeded), in data-set order (the release's "first") or by herding (iCaRL). It
stores indices into the training set, so it is small, exact and saved as JSON."""
import numpy as np
import torch


class ReplayMemory:
    """At most ``size`` exemplars, split equally over the classes seen so far.

    Each class's exemplars are kept in priority order (a seeded shuffle, herding order, or data-set
    order for the release's "first" selection), so when new classes arrive and the per-class quota
    shrinks, a class keeps its first ``quota`` exemplars.
    """

    def __init__(self, size, selection="random", seed=0):
        self.size, self.selection, self.seed = size, selection, seed
        self.exemplars = {}  # class position -> np.ndarray of training-set indices

    def quota(self, num_seen):
        return self.size // num_seen

    def __len__(self):
        return sum(len(v) for v in self.exemplars.values())

    def classes(self):
        return sorted(self.exemplars)

    def indices(self, classes=None):
        classes = self.classes() if classes is None else classes
        parts = [self.exemplars[c] for c in classes if c in self.exemplars]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def update(self, data, new_classes, session, model=None, device="cpu"):
        """Shrink old classes to the new quota, then pick exemplars of ``new_classes``."""
        m = self.quota(len(self.exemplars) + len(new_classes))
        for c in self.exemplars:
            self.exemplars[c] = self.exemplars[c][:m]
        for c in new_classes:
            candidates = data.class_indices(c)
            if self.selection == "random":
                rng = np.random.default_rng([self.seed, session, c])
                chosen = rng.permutation(candidates)[:m]
            elif self.selection == "first":  # the release: the first m in data-set order
                chosen = candidates[:m]
            else:
                feats = extract_features(model, data, candidates, device)
                chosen = candidates[herding(feats, m)]
            self.exemplars[c] = np.asarray(chosen, dtype=np.int64)

    def state_dict(self):
        return {"size": self.size, "selection": self.selection, "seed": self.seed,
                "exemplars": {str(c): v.tolist() for c, v in sorted(self.exemplars.items())}}

    @classmethod
    def from_state(cls, state):
        memory = cls(int(state["size"]), state["selection"], int(state["seed"]))
        memory.exemplars = {int(c): np.asarray(v, dtype=np.int64)
                            for c, v in state["exemplars"].items()}
        return memory


@torch.no_grad()
def extract_features(model, data, indices, device):
    """L2-normalised features θ(x) of training samples, seen with test transforms."""
    was_training = model.training
    model.eval()
    feats = [model.features(x.to(device)).flatten(1).float().cpu()
             for x, _ in data.loader(data.train_plain, indices, data.cfg.test_batch)]
    model.train(was_training)
    feats = torch.cat(feats)
    return feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)


def herding(features, m):
    """iCaRL's herding: greedily pick samples whose running mean best tracks the class mean."""
    m = min(m, len(features))
    mu = features.mean(0)
    running = torch.zeros_like(mu)
    taken = torch.zeros(len(features), dtype=torch.bool)
    order = []
    for k in range(1, m + 1):
        dist = (mu - (running + features) / k).norm(dim=1)
        dist[taken] = float("inf")
        i = int(dist.argmin())
        order.append(i)
        taken[i] = True
        running += features[i]
    return np.asarray(order, dtype=np.int64)
