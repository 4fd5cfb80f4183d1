"""Running a job: the session loop every ``train_<dataset>.py`` calls (``session``), a run's files and
the checks a resume makes (``store``, ``manifest``), command-line overrides (``overrides``), sweeps over
seeds and settings (``sweep``) and evaluating a finished run again (``evaluate``)."""
