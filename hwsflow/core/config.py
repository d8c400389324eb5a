"""The YAML config file: parsed strictly into frozen dataclasses.

Pure: only load_config touches the file system; collector names and the agent
interface are resolved later by the agent.  The file is usually rendered by
Ansible, so every mistake a template can make (a typo in a key, a quoted number,
YAML's `yes`, a key given twice) is an error naming the file and the key path,
never something silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

import yaml

from hwsflow.core.backoff import DEFAULT_BUDGET, DEFAULT_HOLD
from hwsflow.core.model import (
    DEFAULT_CONTROL_SOCKET, DIRECTION_CHOICES, GROUP_MAX, GROUP_MIN, GROUP_ROOM, HEADER_MAX, HEADER_MIN, OFFLOADS,
    U32_MAX, DirectionChoice, LinkInfo, Offload, PortSelector, is_ifname,
)
from hwsflow.core.model import DEFAULT_OVSDB_SOCKET as DEFAULT_OVSDB
from hwsflow.wire.sflow import LARGEST_SAMPLE_ROOM

DEFAULT_COLLECTOR_PORT = 6343  # sFlow's IANA port
# datagram header + flow sample + every record that may come with it, beyond the sampled header bytes
SAMPLE_ROOM = LARGEST_SAMPLE_ROOM
MAX_SWITCH_ID = 32  # bytes: the kernel's MAX_PHYS_ITEM_ID_LEN
SUN_PATH = 108  # bytes of sockaddr_un.sun_path, NUL included
# bytes of a config file: tens of thousands of port rules fit, and parsing stays within seconds (3-4 s a MiB)
MAX_FILE = 1 << 20
MAX_BUDGET = 1_000_000_000  # samples/s: far beyond any host, a bound that catches a misplaced unit


class ConfigError(Exception):
    """A config file that cannot be used.

    key and reason are its first problem, and str() is "path: key: reason", one line; problems holds
    every problem found, each (key path, reason), in file order, and lines() gives one line each.
    """

    def __init__(self, path: str, key: str, reason: str, problems: tuple[tuple[str, str], ...] = ()) -> None:
        problems = problems or ((key, reason),)
        super().__init__(path, key, reason, problems)  # all of them in args, so the error pickles
        self.path = path
        self.key = key
        self.reason = reason
        self.problems = problems

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"

    def lines(self) -> list[str]:
        return [f"{self.path}: {key}: {reason}" for key, reason in self.problems]


@dataclass(frozen=True)
class Target:
    """One collector; host is an IP address or a name the agent resolves at start."""

    host: str
    port: int


@dataclass(frozen=True)
class PortSettings:
    sampling: int
    header: int
    direction: DirectionChoice
    offload: Offload
    priority: int
    chain: int
    # `sampling: auto`: the rate comes from the link's speed (core.sampling); sampling is then the
    # default for a link that reports none
    sampling_auto: bool = False
    # the port's own budget for back-off, samples/s per filter (direction); None: only the agent's applies
    max_samples_per_s: int | None = None


@dataclass(frozen=True)
class PortRule(PortSelector):
    """Selects ports by the selectors it gives (at least one), all of which must match.

    name and match exclude each other.  With group set the rule is receive-only: hwsflow installs
    no filter, it attributes the samples others' rules send to that psample group to the port name.
    """

    group: int | None  # receive-only: the fixed psample group of samples that rules installed by others produce
    settings: PortSettings

    @property
    def receive_only(self) -> bool:
        return self.group is not None


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
    control_socket: str
    ports: tuple[PortRule, ...]
    metrics: Target | None = None  # where the Prometheus endpoint listens; None: no endpoint, no listening socket
    ovsdb: str | None = DEFAULT_OVSDB  # Open vSwitch's database socket; None: Open vSwitch is not read
    max_samples_per_s: int = DEFAULT_BUDGET  # back-off's budget for the whole agent; 0 turns back-off off
    backoff_hold: int = DEFAULT_HOLD  # s under half the budget before a backed-off rate steps back

    def bridge_rules(self) -> dict[str, str]:
        """Each bridge `bridge:` rules name, with the first rule naming it as the log names rules ("ports[2]")."""
        bridges: dict[str, str] = {}
        for index, rule in enumerate(self.ports):
            if rule.bridge is not None:
                bridges.setdefault(rule.bridge, f"ports[{index}]")
        return bridges

    def rule_for(self, link: LinkInfo) -> PortRule | None:
        """A selecting rule that names the port wins wherever it is; otherwise the first selecting rule."""
        named = (rule for rule in self.ports if rule.name == link.ifname and rule.selects(link))
        return next(named, None) or next((rule for rule in self.ports if rule.selects(link)), None)

    def settings_for(self, ifname: str) -> PortSettings | None:
        """The settings of the rule for a port known only by name (switchdev selectors never match it)."""
        rule = self.rule_for(LinkInfo(ifname))
        return rule.settings if rule is not None else None

    def named_ports(self) -> tuple[str, ...]:
        """The interface names rules give, each once, in file order: the ports expected to exist."""
        return tuple(dict.fromkeys(rule.name for rule in self.ports if rule.name is not None))


# Top-level keys whose change a reload cannot apply port by port: the agent rebuilds what depends on them.
GLOBAL_KEYS = ("agent", "sub_agent_id", "targets", "group_base", "datagram_size", "expanded", "rcvbuf",
               "control_socket", "polling", "keep_filters", "metrics", "ovsdb",
               "max_samples_per_s", "backoff_hold")


def global_changes(old: Config, new: Config) -> list[str]:
    """The GLOBAL_KEYS whose values differ between old and new, in GLOBAL_KEYS order."""
    return [key for key in GLOBAL_KEYS if getattr(old, key) != getattr(new, key)]


DEFAULT_SETTINGS = PortSettings(sampling=400, header=128, direction="ingress", offload="auto", priority=1, chain=0)


@dataclass(frozen=True)
class _IntRange:
    lo: int
    hi: int
    why: str = ""


_INT_RANGES: Mapping[str, _IntRange] = MappingProxyType({
    "sub_agent_id": _IntRange(0, U32_MAX),
    "sampling": _IntRange(1, U32_MAX),
    "header": _IntRange(HEADER_MIN, HEADER_MAX, "bytes of each sampled packet; 14 is one Ethernet header"),
    "polling": _IntRange(0, 3600, "seconds; 0 turns counter polling off"),
    "priority": _IntRange(1, 65535, "a tc filter priority"),
    "chain": _IntRange(0, U32_MAX),
    "group_base": _IntRange(GROUP_MIN, GROUP_MAX - GROUP_ROOM + 1,
                            f"it must leave room for {GROUP_ROOM} psample groups, one per port and direction"),
    "datagram_size": _IntRange(256, 65000, "bytes of one sFlow datagram"),
    "rcvbuf": _IntRange(65536, 2**31 - 1, "bytes; SO_RCVBUFFORCE takes a signed 32-bit int"),
    "group": _IntRange(GROUP_MIN, GROUP_MAX, "a psample group id"),
    "max_samples_per_s": _IntRange(0, MAX_BUDGET, "samples per second the agent takes before it backs sampling "
                                                  "off; 0 turns back-off off"),
    "backoff_hold": _IntRange(1, 3600, "seconds the load must stay under half the budget before a backed-off "
                                       "rate steps back"),
})
# a rule's own max_samples_per_s: per filter of the port; 0 would never let it sample
_PORT_BUDGET = _IntRange(1, MAX_BUDGET, "samples per second each filter of this port may send before its rate "
                                        "backs off")
_CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "direction": DIRECTION_CHOICES,
    "offload": OFFLOADS,
})
_DEFAULTS_TOP: Mapping[str, object] = MappingProxyType({
    "agent": None, "sub_agent_id": 0, "polling": 20, "group_base": 1000, "datagram_size": 1400,
    "expanded": False, "rcvbuf": 33554432, "keep_filters": False, "control_socket": DEFAULT_CONTROL_SOCKET,
    "metrics": None, "ovsdb": DEFAULT_OVSDB,
    "max_samples_per_s": DEFAULT_BUDGET, "backoff_hold": DEFAULT_HOLD,
})
# keys a rule sets and the top level passes down; max_samples_per_s is a rule's own (at the top it is the agent's)
_PORT_SETTING_KEYS = tuple(name for name in PortSettings.__dataclass_fields__
                           if name not in ("sampling_auto", "max_samples_per_s"))
SAMPLING_AUTO = "auto"
_SELECTOR_KEYS = ("name", "match", "switch_id", "port_name", "bridge")
_PORT_KEYS = (*_SELECTOR_KEYS, "tunnels", "group", *_PORT_SETTING_KEYS, "max_samples_per_s")
_TOP_KEYS = ("agent", "sub_agent_id", "targets", *_PORT_SETTING_KEYS, "polling", "group_base",
             "datagram_size", "expanded", "rcvbuf", "keep_filters", "control_socket", "metrics", "ovsdb",
             "max_samples_per_s", "backoff_hold", "ports")
# Open vSwitch's limit for a bridge name is the kernel's for an interface: the bridge is also its internal port
_BRIDGE_WHAT = "an Open vSwitch bridge name, as `ovs-vsctl list-br` shows it"
# what a receive-only rule cannot use: they shape the filter hwsflow does not install for it
_FILTER_ONLY_KEYS = ("offload", "priority", "chain", "max_samples_per_s")


# characters of a value or of YAML's own complaint an error repeats: enough to recognise it, never a flood
_QUOTE_MAX = 60
_REASON_MAX = 160


class _Invalid(Exception):
    """A check failed; the checks do not know the file name, parse_config adds it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


class _Problems:
    """Every problem found in one file: each check that fails is noted and the others still run."""

    def __init__(self) -> None:
        self.found: list[_Invalid] = []

    def check(self, check: Callable[..., _T], *args: object) -> _T | None:
        """check(*args), or None when it failed (noted)."""
        try:
            return check(*args)
        except _Invalid as err:
            self.found.append(err)
            return None


_T = TypeVar("_T")


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
    except Exception as err:  # noqa: BLE001 - see _yaml_failure
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
    line = text.strip().splitlines()[0] if text.strip() else text
    return _cut(line, _REASON_MAX)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _quoted(text: str) -> str:
    """How an error quotes a string from the file: escaped, and cut so a huge value cannot flood the line."""
    quoted = repr(_cut(text, _QUOTE_MAX))
    # escapes (\U0001342f is ten characters for one) can still make it long: cut the escaped form too
    return quoted if len(quoted) <= 2 * _QUOTE_MAX else quoted[:2 * _QUOTE_MAX] + "..."


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
    return _cut(text, _QUOTE_MAX) if text.isprintable() and text else _quoted(text)


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
        shown = _quoted(value)
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


def _sampling(key: str, value: object) -> int | str:
    """1-in-N, or auto (the rate from the link's speed)."""
    if value == SAMPLING_AUTO:
        return SAMPLING_AUTO
    limits = _INT_RANGES["sampling"]
    if isinstance(value, str):
        raise _Invalid(key, f"must be an integer from {limits.lo} to {limits.hi} or {SAMPLING_AUTO} "
                            f"(the rate from the link speed), got {_describe(value)}")
    return _int(key, value, limits)


def _sampling_given(checked: int | str | None) -> dict[str, object]:
    """The PortSettings fields a valid sampling value sets: a number replaces an inherited auto; auto
    keeps the inherited number as the default for links that report no speed."""
    if checked is None:
        return {}
    if checked == SAMPLING_AUTO:
        return {"sampling_auto": True}
    return {"sampling": checked, "sampling_auto": False}


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


def _reject_unknown(problems: _Problems, mapping: dict[str, Any], prefix: str, known: tuple[str, ...],
                    misplaced: tuple[str, str]) -> None:
    """Each unknown key is a problem; misplaced: the keys of the other level (top or port rule), and where
    they belong."""
    other_keys, other_place = misplaced
    for key in mapping:
        if isinstance(key, str) and key in known:
            continue
        if isinstance(key, str) and key in other_keys:  # a close match elsewhere would mislead here
            problems.found.append(_Invalid(_join(prefix, key), f"unknown key here: it belongs {other_place}"))
            continue
        hint = _suggestion(key, known) or f"; known keys: {', '.join(known)}"
        problems.found.append(_Invalid(_join(prefix, _key_text(key)), f"unknown key{hint}"))


def _non_empty_list(key: str, value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(key, f"must be a list of {what}, got {_describe(value)}")
    if not value:
        raise _Invalid(key, f"must list at least one of {what}")
    return value


def _text(key: str, value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(key, f"must be {what}, got {_describe(value)}")
    return value


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
    if _looks_like_ipv4(text) or not is_ifname(text):  # 192.0.2.300 is a typo, not an interface
        raise _Invalid("agent", f"{_quoted(text)} is neither an IP address nor an interface name "
                                "(1 to 15 characters, no '/', ':' or whitespace)")
    return text


def _target(key: str, value: object) -> Target:
    text = _text(key, value, 'a collector as "host:port" or "[IPv6]:port"')
    try:
        return _parse_target(text)
    except ValueError as err:
        raise _Invalid(key, f"{_quoted(text)}: {err}") from None


def _parse_target(text: str) -> Target:
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise ValueError(f"{_quoted(address)} in brackets is not an IPv6 address") from None
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


def _targets(problems: _Problems, value: object) -> tuple[Target, ...] | None:
    items = problems.check(_non_empty_list, "targets", value, 'collectors ("host:port")')
    if items is None:
        return None
    targets: dict[Target, int] = {}  # each with its index in the file
    count = len(problems.found)
    for index, item in enumerate(items):
        target = problems.check(_target, f"targets[{index}]", item)
        if target is None:
            continue
        if target in targets:  # the collector would receive and count every datagram twice
            problems.found.append(_Invalid(f"targets[{index}]", f"{_quoted(item)} repeats targets[{targets[target]}]"))
            continue
        targets[target] = index
    return tuple(targets) if len(problems.found) == count else None


def _port_settings(problems: _Problems, mapping: dict[str, Any], prefix: str, base: PortSettings) -> PortSettings:
    """base with the setting keys mapping gives (those that are valid: the others are problems noted)."""
    given: dict[str, object] = {}
    for name in _PORT_SETTING_KEYS:
        if name in mapping:
            key, value = _join(prefix, name), mapping[name]
            if name == "sampling":
                given.update(_sampling_given(problems.check(_sampling, key, value)))
                continue
            checked: object
            if name in _CHOICES:
                checked = problems.check(_choice, key, value, _CHOICES[name])
            else:
                checked = problems.check(_int, key, value, _INT_RANGES[name])
            if checked is not None:
                given[name] = checked
    return replace(base, **given)


def _ifname(key: str, value: object) -> str:
    name = _text(key, value, "an interface name")
    if not is_ifname(name):
        raise _Invalid(key, f"{_quoted(name)} is not an interface name (1 to 15 characters, no '/', ':' or whitespace)")
    return name


def _glob(key: str, value: object, example: str, what: str) -> str:
    text = _text(key, value, f'a glob such as "{example}"')
    if not text or not text.isprintable() or any(c == "/" or c.isspace() for c in text):
        raise _Invalid(key, f"{_quoted(text)} can match no {what}")
    return text


_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})+", re.ASCII)


def _switch_id(key: str, value: object) -> str:
    """Lowercase hex without separators, as sysfs shows it; ':' between bytes is accepted (as ip -d link shows)."""
    if not isinstance(value, str):
        # YAML reads 0015401234 as an octal number and 12:34:56 as a base-60 one
        why = " (YAML reads unquoted digits as a number: quote the id)" if isinstance(value, int) else ""
        raise _Invalid(key, "must be a quoted string of hex digits, as /sys/class/net/PORT/phys_switch_id shows, "
                            f"got {_describe(value)}{why}")
    parts = value.lower().split(":")
    digits = "".join(parts)
    if (len(parts) > 1 and any(len(part) != 2 for part in parts)) or not _HEX_BYTES.fullmatch(digits):
        raise _Invalid(key, f"{_quoted(value)} is not a switch id: pairs of hex digits as /sys/class/net/PORT/"
                            "phys_switch_id shows them, such as '00154d1234' (or '00:15:4d:12:34')")
    if len(digits) // 2 > MAX_SWITCH_ID:
        raise _Invalid(key, f"{_quoted(value)} is {len(digits) // 2} bytes long; a switch id has at most {MAX_SWITCH_ID}")
    return digits


def _bridge(key: str, value: object) -> str:
    name = _text(key, value, _BRIDGE_WHAT)
    if not is_ifname(name):
        raise _Invalid(key, f"{_quoted(name)} is not a bridge name (1 to 15 characters, no '/', ':' or whitespace)")
    return name


def _tunnels(key: str, rule: dict[str, Any]) -> bool:
    tunnels = _bool(f"{key}.tunnels", rule["tunnels"])
    if "bridge" not in rule:
        raise _Invalid(f"{key}.tunnels", "applies to `bridge` rules only: whether that bridge's tunnel ports are "
                                         "sampled too")
    return tunnels


def _ovsdb(value: object) -> str | None:
    """The path of Open vSwitch's database socket; null: Open vSwitch is not read at all."""
    if value is None:
        return None
    key = "ovsdb"
    path = _text(key, value, f"the path of Open vSwitch's database socket, such as {DEFAULT_OVSDB}, or null")
    path = path.removeprefix("unix:")  # as ovs-vsctl --db= writes it
    if not path.startswith("/") or not path.isprintable():
        raise _Invalid(key, f"{_quoted(path)} is not an absolute path to a Unix socket, such as {DEFAULT_OVSDB}")
    size = len(path.encode(errors="surrogatepass"))
    if size >= SUN_PATH:
        raise _Invalid(key, f"is {size} bytes long; a Unix socket path holds at most {SUN_PATH - 1}")
    return path


def _receive_only(problems: _Problems, key: str, rule: dict[str, Any]) -> int | None:
    """The group of a receive-only rule, once its other keys are known to fit one."""
    count = len(problems.found)
    group = problems.check(_int, f"{key}.group", rule["group"], _INT_RANGES["group"])
    if "name" not in rule:
        problems.found.append(_Invalid(f"{key}.group", "a receive-only group needs `name`: its samples are "
                                                       "attributed to that one port"))
    for selector in _SELECTOR_KEYS:
        if selector != "name" and selector in rule:
            problems.found.append(_Invalid(f"{key}.{selector}", "cannot be combined with `group`: a receive-only "
                                                                "group belongs to the one port `name` gives"))
    for setting in _FILTER_ONLY_KEYS:
        if setting in rule:
            problems.found.append(_Invalid(f"{key}.{setting}", "has no effect for a receive-only group: hwsflow "
                                                               "installs no filter for it"))
    if rule.get("direction") == "both":
        problems.found.append(_Invalid(f"{key}.direction", "must be ingress or egress for a receive-only group "
                                                           "(one group's samples come from one direction), got "
                                                           "the string 'both'"))
    return group if len(problems.found) == count else None


def _port_rule(problems: _Problems, key: str, value: object, defaults: PortSettings) -> PortRule | None:
    """The rule value describes, or None when it has problems (each one noted)."""
    if not isinstance(value, dict):
        problems.found.append(_Invalid(key, f"must be a mapping with `name`, `match`, `switch_id`, `port_name` or "
                                            f"`bridge`, got {_describe(value)}"))
        return None
    count = len(problems.found)
    _reject_unknown(problems, value, key, _PORT_KEYS, (_TOP_KEYS, "at the top level, for all ports"))
    if not any(selector in value for selector in _SELECTOR_KEYS):
        problems.found.append(_Invalid(key, "needs at least one of `name` (an interface), `match` (a glob over "
                                            "interface names), `switch_id`, `port_name` or `bridge` (an Open "
                                            "vSwitch bridge) to select ports"))
    if "name" in value and "match" in value:
        problems.found.append(_Invalid(key, "`name` and `match` exclude each other: give one of them"))

    def given(selector: str, check: Callable[[str, object], str]) -> str | None:
        return problems.check(check, f"{key}.{selector}", value[selector]) if selector in value else None

    name = given("name", _ifname)
    match = given("match", lambda k, v: _glob(k, v, "enp4s0f0_*", "interface name"))
    switch_id = given("switch_id", _switch_id)
    port_name = given("port_name", lambda k, v: _glob(k, v, "pf0vf*", "port name"))
    bridge = given("bridge", _bridge)
    tunnels = problems.check(_tunnels, key, value) if "tunnels" in value else False
    group = _receive_only(problems, key, value) if "group" in value else None
    # the top-level direction describes hwsflow's own filters; samples from others' rules are
    # ingress samples unless the rule says otherwise
    base = replace(defaults, direction="ingress") if "group" in value else defaults
    settings = _port_settings(problems, value, key, base)
    if "max_samples_per_s" in value and "group" not in value:
        budget = problems.check(_int, f"{key}.max_samples_per_s", value["max_samples_per_s"], _PORT_BUDGET)
        settings = replace(settings, max_samples_per_s=budget)
    if len(problems.found) > count:
        return None
    return PortRule(name, match, switch_id, port_name, group, settings, bridge=bridge, tunnels=bool(tunnels))


def _ports(problems: _Problems, value: object, defaults: PortSettings) -> tuple[tuple[int, PortRule], ...] | None:
    """The rules with their index in the file; None when the list itself is wrong.  A rule with problems is
    left out (its problems noted), the others are still checked against each other."""
    items = problems.check(_non_empty_list, "ports", value, "port rules")
    if items is None:
        return None
    rules: list[tuple[int, PortRule]] = []
    first: dict[tuple[tuple[str, object], ...], int] = {}
    for index, item in enumerate(items):
        rule = _port_rule(problems, f"ports[{index}]", item, defaults)
        if rule is None:
            continue
        selectors = tuple((s, getattr(rule, s)) for s in _SELECTOR_KEYS if getattr(rule, s) is not None)
        selectors += (("tunnels", True),) if rule.tunnels else ()  # another choice of the bridge's ports
        if selectors in first:  # the second rule could never apply
            problems.found.append(_repeated_selectors(f"ports[{index}]", selectors, first[selectors]))
            continue
        first[selectors] = index
        rules.append((index, rule))
    return tuple(rules)


def _repeated_selectors(key: str, selectors: tuple[tuple[str, object], ...], earlier: int) -> _Invalid:
    if len(selectors) == 1:
        (selector, text), = selectors
        return _Invalid(f"{key}.{selector}", f"{_quoted(str(text))} is already given in ports[{earlier}]")
    given = " and ".join(f"{selector} {_quoted(str(text))}" for selector, text in selectors)
    return _Invalid(key, f"{given} are already given together in ports[{earlier}]")


def _check_groups(problems: _Problems, group_base: int, rules: tuple[tuple[int, PortRule], ...]) -> None:
    """Receive-only groups stay clear of hwsflow's own groups and of each other: a group maps to one port."""
    own = range(group_base, group_base + GROUP_ROOM)
    owners: dict[int, int] = {}
    for index, rule in rules:
        if rule.group is None:
            continue
        key = f"ports[{index}].group"
        if rule.group in own:
            problems.found.append(_Invalid(key, f"{rule.group} is among hwsflow's own psample groups ({own.start} "
                                                f"to {own[-1]}, from group_base): choose a group outside them, or "
                                                "move group_base"))
        elif rule.group in owners:
            problems.found.append(_Invalid(key, f"{rule.group} is already the group of ports[{owners[rule.group]}]; "
                                                "one group's samples can be attributed to one port only"))
        else:
            owners[rule.group] = index


def _control_socket(value: object) -> str:
    key = "control_socket"
    path = _text(key, value, "an absolute path")
    if not path.isprintable():
        raise _Invalid(key, f"{_quoted(path)} contains a control character (NUL, newline, ...)")
    if not path.startswith("/"):
        raise _Invalid(key, f"{_quoted(path)} is not an absolute path (it must start with '/')")
    if path.endswith("/"):
        raise _Invalid(key, f"{_quoted(path)} names a directory; give the socket's own path, such as "
                            "/run/hwsflow/control.sock")
    size = len(path.encode(errors="surrogatepass"))
    if size >= SUN_PATH:
        raise _Invalid(key, f"is {size} bytes long; a Unix socket path holds at most {SUN_PATH - 1}")
    return path


def _metrics(value: object) -> Target | None:
    """The endpoint's address: an IP literal (a listener is never chosen by DNS) and an explicit port."""
    if value is None:
        return None
    key = "metrics"
    text = _text(key, value, 'an address to serve Prometheus metrics on, as "127.0.0.1:9465" or "[::1]:9465"')
    example = 'as in "127.0.0.1:9465" or "[::1]:9465"'
    try:
        target = _parse_target(text)
    except ValueError as err:
        raise _Invalid(key, f"{_quoted(text)}: {err}") from None
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        raise _Invalid(key, f"{_quoted(text)}: the host must be an IP address, {example}") from None
    if not re.search(r":[0-9]+$", text):  # the collectors' default port is no default for a listener
        raise _Invalid(key, f"{_quoted(text)}: give the port, {example}")
    return target


def _check_datagram_size(datagram_size: int, headers: list[tuple[str, int]]) -> None:
    """A sample must fit an empty datagram, or it could never be sent.  headers: (key, header) of the
    defaults and of each rule."""
    key, header = max(headers, key=lambda pair: pair[1])  # max keeps the first of equals: the one written
    padded = (header + 3) & ~3  # sFlow pads the header bytes to 4
    if datagram_size < padded + SAMPLE_ROOM:
        term = key if padded == header else f"{key} padded to {padded}"
        raise _Invalid("datagram_size", f"{datagram_size} cannot hold one sample of {key} {header}: "
                                        f"it must be at least {term} + {SAMPLE_ROOM} = {padded + SAMPLE_ROOM}")


def _config(document: object, path: str) -> Config:
    """The Config document describes; _Invalid for a document that is not a mapping, _Problems.Found
    with every problem of one that is."""
    if document is None:
        raise _Invalid("-", "the file is empty; it needs at least `targets` and `ports`")
    if not isinstance(document, dict):
        raise _Invalid("-", f"the top level must be a mapping of settings, got {_describe(document)}")
    problems = _Problems()
    _reject_unknown(problems, document, "", _TOP_KEYS, (_PORT_KEYS, "in a rule under `ports`"))
    for required in ("targets", "ports"):
        if required not in document:
            problems.found.append(_Invalid(required, "missing; it is required"))
    top = {**_DEFAULTS_TOP, **document}

    def number(name: str) -> int | None:
        return problems.check(_int, name, top[name], _INT_RANGES[name])

    defaults = _port_settings(problems, document, "", DEFAULT_SETTINGS)
    agent = problems.check(_agent, top["agent"])  # None is also "not given": elect the best address
    sub_agent_id = number("sub_agent_id")
    targets = _targets(problems, document["targets"]) if "targets" in document else None
    polling = number("polling")
    group_base = number("group_base")
    datagram_size = number("datagram_size")
    expanded = problems.check(_bool, "expanded", top["expanded"])
    rcvbuf = number("rcvbuf")
    keep_filters = problems.check(_bool, "keep_filters", top["keep_filters"])
    control_socket = problems.check(_control_socket, top["control_socket"])
    rules = _ports(problems, document["ports"], defaults) if "ports" in document else None
    metrics = problems.check(_metrics, top["metrics"])  # None is also "not given": no endpoint
    ovsdb = problems.check(_ovsdb, top["ovsdb"]) if top["ovsdb"] is not None else None
    if ovsdb is None and top["ovsdb"] is None and rules and any(rule.bridge is not None for _, rule in rules):
        problems.found.append(_Invalid("ovsdb", "is null, but `bridge` rules read Open vSwitch's database: give "
                                                f"its socket (the default is {DEFAULT_OVSDB})"))
    max_samples_per_s = number("max_samples_per_s")
    backoff_hold = number("backoff_hold")
    # the checks across keys, where the keys they read are valid
    if datagram_size is not None and rules is not None and "header" not in _keys(problems):
        headers = [("header", defaults.header)] + [(f"ports[{i}].header", r.settings.header) for i, r in rules]
        problems.check(_check_datagram_size, datagram_size, headers)
    if group_base is not None and rules is not None:
        _check_groups(problems, group_base, rules)
    if problems.found:
        raise _Found(problems.found)
    return Config(
        path=path, agent=agent, sub_agent_id=_present(sub_agent_id), targets=_present(targets),
        polling=_present(polling), defaults=defaults, group_base=_present(group_base),
        datagram_size=_present(datagram_size), expanded=_present(expanded), rcvbuf=_present(rcvbuf),
        keep_filters=_present(keep_filters), control_socket=_present(control_socket),
        ports=tuple(rule for _, rule in _present(rules)), metrics=metrics, ovsdb=ovsdb,
        max_samples_per_s=_present(max_samples_per_s), backoff_hold=_present(backoff_hold),
    )


def _present(value: _T | None) -> _T:
    """A value checked without a problem: only a failed check gives None."""
    assert value is not None
    return value


def _keys(problems: _Problems) -> set[str]:
    return {err.key for err in problems.found}


class _Found(Exception):
    """Every problem of a file that is a mapping."""

    def __init__(self, found: list[_Invalid]) -> None:
        super().__init__(found)
        self.found = found


# ------------------------------------------------------------------ entry points


def parse_config(text: str, path: str = "<string>") -> Config:
    """The Config text describes; ConfigError for anything else, never another exception."""
    try:
        return _config(_yaml_document(text), path)
    except _Invalid as err:
        raise ConfigError(path, err.key, err.reason) from None
    except _Found as found:
        first = found.found[0]
        raise ConfigError(path, first.key, first.reason, tuple((e.key, e.reason) for e in found.found)) from None


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE + 1)  # bounded: a path to /dev/zero or a huge log must not eat the memory
    except OSError as err:
        raise ConfigError(path, "-", f"cannot read the file: {err.strerror or err}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(path, "-", f"larger than {MAX_FILE} bytes, far beyond any hwsflow config: is this the "
                                     "right file?")
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as err:
        raise ConfigError(path, "-", f"not UTF-8 text (bad byte at offset {err.start})") from None
    return parse_config(text, path)
