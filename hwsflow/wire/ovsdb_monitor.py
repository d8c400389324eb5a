"""OVSDB's `monitor` (RFC 7047 sections 4.1.5-4.1.6) and its value encoding (section 5.1).

Pure.  The request names the tables and columns to follow; the reply holds
their rows, and each "update" notification the rows that changed: per table and
row UUID, "new" (all monitored columns) without "old" for a row that appeared,
"old" (the columns that changed, before) with "new" for one that changed, "old"
alone for one that went.  The plain `monitor` of RFC 7047 is what every
ovsdb-server answers; its full "new" rows make merging a replacement.

Values: an atom is a string, number or boolean, a UUID is ["uuid", "..."]; a
set is ["set", [atoms]] or, with exactly one element, that atom; a map is
["map", [[key, value], ...]].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hwsflow.wire.ovsdb_jsonrpc import ProtocolError

DATABASE = "Open_vSwitch"
UPDATE = "update"  # the notification's method


@dataclass(frozen=True)
class RowChange:
    """One row of one table as an update gives it: new is None for a row that went."""

    table: str
    uuid: str
    new: Mapping[str, Any] | None
    old: Mapping[str, Any] | None = None  # what the changed columns were (for a row that changed or went)


def monitor_params(monitor_id: str, tables: Mapping[str, tuple[str, ...]], database: str = DATABASE) -> list[Any]:
    """The params of a `monitor` request following these columns of these tables (every change kind)."""
    return [database, monitor_id, {table: {"columns": list(columns)} for table, columns in tables.items()}]


def row_changes(table_updates: object) -> list[RowChange]:
    """The rows a monitor reply's result or an update's table-updates carries."""
    if not isinstance(table_updates, dict):
        raise ProtocolError(f"table-updates must be an object, got {type(table_updates).__name__}")
    changes = []
    for table, rows in table_updates.items():
        if not isinstance(rows, dict):
            raise ProtocolError(f"table {table}: the rows must be an object")
        for uuid, update in rows.items():
            if not isinstance(update, dict) or not ({"old", "new"} & update.keys()):
                raise ProtocolError(f"table {table}, row {uuid}: a row-update needs old or new")
            new, old = update.get("new"), update.get("old")
            if not isinstance(new, dict | None) or not isinstance(old, dict | None):
                raise ProtocolError(f"table {table}, row {uuid}: old and new must be rows (objects)")
            changes.append(RowChange(table, uuid, new, old))
    return changes


def update_of(params: list[Any], monitor_id: str) -> list[RowChange] | None:
    """The rows of an "update" notification for this monitor; None when it is another monitor's."""
    if len(params) != 2:
        raise ProtocolError(f"an update has two params (monitor id, table-updates), got {len(params)}")
    return row_changes(params[1]) if params[0] == monitor_id else None


# ------------------------------------------------------------------ values


def atoms(value: object) -> list[Any]:
    """The elements of a set (a lone atom is a set of one)."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        if not isinstance(value[1], list):
            raise ProtocolError(f"a set's elements must be a list: {value!r:.80}")
        return value[1]
    return [value]


def string(value: object) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"expected a string, got {value!r:.80}")
    return value


def uuid(value: object) -> str:
    if not (isinstance(value, list) and len(value) == 2 and value[0] == "uuid" and isinstance(value[1], str)):
        raise ProtocolError(f"expected a UUID, [\"uuid\", ...], got {value!r:.80}")
    return value[1]


def uuids(value: object) -> tuple[str, ...]:
    """A set of UUIDs, which is also an optional reference (empty when absent)."""
    return tuple(uuid(atom) for atom in atoms(value))


def strings(value: object) -> tuple[str, ...]:
    return tuple(string(atom) for atom in atoms(value))


def optional_integer(value: object) -> int | None:
    elements = atoms(value)
    if len(elements) > 1 or not all(isinstance(e, int) and not isinstance(e, bool) for e in elements):
        raise ProtocolError(f"expected an optional integer, got {value!r:.80}")
    return elements[0] if elements else None


def string_map(value: object) -> dict[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and value[0] == "map" and isinstance(value[1], list)):
        raise ProtocolError(f"expected a map, [\"map\", [...]], got {value!r:.80}")
    pairs = {}
    for pair in value[1]:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ProtocolError(f"a map's pairs are [key, value]: {pair!r:.80}")
        pairs[string(pair[0])] = string(pair[1])
    return pairs
