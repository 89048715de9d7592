"""The docs say what the code does: every config key is documented, the error table is the facade's."""

import re
from pathlib import Path

from gateway_core.config_model import ROUTE_KEYS, SECTION_KEYS
from gateway_core.errors import GatewayError, Reason
from http_facade.errors import REASONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _sections(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if heading := re.match(r"^## \[\[?(\w+)\]\]?", line):
            current = heading.group(1)
            found[current] = set()
        elif current and (row := re.match(r"^\| `(\w+)` \|", line)):
            found[current].add(row.group(1))
    return found


def test_configuration_reference_lists_exactly_the_accepted_keys() -> None:
    documented = _sections((DOCS / "configuration.md").read_text())
    assert {name: set(keys) for name, keys in SECTION_KEYS.items()} == documented


def test_route_keys_are_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    assert all(f"`{key}`" in text for key in ROUTE_KEYS)


def test_error_table_matches_the_facade() -> None:
    rows = {}
    for line in (DOCS / "errors.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in Reason.__members__:
            rows[cells[0]] = (cells[1], int(cells[2]), cells[3], cells[4] or None)
    assert set(rows) == {r.value for r in Reason}
    for reason, (grpc_code, status, type_, code) in rows.items():
        kind = REASONS[reason]
        assert GatewayError(Reason(reason), "x").code.name == grpc_code, reason
        assert (kind.status, kind.type, kind.code) == (status, type_, code), reason
