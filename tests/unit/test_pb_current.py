"""The committed generated code must be exactly what proto/ generates."""

from pathlib import Path

from gateway_core.pb import generate


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text() for p in generate.generate(tmp_path)}
    committed_dir = generate.PACKAGE_DIR
    committed = {
        p.relative_to(committed_dir): p.read_text() for p in committed_dir.rglob("*_pb2*.py*") if p.is_file()
    }
    assert sorted(fresh) == sorted(committed), "generated file set differs: run python -m gateway_core.pb.generate"
    stale = [str(path) for path, text in fresh.items() if committed[path] != text]
    assert not stale, f"stale generated code {stale}: run python -m gateway_core.pb.generate"
