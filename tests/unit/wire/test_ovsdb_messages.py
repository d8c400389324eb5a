"""OVSDB's JSON-RPC framing and monitor messages, on what Open vSwitch 3.1's ovsdb-server really sent
(ovsdb_session.jsonrpc and ovsdb_errors.jsonrpc, recorded by tests/helpers/ovsdb_record.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hwsflow.wire import ovsdb_jsonrpc as rpc
from hwsflow.wire import ovsdb_monitor as db

HERE = Path(__file__).parent
SESSION = (HERE / "ovsdb_session.jsonrpc").read_bytes()
ERRORS = (HERE / "ovsdb_errors.jsonrpc").read_bytes()
UPDATES = 9  # one per command of tests.helpers.ovsdb_record.SESSION


def feed_in(data: bytes, cuts: list[int]) -> list[rpc.Message]:
    stream = rpc.MessageStream()
    messages = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        messages += stream.feed(data[start:cut])
        start = cut
    return messages


def test_the_recorded_session_is_the_monitor_reply_then_one_update_per_command():
    messages = rpc.MessageStream().feed(SESSION)
    assert len(messages) == 1 + UPDATES
    reply, *updates = messages
    assert isinstance(reply, rpc.Reply) and reply.id == 0 and reply.error is None
    assert all(isinstance(m, rpc.Notification) and m.method == db.UPDATE for m in updates)
    assert all(db.update_of(m.params, "hwsflow") for m in updates)  # type: ignore[union-attr]


@given(st.lists(st.integers(0, len(SESSION)), max_size=40))
def test_messages_come_out_the_same_however_the_reads_cut_them(cuts):
    assert feed_in(SESSION, cuts) == rpc.MessageStream().feed(SESSION)


def test_one_byte_at_a_time():
    assert feed_in(SESSION, list(range(len(SESSION)))) == rpc.MessageStream().feed(SESSION)


def test_braces_quotes_and_multibyte_characters_inside_strings():
    tricky = {"id": None, "method": "update", "params": ["m", {"T": {"u": {"new": {"name": 'a{b}"c\\\\"}é€😀'}}}}]}
    data = json.dumps(tricky, ensure_ascii=False).encode() + b" \n" + json.dumps(tricky).encode()
    for cut in range(len(data) + 1):
        assert feed_in(data, [cut]) == [rpc.Notification("update", tricky["params"])] * 2


def test_error_replies_and_echo_as_recorded():
    unknown_column, unknown_db, echo = rpc.MessageStream().feed(ERRORS)
    assert isinstance(unknown_column, rpc.Reply) and unknown_column.result is None
    assert unknown_column.error["error"] == "syntax error" and "no_such_column" in unknown_column.error["details"]
    assert isinstance(unknown_db, rpc.Reply) and unknown_db.error["error"] == "unknown database"
    assert echo == rpc.Reply("echo-1", ["probe"], None)


def test_requests_and_replies_are_compact_json():
    assert json.loads(rpc.encode_request("echo", [], 7)) == {"method": "echo", "params": [], "id": 7}
    assert json.loads(rpc.encode_reply("x", ["a"])) == {"result": ["a"], "error": None, "id": "x"}
    assert rpc.MessageStream().feed(rpc.encode_request("echo", ["a"], "x")) == [rpc.Request("echo", ["a"], "x")]


@pytest.mark.parametrize("data,why", [
    (b"[1, 2]", "must be a JSON object"),
    (b'{"id": 1, "result": }', "invalid JSON"),
    (b'{"id": 1}', "neither a request nor a reply"),
    (b'{"method": 5, "params": [], "id": null}', "string method"),
    (b'{"method": "update", "params": {}, "id": null}', "list of params"),
    (b'{"id": 1, "result": "\xff"}', "not UTF-8"),
])
def test_what_is_not_json_rpc_is_a_protocol_error(data, why):
    with pytest.raises(rpc.ProtocolError, match=why):
        rpc.MessageStream().feed(data)


def test_an_endless_message_is_refused_once_past_the_limit():
    stream = rpc.MessageStream(limit=1000)
    stream.feed(b'{"id": 1, "result": "' + b"x" * 900)
    with pytest.raises(rpc.ProtocolError, match="longer than 1000"):
        stream.feed(b"x" * 200)


def test_the_monitor_request_names_tables_and_columns():
    params = db.monitor_params("hwsflow", {"Bridge": ("name", "ports")})
    assert params == ["Open_vSwitch", "hwsflow", {"Bridge": {"columns": ["name", "ports"]}}]


def test_row_changes_of_the_recorded_reply():
    reply = rpc.MessageStream().feed(SESSION)[0]
    assert isinstance(reply, rpc.Reply)
    changes = db.row_changes(reply.result)
    assert {c.table for c in changes} == {"Bridge", "Port", "Interface"}  # no sFlow row yet
    assert all(c.new is not None and c.old is None for c in changes)
    names = sorted(c.new["name"] for c in changes if c.table == "Interface")  # type: ignore[index]
    assert names == ["br0", "int1", "vm1tap"]


def test_an_update_for_another_monitor_is_not_ours():
    assert db.update_of(["other", {}], "hwsflow") is None
    with pytest.raises(rpc.ProtocolError):
        db.update_of(["hwsflow"], "hwsflow")


@pytest.mark.parametrize("value", [
    [], {"T": []}, {"T": {"u": {}}}, {"T": {"u": {"new": 1}}}, {"T": {"u": "x"}},
])
def test_malformed_table_updates(value):
    with pytest.raises(rpc.ProtocolError):
        db.row_changes(value)


def test_values_as_rfc_7047_encodes_them():
    assert db.uuids(["set", []]) == ()
    assert db.uuids(["uuid", "a"]) == ("a",)  # a set of one is the atom itself
    assert db.uuids(["set", [["uuid", "a"], ["uuid", "b"]]]) == ("a", "b")
    assert db.strings("192.0.2.9:6343") == ("192.0.2.9:6343",)
    assert db.strings(["set", ["a", "b"]]) == ("a", "b")
    assert db.optional_integer(["set", []]) is None
    assert db.optional_integer(64) == 64
    assert db.string_map(["map", [["iface-id", "x"], ["vm-uuid", "y"]]]) == {"iface-id": "x", "vm-uuid": "y"}


@pytest.mark.parametrize("check,value", [
    (db.uuids, ["set", ["a"]]), (db.uuid, ["uuid"]), (db.string, 5), (db.optional_integer, True),
    (db.optional_integer, ["set", [1, 2]]), (db.string_map, ["set", []]), (db.string_map, ["map", [["a"]]]),
    (db.string_map, ["map", [["a", 1]]]), (db.atoms, ["set", "x"]),
])
def test_values_of_the_wrong_type(check, value):
    with pytest.raises(rpc.ProtocolError):
        check(value)


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_any_bytes_give_messages_or_a_protocol_error(data, cuts):
    try:
        messages = feed_in(data, cuts)
    except rpc.ProtocolError:
        return
    assert all(isinstance(m, rpc.Request | rpc.Notification | rpc.Reply) for m in messages)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=12)


@given(JSON)
def test_any_json_as_table_updates_gives_rows_or_a_protocol_error(value):
    try:
        changes = db.row_changes(value)
    except rpc.ProtocolError:
        return
    assert all(c.new is None or isinstance(c.new, dict) for c in changes)
