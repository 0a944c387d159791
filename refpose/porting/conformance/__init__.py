"""The conformance suite's machinery: the pytest plugin (options), the backends it runs and the
cases it checks. pytest collects the suite from `refpose.conformance` (`pytest --pyargs
refpose.conformance ...`)."""
