"""Everything behind the top-level files, one folder a job: ``run/`` (the session loop, a run's files,
sweeps, evaluating a run again), ``report/`` (metrics, tables, plots), ``fast/`` (the learner's speed
and torchrun internals), ``data/`` (readers, transforms, the replay memory); and the basics: ``config``
(the args schema), ``inference`` (Alg. 2 and every protocol), ``files`` (a run's file names and atomic
writes), ``errors``, ``logger``."""
