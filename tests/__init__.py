"""The test suite, a package so that its modules and the benchmarks import the shared fixtures as
``tests.support.<module>`` with only the repository root on ``sys.path``."""
