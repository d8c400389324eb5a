"""Command line: `hwsflow run`, `check-config`, `enable`, `disable`, `status`, `decode`, `bench`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hwsflow import __version__
from hwsflow.core.model import DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET
from hwsflow.core.model import DIRECTION_CHOICES, HEADER_MAX, HEADER_MIN, U32_MAX

if TYPE_CHECKING:
    from hwsflow.core.config import Config
    from hwsflow.core.control import Request

EXIT_CONFIG = 2  # config errors: nothing was touched
EXIT_NOT_RUNNING = 3  # the control commands found no agent


def _ranged(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwsflow", description="sFlow v5 agent fed by tc sample and psample")
    parser.add_argument("--version", action="version", version=f"hwsflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", default="/etc/hwsflow/hwsflow.yaml", help="YAML config file")
    run.add_argument("--debug", action="store_true", help="log debug messages")

    check = sub.add_parser("check-config", help="validate a config file without touching the system")
    check.add_argument("file")

    def control(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help)
        cmd.add_argument("--socket", default=DEFAULT_SOCKET, help=f"the agent's control socket ({DEFAULT_SOCKET})")
        return cmd

    enable = control("enable", "sample a port now (a runtime change: the config file wins at reload)")
    enable.add_argument("port")
    enable.add_argument("--rate", type=_ranged(1, U32_MAX), required=True, help="sample 1 packet in RATE")
    enable.add_argument("--direction", choices=DIRECTION_CHOICES)
    enable.add_argument("--header", type=_ranged(HEADER_MIN, HEADER_MAX), help="bytes of each sampled packet to export")
    disable = control("disable", "stop sampling a port and remove its filter (until reload)")
    disable.add_argument("port")
    status = control("status", "what the running agent samples, sends and loses")
    status.add_argument("--json", action="store_true", help="the same as one JSON object")

    decode = sub.add_parser("decode", help="print sFlow datagrams arriving on a UDP port or stored in a pcap")
    source = decode.add_mutually_exclusive_group(required=True)
    source.add_argument("--port", type=int, help="UDP port to listen on (all addresses)")
    source.add_argument("--pcap", help="pcap file to read")
    decode.add_argument("--filter-port", type=int, help="with --pcap: only this UDP port")
    decode.add_argument("--count", type=int, help="stop after this many datagrams")
    decode.add_argument("--json", action="store_true", help="one JSON object per datagram")

    bench = sub.add_parser("bench", help="measure the receive path with replayed psample messages (root)")
    bench.add_argument("--runs", type=int, default=5, help="full-speed runs; the median is reported")
    bench.add_argument("--samples", type=int, default=200_000, help="samples per full-speed run")
    bench.add_argument("--offered", type=int, default=400_000, help="samples/s of the paced run")
    bench.add_argument("--duration", type=float, default=5.0, help="seconds of the paced run")
    bench.add_argument("--json", action="store_true", help="the figures as one JSON object")
    return parser


def _load_config(path: str) -> Config | None:
    from hwsflow.core.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as err:
        for line in err.lines():  # every problem of the file, so that one edit can fix them all
            print(f"hwsflow: config error: {line}", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(message)s",  # journald adds the time and the unit
        stream=sys.stderr,
    )
    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    import uvloop

    from hwsflow.daemon.agent import Agent, AgentError

    try:
        uvloop.run(Agent(config).run())
    except AgentError as err:
        logging.getLogger("hwsflow").error("%s", err)
        return 1
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_config(args.file)
    if config is None:
        return EXIT_CONFIG
    print(f"{args.file}: ok ({len(config.ports)} port rules, {len(config.targets)} collectors)")
    return 0


def _control(args: argparse.Namespace, request: Request) -> dict[str, Any] | None:
    """The agent's reply to request, or None after saying in one line why there is none."""
    from hwsflow.linux.control_socket import NotRunning, request as send
    from hwsflow.core.control import RequestError

    try:
        return send(args.socket, request)
    except NotRunning as err:
        print(f"hwsflow: {err}", file=sys.stderr)
    except (RequestError, OSError) as err:
        print(f"hwsflow: {args.socket}: {err}", file=sys.stderr)
    return None


def _cmd_enable(args: argparse.Namespace) -> int:
    from hwsflow.core.control import Enable
    return _answer(args, Enable(args.port, args.rate, args.direction, args.header))


def _cmd_disable(args: argparse.Namespace) -> int:
    from hwsflow.core.control import Disable
    return _answer(args, Disable(args.port))


def _answer(args: argparse.Namespace, request: Request) -> int:
    reply = _control(args, request)
    if reply is None:
        return EXIT_NOT_RUNNING
    if not reply["ok"]:
        print(f"hwsflow: {reply.get('error')}", file=sys.stderr)
        return 1
    print(reply.get("message", "ok"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from hwsflow.core.control import Status
    from hwsflow.core.status import render

    reply = _control(args, Status())
    if reply is None:
        return EXIT_NOT_RUNNING
    if not reply["ok"]:
        print(f"hwsflow: {reply.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(reply["status"], indent=1) if args.json else render(reply["status"]), end="\n" if args.json else "")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from hwsflow.tools.decode import run_decode

    port = args.port if args.port is not None else args.filter_port
    return run_decode(port=port, pcap=args.pcap, count=args.count, json_out=args.json, out=sys.stdout)


def _cmd_bench(args: argparse.Namespace) -> int:
    from hwsflow.tools.bench import Options, run_bench

    options = Options(runs=args.runs, samples=args.samples, offered=args.offered, duration=args.duration)
    return run_bench(options, args.json)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "check-config": _cmd_check_config, "enable": _cmd_enable, "disable": _cmd_disable,
                "status": _cmd_status, "decode": _cmd_decode, "bench": _cmd_bench}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hwsflow status | head`: the reader had enough
        sys.stderr.close()
        return 0
