"""The YAML config file: parsed strictly into frozen dataclasses.

Pure: only load_config touches the file system; collector names and the agent
interface are resolved later by the agent.  The file is usually rendered by
Ansible, so every mistake a template can make (a typo in a key, a quoted number,
YAML's `yes`, a key given twice) is an error naming the file and the key path,
never something silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal, Mapping, get_args

import yaml

Direction = Literal["ingress", "egress", "both"]
Offload = Literal["auto", "required", "software"]

DEFAULT_COLLECTOR_PORT = 6343  # sFlow's IANA port
U32_MAX = 2**32 - 1
GROUP_ROOM = 1 << 16  # psample group ids group_base must leave above it (one per port and direction)
SAMPLE_ROOM = 200  # datagram header + flow sample + record headers, beyond the sampled header bytes
IFNAMSIZ = 16  # the kernel's limit, NUL included


class ConfigError(Exception):
    """A config file that cannot be used; str() is "path: key: reason"."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(path, key, reason)  # all three in args, so the error pickles
        self.path = path
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"


@dataclass(frozen=True)
class Target:
    """One collector; host is an IP address or a name the agent resolves at start."""

    host: str
    port: int


@dataclass(frozen=True)
class PortSettings:
    sampling: int
    header: int
    direction: Direction
    offload: Offload
    priority: int
    chain: int


@dataclass(frozen=True)
class PortRule:
    """Selects ports by exact name or by glob (exactly one of the two)."""

    name: str | None
    match: str | None
    settings: PortSettings


@dataclass(frozen=True)
class Config:
    path: str
    agent: str | None  # interface name or IP text; None: elect the host's best address
    sub_agent_id: int
    targets: tuple[Target, ...]
    polling: int
    defaults: PortSettings
    group_base: int
    datagram_size: int
    expanded: bool
    rcvbuf: int
    keep_filters: bool
    ports: tuple[PortRule, ...]

    def settings_for(self, ifname: str) -> PortSettings | None:
        """An exact name wins over any glob, wherever it appears; among globs the first match wins."""
        for rule in self.ports:
            if rule.name == ifname:
                return rule.settings
        for rule in self.ports:
            # case-sensitive like interface names, whatever the platform's path rules
            if rule.match is not None and fnmatch.fnmatchcase(ifname, rule.match):
                return rule.settings
        return None


DEFAULT_SETTINGS = PortSettings(sampling=400, header=128, direction="ingress", offload="auto", priority=1, chain=0)


@dataclass(frozen=True)
class _IntRange:
    lo: int
    hi: int
    why: str = ""


_INT_RANGES: Mapping[str, _IntRange] = MappingProxyType({
    "sub_agent_id": _IntRange(0, U32_MAX),
    "sampling": _IntRange(1, U32_MAX),
    "header": _IntRange(14, 1024, "bytes of each sampled packet; 14 is one Ethernet header"),
    "polling": _IntRange(0, 3600, "seconds; 0 turns counter polling off"),
    "priority": _IntRange(1, 65535, "a tc filter priority"),
    "chain": _IntRange(0, U32_MAX),
    "group_base": _IntRange(1, U32_MAX - GROUP_ROOM + 1,
                            f"it must leave room for {GROUP_ROOM} psample groups, one per port and direction"),
    "datagram_size": _IntRange(256, 65000, "bytes of one sFlow datagram"),
    "rcvbuf": _IntRange(65536, 2**31 - 1, "bytes; SO_RCVBUFFORCE takes a signed 32-bit int"),
})
_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "direction": get_args(Direction),
    "offload": get_args(Offload),
})
_DEFAULTS_TOP: Mapping[str, object] = MappingProxyType({
    "agent": None, "sub_agent_id": 0, "polling": 20, "group_base": 1000, "datagram_size": 1400,
    "expanded": False, "rcvbuf": 33554432, "keep_filters": False,
})
_PORT_SETTING_KEYS = tuple(PortSettings.__dataclass_fields__)
_PORT_KEYS = ("name", "match", *_PORT_SETTING_KEYS)
_TOP_KEYS = ("agent", "sub_agent_id", "targets", *_PORT_SETTING_KEYS, "polling", "group_base",
             "datagram_size", "expanded", "rcvbuf", "keep_filters", "ports")


class _Invalid(Exception):
    """A check failed; the checks do not know the file name, parse_config adds it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


# ------------------------------------------------------------------ YAML text -> Python values


def _yaml_document(text: str) -> object:
    """The one YAML document text holds, None when empty; _Invalid with line and column when broken."""
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()  # a second document is an error, not silently ignored
    except Exception as err:  # noqa: BLE001 - see _yaml_failure
        raise _yaml_failure(text, err) from None
    if node is None:
        return None
    _reject_duplicate_keys(node, "", set())
    try:
        return loader.construct_document(node)
    except Exception as err:  # noqa: BLE001
        raise _yaml_failure(text, err) from None


def _yaml_failure(text: str, err: Exception) -> _Invalid:
    """Any failure inside pyyaml means malformed text: besides YAMLError its constructors let
    ValueError, IndexError, KeyError and AttributeError escape for scalars like `!!int`, `!!bool x`,
    `!!timestamp x` or 2023-13-45, and its composer recurses once per nesting level."""
    if isinstance(err, yaml.MarkedYAMLError):
        return _Invalid("-", _marked_reason(err))
    if isinstance(err, yaml.reader.ReaderError):
        line, column = _line_column(text, err.position)
        return _Invalid("-", f"line {line}, column {column}: unacceptable character #x{err.character:04x}")
    if isinstance(err, RecursionError):
        return _Invalid("-", "invalid YAML: nested too deeply")
    return _Invalid("-", f"invalid YAML: {_first_line(str(err)) or type(err).__name__}")


def _marked_reason(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = ": ".join(part for part in (err.context, err.problem) if part) or "invalid YAML"
    return where + _first_line(what)


def _line_column(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _reject_duplicate_keys(node: yaml.Node, where: str, seen: set[int]) -> None:
    """YAML keeps the last of two equal keys without a word; a template that repeats one is a mistake."""
    if id(node) in seen:  # aliases share nodes: visit each once, which also stops cycles
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{where}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        first_lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            is_scalar = isinstance(key_node, yaml.ScalarNode)
            path = _join(where, _key_text(key_node.value) if is_scalar else "?")
            if is_scalar:
                ident, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if ident in first_lines:
                    raise _Invalid(path, f"given twice (lines {first_lines[ident]} and {line}); "
                                         "YAML would silently keep the last")
                first_lines[ident] = line
            _reject_duplicate_keys(value_node, path, seen)


# ------------------------------------------------------------------ small checks


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _key_text(key: object) -> str:
    """A key as it goes into a key path: as written when it is plain text."""
    text = str(key)
    return text if text.isprintable() and text else repr(key)


def _describe(value: object) -> str:
    """What a wrong value is, with the YAML reason when YAML's typing is the likely surprise."""
    if value is None:
        return "nothing (null or an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (YAML reads yes/no/on/off/true/false as booleans)"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = repr(value if len(value) <= 40 else value[:40] + "...")
        if re.fullmatch(r"\s*[-+]?[0-9][0-9_]*\s*", value, re.ASCII):
            return f"the string {shown} (a quoted number: remove the quotes)"
        return f"the string {shown}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _int(key: str, value: object, limits: _IntRange) -> int:
    why = f" ({limits.why})" if limits.why else ""
    # bool is an int in Python; in a config it is YAML's `yes`, never a number
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(key, f"must be an integer from {limits.lo} to {limits.hi}{why}, got {_describe(value)}")
    if not limits.lo <= value <= limits.hi:
        raise _Invalid(key, f"must be from {limits.lo} to {limits.hi}{why}, got {value}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(key, f"must be true or false, got {_describe(value)}")
    return value


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    hint = _suggestion(value, choices)
    raise _Invalid(key, f"must be one of {', '.join(choices)}, got {_describe(value)}{hint}")


def _suggestion(value: object, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), known, n=1) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


def _reject_unknown(mapping: dict, prefix: str, known: tuple[str, ...], misplaced: tuple[str, str]) -> None:
    """misplaced: the keys of the other level (top or port rule), and where they belong."""
    other_keys, other_place = misplaced
    for key in mapping:
        if isinstance(key, str) and key in known:
            continue
        if isinstance(key, str) and key in other_keys:  # a close match elsewhere would mislead here
            raise _Invalid(_join(prefix, key), f"unknown key here: it belongs {other_place}")
        hint = _suggestion(key, known) or f"; known keys: {', '.join(known)}"
        raise _Invalid(_join(prefix, _key_text(key)), f"unknown key{hint}")


def _non_empty_list(key: str, value: object, what: str) -> list:
    if not isinstance(value, list):
        raise _Invalid(key, f"must be a list of {what}, got {_describe(value)}")
    if not value:
        raise _Invalid(key, f"must list at least one of {what}")
    return value


def _text(key: str, value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, f"must be {what}, got {_describe(value)}")
    return value


def _is_ifname(text: str) -> bool:
    """What the kernel accepts as a device name (dev_valid_name)."""
    return (text.isprintable() and 0 < len(text.encode()) < IFNAMSIZ and text not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in text))


def _looks_like_ipv4(text: str) -> bool:
    return "." in text and re.fullmatch(r"[0-9.]+", text) is not None


# ------------------------------------------------------------------ keys


def _agent(value: object) -> str | None:
    if value is None:
        return None
    text = _text("agent", value, "an IP address or an interface name")
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if _looks_like_ipv4(text) or not _is_ifname(text):  # 192.0.2.300 is a typo, not an interface
        raise _Invalid("agent", f"{text!r} is neither an IP address nor an interface name "
                                "(1 to 15 characters, no '/', ':' or whitespace)")
    return text


def _target(key: str, value: object) -> Target:
    text = _text(key, value, 'a collector as "host:port" or "[IPv6]:port"')
    try:
        return _parse_target(text)
    except ValueError as err:
        raise _Invalid(key, f"{text!r}: {err}") from None


def _parse_target(text: str) -> Target:
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise ValueError(f"{address!r} in brackets is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        return Target(host, _port_number(rest[1:]) if rest else DEFAULT_COLLECTOR_PORT)
    if text.count(":") > 1:
        # "2001:db8::1:6343" is itself an address: only brackets say where the port starts
        raise ValueError("write an IPv6 address in brackets, as in [2001:db8::1]:6343")
    host, colon, port = text.partition(":")
    return Target(_host(host), _port_number(port) if colon else DEFAULT_COLLECTOR_PORT)


def _port_number(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", text, re.ASCII) is None or not 1 <= int(text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return int(text)


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII | re.IGNORECASE)


def _host(text: str) -> str:
    if not text:
        raise ValueError("the host is missing")
    if _looks_like_ipv4(text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError("not a valid IPv4 address") from None
    name = text.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError("not an IPv4 address nor a valid host name")
    return text.lower()  # DNS names are case-insensitive: lets duplicates be found


def _targets(value: object) -> tuple[Target, ...]:
    targets: list[Target] = []
    for index, item in enumerate(_non_empty_list("targets", value, 'collectors ("host:port")')):
        target = _target(f"targets[{index}]", item)
        if target in targets:  # the collector would receive and count every datagram twice
            raise _Invalid(f"targets[{index}]", f"{item!r} repeats targets[{targets.index(target)}]")
        targets.append(target)
    return tuple(targets)


def _port_settings(mapping: dict, prefix: str, base: PortSettings) -> PortSettings:
    """base with the setting keys mapping gives."""
    given: dict[str, object] = {}
    for name in _PORT_SETTING_KEYS:
        if name in mapping:
            key, value = _join(prefix, name), mapping[name]
            is_choice = name in _CHOICES
            given[name] = _choice(key, value, _CHOICES[name]) if is_choice else _int(key, value, _INT_RANGES[name])
    return replace(base, **given)


def _port_rule(key: str, value: object, defaults: PortSettings) -> PortRule:
    if not isinstance(value, dict):
        raise _Invalid(key, f"must be a mapping with `name` or `match`, got {_describe(value)}")
    _reject_unknown(value, key, _PORT_KEYS, (_TOP_KEYS, "at the top level, for all ports"))
    if ("name" in value) == ("match" in value):
        raise _Invalid(key, "needs exactly one of `name` (an interface) or `match` (a glob)")
    name = match = None
    if "name" in value:
        name = _text(f"{key}.name", value["name"], "an interface name")
        if not _is_ifname(name):
            raise _Invalid(f"{key}.name", f"{name!r} is not an interface name (1 to 15 characters, "
                                          "no '/', ':' or whitespace)")
    else:
        match = _text(f"{key}.match", value["match"], 'a glob such as "enp4s0f0_*"')
        if not match or not match.isprintable() or any(c == "/" or c.isspace() for c in match):
            raise _Invalid(f"{key}.match", f"{match!r} can match no interface name")
    return PortRule(name, match, _port_settings(value, key, defaults))


def _ports(value: object, defaults: PortSettings) -> tuple[PortRule, ...]:
    rules: list[PortRule] = []
    first: dict[tuple[str, str | None], int] = {}
    for index, item in enumerate(_non_empty_list("ports", value, "port rules")):
        rule = _port_rule(f"ports[{index}]", item, defaults)
        kind, text = ("name", rule.name) if rule.name is not None else ("match", rule.match)
        if (kind, text) in first:  # the second rule could never apply
            raise _Invalid(f"ports[{index}].{kind}", f"{text!r} is already given in ports[{first[kind, text]}]")
        first[kind, text] = index
        rules.append(rule)
    return tuple(rules)


def _check_datagram_size(config: Config) -> None:
    """A sample must fit an empty datagram, or it could never be sent."""
    headers = [("header", config.defaults.header)]
    headers += [(f"ports[{i}].header", rule.settings.header) for i, rule in enumerate(config.ports)]
    key, header = max(headers, key=lambda pair: pair[1])  # max keeps the first of equals: the one written
    if config.datagram_size < header + SAMPLE_ROOM:
        raise _Invalid("datagram_size", f"{config.datagram_size} cannot hold one sample of {key} {header}: "
                                        f"it must be at least {key} + {SAMPLE_ROOM} = {header + SAMPLE_ROOM}")


def _config(document: object, path: str) -> Config:
    if document is None:
        raise _Invalid("-", "the file is empty; it needs at least `targets` and `ports`")
    if not isinstance(document, dict):
        raise _Invalid("-", f"the top level must be a mapping of settings, got {_describe(document)}")
    _reject_unknown(document, "", _TOP_KEYS, (_PORT_KEYS, "in a rule under `ports`"))
    for required in ("targets", "ports"):
        if required not in document:
            raise _Invalid(required, "missing; it is required")
    top = {**_DEFAULTS_TOP, **document}

    def number(name: str) -> int:
        return _int(name, top[name], _INT_RANGES[name])

    defaults = _port_settings(document, "", DEFAULT_SETTINGS)
    config = Config(
        path=path,
        agent=_agent(top["agent"]),
        sub_agent_id=number("sub_agent_id"),
        targets=_targets(document["targets"]),
        polling=number("polling"),
        defaults=defaults,
        group_base=number("group_base"),
        datagram_size=number("datagram_size"),
        expanded=_bool("expanded", top["expanded"]),
        rcvbuf=number("rcvbuf"),
        keep_filters=_bool("keep_filters", top["keep_filters"]),
        ports=_ports(document["ports"], defaults),
    )
    _check_datagram_size(config)
    return config


# ------------------------------------------------------------------ entry points


def parse_config(text: str, path: str = "<string>") -> Config:
    """The Config text describes; ConfigError for anything else, never another exception."""
    try:
        return _config(_yaml_document(text), path)
    except _Invalid as err:
        raise ConfigError(path, err.key, err.reason) from None


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ConfigError(path, "-", f"cannot read the file: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as err:
        raise ConfigError(path, "-", f"not UTF-8 text (bad byte at offset {err.start})") from None
    return parse_config(text, path)
