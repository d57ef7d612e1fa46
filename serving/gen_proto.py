"""Regenerate the committed Python stubs of the gRPC API from `proto/`: `python -m serving.gen_proto`.

The `.proto` files under `proto/` are the source of truth. Stubs go to `serving/api/` (module
`serving.api.energyopt.v1.forecast_pb2` and friends); protoc names modules after the proto path
(`from energyopt.v1 import ...`, messages' `__module__` = `energyopt.v1.forecast_pb2`), which would
clash with the `energyopt` command-line package and break unpickling, so both are rewritten to point
into `serving.api`. `--check` regenerates into a temporary folder and exits 1 when the committed stubs
differ (run by the tests); the output depends on the grpcio-tools version, printed on a mismatch.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "serving" / "api"
PACKAGE = "serving.api"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the stubs of every proto file under `out_root`; returns the files written."""
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    out_root.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *(str(p.relative_to(PROTO_ROOT)) for p in protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the message above)")
    top_packages = {p.relative_to(PROTO_ROOT).parts[0] for p in protos}
    written = []
    for path in sorted(out_root.rglob("*")):
        if path.is_dir():
            (path / "__init__.py").touch()
        elif path.name.endswith(SUFFIXES):
            text = path.read_text()
            for top in top_packages:
                # `from energyopt.v1 import x_pb2` -> `from serving.api.energyopt.v1 import x_pb2`
                text = re.sub(rf"^(from|import) {top}\.", rf"\1 {PACKAGE}.{top}.", text, flags=re.M)
                # the messages' __module__, which pickle (Ray ships requests to replicas pickled) imports
                text = re.sub(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')({top}\.)", rf"\1{PACKAGE}.\2", text)
            path.write_text(text)
            written.append(path)
    note = '"""Generated gRPC stubs: do not edit; run `python -m serving.gen_proto`."""\n'
    (out_root / "__init__.py").write_text(note)
    return written


def check() -> list[str]:
    """Names of committed stub files that differ from freshly generated ones (empty: all current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "api"
        generate(fresh)
        want = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
        have = {p.relative_to(OUT_ROOT) for p in OUT_ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        stale = sorted(str(p) for p in want ^ have)
        stale += sorted(str(p) for p in want & have if not filecmp.cmp(fresh / p, OUT_ROOT / p, shallow=False))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check that the committed stubs are current.")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            from importlib.metadata import version

            print(f"stale gRPC stubs (grpcio-tools {version('grpcio-tools')}): {', '.join(stale)}; "
                  "run `python -m serving.gen_proto`", file=sys.stderr)
            return 1
        print("gRPC stubs are current")
        return 0
    if OUT_ROOT.exists():
        shutil.rmtree(OUT_ROOT)
    for path in generate(OUT_ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
