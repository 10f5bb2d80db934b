"""Distributed mode (issue 3): access, dispatch and route as separate processes coordinated
through ZooKeeper (zk.py), joined by long-lived access <-> dispatch links (links.py) and the
route gRPC service (im_runtime/route/grpc_*.py). roles.py wires them into `imstack` commands."""
