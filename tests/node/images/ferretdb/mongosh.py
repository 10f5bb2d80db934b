#!/usr/bin/env python3
"""`mongosh --quiet --eval SCRIPT` for the FerretDB image, for the scripts the operator's
manifests run: a ping (`db.adminCommand({ping:1}).ok`, the probes) prints 1 when the server
answers; `rs.status()` / `rs.initiate()` (the replica-set init sidecar) prints 1 when the server
reports a replica set name, since FerretDB's set is configured by its start flag, not initiated.
Anything else exits 2. Talks OP_MSG with a hand-made BSON document: the image has no driver.
"""
import socket
import struct
import sys


def bson(doc: dict) -> bytes:
    body = b""
    for key, value in doc.items():
        k = key.encode() + b"\0"
        if isinstance(value, bool):
            body += b"\x08" + k + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            body += b"\x10" + k + struct.pack("<i", value)
        else:
            s = str(value).encode() + b"\0"
            body += b"\x02" + k + struct.pack("<i", len(s)) + s
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def command(host: str, port: int, doc: dict) -> bytes:
    payload = struct.pack("<I", 0) + b"\0" + bson(doc)
    header = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013)
    with socket.create_connection((host, port), timeout=4) as s:
        s.sendall(header + payload)
        data = b""
        while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def main() -> int:
    argv = sys.argv[1:]
    script = argv[argv.index("--eval") + 1] if "--eval" in argv else ""
    host, port = socket.getfqdn(), 27017
    try:
        if "ping" in script:
            reply = command(host, port, {"ping": 1, "$db": "admin"})
            at = reply.find(b"\x01ok\x00")
            ok = at >= 0 and struct.unpack("<d", reply[at + 4:at + 12])[0] == 1.0
        elif "rs." in script:
            reply = command(host, port, {"hello": 1, "$db": "admin"})
            ok = b"setName\x00" in reply
        else:
            print(f"mongosh (FerretDB image): unsupported script {script!r}", file=sys.stderr)
            return 2
    except OSError as e:
        print(f"mongosh (FerretDB image): {e}", file=sys.stderr)
        return 1
    print(1 if ok else 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
