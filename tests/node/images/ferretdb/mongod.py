#!/usr/bin/env python3
"""`mongod` for the FerretDB image: takes the flags the operator's manifests pass (--replSet,
--bind_ip_all, --bind_ip, --port, --dbpath) and runs FerretDB with the SQLite backend there.

FerretDB answers `hello` with the replica set name it is given and its listen address as the
only host, so it listens on this pod's own DNS name: clients that connect with
`?replicaSet=rs0` then find the primary at the name they can resolve.
"""
import argparse
import os
import socket
import sys

parser = argparse.ArgumentParser(prog="mongod")
parser.add_argument("--replSet", default="")
parser.add_argument("--bind_ip_all", action="store_true")
parser.add_argument("--bind_ip", default="127.0.0.1")
parser.add_argument("--port", type=int, default=27017)
parser.add_argument("--dbpath", default="/data/db")
args, unknown = parser.parse_known_args()
if unknown:
    print(f"mongod (FerretDB): ignoring {' '.join(unknown)}", file=sys.stderr)

host = socket.getfqdn() if args.bind_ip_all else args.bind_ip
os.makedirs(os.path.join(args.dbpath, "state"), exist_ok=True)
argv = [
    "ferretdb",
    "--handler=sqlite",
    f"--sqlite-url=file:{args.dbpath.rstrip('/')}/",
    f"--listen-addr={host}:{args.port}",
    f"--state-dir={os.path.join(args.dbpath, 'state')}",
    "--telemetry=disable",
    "--debug-addr=-",
    "--log-level=warn",
]
if args.replSet:
    argv.append(f"--repl-set-name={args.replSet}")
print("mongod (FerretDB):", " ".join(argv), file=sys.stderr, flush=True)
os.execvp(argv[0], argv)
