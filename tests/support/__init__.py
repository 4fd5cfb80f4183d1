"""What the tests (and the benchmarks) share, none of it a test: fake data sets in each on-disk
format (``fake_data``), hand-written session files (``fake_runs``), a checked config
(``cfg``), the straightforward reference learner (``naive``), the two gloo ranks of
tests/test_distributed.py (``dist_workers``), and the scripts tests start as processes of their own:
``fault_runner``, ``torchrun_digits`` and ``release_runner``."""
