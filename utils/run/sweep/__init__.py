"""Sweeps over seeds and settings (``python3 -m utils.run.sweep``, ``__main__.py``): the plan of runs
(``plan.py``), running them on this machine (``local.py``) or as a Slurm job array (``slurm.py``,
``task.py``)."""
from utils.run.sweep.local import core_sets, slots, visible_gpus
from utils.run.sweep.plan import Run, parse_grid, parse_seeds, plan, split_values

__all__ = ["Run", "core_sets", "parse_grid", "parse_seeds", "plan", "slots", "split_values",
           "visible_gpus"]
