"""Helpers of the sanity-check tests (tests/pipelines/test_sanity.py, tests/cli/test_sanity_command.py)."""


def interrupt_randomise(monkeypatch, at: int) -> list:
    """Count the calls of sanity's `randomise` (a list of 1s) and raise KeyboardInterrupt at call
    number `at`; clearing the list starts the count again."""
    import xaibench.pipelines.sanity as sanity_run

    calls = []
    real = sanity_run.randomise

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity_run, "randomise", counted)
    return calls
