"""Load generators for `imstack bench` (throughput, connections)."""
