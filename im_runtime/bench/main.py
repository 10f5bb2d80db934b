"""Placeholder replaced below."""
def add_bench_parser(sub):  # type: ignore[no-untyped-def]
    pass
