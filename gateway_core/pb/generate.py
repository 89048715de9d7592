"""Regenerates the committed protobuf/gRPC stubs from proto/.

Run: ``python -m gateway_core.pb.generate``. The output is committed and never
edited by hand; tests/unit/test_pb_current.py fails when it drifts from proto/.
protoc names imports after the proto path (``from gateway.v1 import ...``), so
they are rewritten to live under this package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from gateway\.(v1|admin\.v1) import", re.MULTILINE)


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Every .proto file under proto_dir, in a stable order."""
    return sorted(proto_dir.rglob("*.proto"))


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir."""
    well_known = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(proto_dir)) for p in proto_files(proto_dir)]
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = sorted(p for p in out_dir.rglob("*_pb2*.py*") if p.is_file())
    for path in written:
        text = path.read_text()
        path.write_text(_IMPORT.sub(r"from gateway_core.pb.gateway.\1 import", text))
    for path in written:  # make every generated folder an importable package
        for folder in path.relative_to(out_dir).parents:
            init = out_dir / folder / "__init__.py"
            if folder != Path(".") and not init.exists():
                init.write_text("")
    return written


if __name__ == "__main__":
    for path in generate(PACKAGE_DIR):
        print(path.relative_to(ROOT))
    sys.exit(0)
