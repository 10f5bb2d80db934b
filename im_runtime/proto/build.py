"""Compiles imstack.proto into the committed imstack_pb2*.py modules.

The generated modules are committed so that installing imstack needs no protoc; `--check`
regenerates into a temporary folder and fails when the committed copies are stale (a test
runs it). grpcio-tools is a test/dev dependency only.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "imstack.proto"
OUTPUTS = ("imstack_pb2.py", "imstack_pb2.pyi", "imstack_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # imported late: only needed at build time

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(HERE / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    grpc_module = out_dir / "imstack_pb2_grpc.py"
    # protoc emits an absolute import; the module lives inside a package.
    text = grpc_module.read_text().replace(
        "import imstack_pb2 as imstack__pb2", "from . import imstack_pb2 as imstack__pb2"
    )
    grpc_module.write_text(text)


def stale_outputs() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return [
            name
            for name in OUTPUTS
            if not (HERE / name).exists() or not filecmp.cmp(Path(tmp) / name, HERE / name, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the committed modules are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_outputs()
        if stale:
            print(f"stale generated modules: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        print("generated modules are current")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            shutil.copyfile(Path(tmp) / name, HERE / name)
    print(f"wrote {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
