"""A finished session brought back from its files: the run's class order and data, and session t's
model and replay memory, each checked against the record's checksums. A resume restores the last
finished session to train on from it; ``utils.run.evaluate`` restores every one to test it again.
"""
import numpy as np
import torch

from data_sources import build_network
from incremental_dataloader import IncrementalData
from utils.data.memory import ReplayMemory
from utils.errors import ConfigError
from utils.run.methods import method_class
from utils.tasks import seen_classes


def load_class_order(cfg, store):
    """The run's saved class order ({"class_order": [...], "class_names": [...]}), checked."""
    # Every session depends on the class order: redoing one session cannot repair it.
    hint = "restore it or start again at task 0 with a new args.checkpoint"
    saved = store.read_json(store.class_order_file, hint)
    order = saved.get("class_order") if isinstance(saved, dict) else None
    if (not isinstance(order, list) or len(order) != cfg.num_class or len(set(order)) != len(order)
            or not all(isinstance(c, int) for c in order)):
        raise ConfigError(f"{store.class_order_file} is corrupt or does not hold "
                          f"args.num_class = {cfg.num_class} distinct classes; {hint}.")
    return saved


def restore_data(cfg, store, device):
    """The run's data, cut into tasks along its saved class order."""
    return IncrementalData(cfg, load_class_order(cfg, store)["class_order"], device=device)


def restore_session(cfg, store, data, t, record):
    """(model, replay memory) as finished session ``t`` left them; ``record`` is its record."""
    memory = load_memory(cfg, store, data, t, record)
    state = store.load_model_state(t)
    torch.manual_seed(cfg.seed)  # as a fresh run builds it; every weight is then loaded
    model = build_network(cfg.dataset, data.input_shape, cfg.num_class)
    load_weights(model, state, cfg, store, t, record)
    return model, memory


def load_weights(model, state, cfg, store, t, record):
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError):
        raise ConfigError(f"{store.model_file(t)} does not fit the network of this args (dataset "
                          f"{cfg.dataset!r}, num_class {cfg.num_class}); was it written by another "
                          "configuration?") from None
    store.check_checksum(store.model_file(t), record, t)


def load_memory(cfg, store, data, t, record):
    path = store.memory_file(t)
    state = store.read_json(path, store.redo_hint(t))
    try:
        memory = ReplayMemory.from_state(state)
        for c in memory.classes():
            if not np.all(data.train_labels[memory.exemplars[c]] == c):
                raise ValueError(f"class {c}")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ConfigError(f"{path} is corrupt or does not match the training set; "
                          f"{store.redo_hint(t)}.") from None
    keeps = method_class(cfg).keeps_memory
    expected = set(range(seen_classes(t, cfg.class_per_task))) if keeps else set()
    if set(memory.classes()) != expected:
        leaves = f"exemplars of classes 0..{max(expected)}" if keeps else \
            f"no exemplar (args.method = {cfg.method!r} keeps no memory)"
        raise ConfigError(f"{path} holds classes {memory.classes()} but session {t} leaves "
                          f"{leaves}; {store.redo_hint(t)}.")
    store.check_checksum(path, record, t)
    memory.size, memory.selection = cfg.memory, cfg.selection
    return memory
