"""The one factory of training methods: ``args.method`` → its class (utils/method.py). The session loop
and the restore ask here, and nowhere else is a method chosen by its name."""
from baselines import ExperienceReplay, FineTuning, JointTraining
from learner_task_itaml import MetaLearner

METHODS = {"itaml": MetaLearner, "er": ExperienceReplay, "finetune": FineTuning,
           "joint": JointTraining}


def method_class(cfg):
    """The class of ``cfg.method`` (the table of fields allows these names alone)."""
    return METHODS[cfg.method]
