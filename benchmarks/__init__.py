"""Speed benchmarks; the straightforward reference they compare against, and the fake data they
run on, are the tests' (``tests/support/``)."""
