"""
The ``p2a-connector`` command line, for operations staff.

Exit status: 0 on success, 1 when the command ran and found a problem,
2 for a usage error or an unusable configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from p2a_connector import config
from p2a_connector.config import Config, ConfigError
from p2a_connector.decode import iso_time
from p2a_connector.spool import Spool, SpoolError
from p2a_connector.spools import location, spool_from_config


def check_config(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(args.file)
    except ConfigError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    print(describe(loaded))
    return 0


def describe(loaded: Config) -> str:
    lines = [f"spool: {loaded.spool.backend} at {location(loaded.spool)}"]
    for webhook in loaded.webhooks:
        lines.append(
            f"webhook {webhook.name}: {webhook.url} "
            f"({len(webhook.secrets)} secret(s), timeout {webhook.timeout:g} s)"
        )
    for operator in loaded.operators:
        lines.append(f"operator {operator.name}: default webhook {operator.webhook}")
        for bind in operator.binds:
            lines.append(
                f"  bind {bind.name}: {bind.mode} {bind.system_id}@"
                f"{bind.host}:{bind.port}{' (TLS)' if bind.tls else ''}"
            )
    for route in loaded.routes:
        lines.append(f"route {route.match} -> {route.webhook}")
    lines.append("configuration OK")
    return "\n".join(lines)


def _with_spool(args: argparse.Namespace, work: Callable[[Spool], Any]) -> int:
    """Open the configured spool, run ``work`` on it, close it; an exit status."""
    try:
        loaded = config.load(args.config)
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    outcome = {"status": 0}

    async def run(reactor) -> None:
        spool = spool_from_config(loaded.spool, _no_assembly, reactor)
        try:
            await spool.open()
        except SpoolError as e:
            print(str(e), file=sys.stderr)
            outcome["status"] = 1
            return
        try:
            outcome["status"] = await work(spool)
        except SpoolError as e:
            print(str(e), file=sys.stderr)
            outcome["status"] = 1
        finally:
            await spool.close()

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return outcome["status"]


def _no_assembly(records: list[dict], complete: bool) -> tuple[str, str, bytes]:
    raise RuntimeError("the command line never completes a reassembly")


def dead_letters_list(args: argparse.Namespace) -> int:
    async def work(spool: Spool) -> int:
        letters = await spool.dead_letters(limit=args.limit)
        for letter in letters:
            if args.json:
                print(json.dumps(letter))
            else:
                print(
                    f"{letter['id']}  {letter['type']}  webhook {letter['webhook']}  "
                    f"failed {iso_time(letter['failed_at'])} after "
                    f"{letter['attempts']} attempt(s): {letter['reason']}"
                )
        if not args.json:
            print(f"{len(letters)} dead letter(s)")
        return 0

    return _with_spool(args, work)


def _dead_letters_action(
    verb: str, act: Callable[[Spool, list[str] | None], Any], done: str
) -> Callable[[argparse.Namespace], int]:
    """A command acting on named dead letters, or on all with --all."""

    def command(args: argparse.Namespace) -> int:
        if not args.all and not args.ids:
            print(f"name the dead letters to {verb}, or give --all", file=sys.stderr)
            return 2

        async def work(spool: Spool) -> int:
            count = await act(spool, None if args.all else args.ids)
            print(f"{count} dead letter(s) {done}")
            return 0 if args.all or count == len(args.ids) else 1

        return _with_spool(args, work)

    return command


dead_letters_replay = _dead_letters_action(
    "replay", lambda spool, ids: spool.replay(ids), "queued for delivery again"
)
dead_letters_purge = _dead_letters_action(
    "purge", lambda spool, ids: spool.purge(ids), "deleted"
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="p2a-connector",
        description="Operate a p2a-connector installation. "
        "Run the daemon itself with: twistd -n p2a-connector --config FILE",
    )
    commands = top.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(run=check_config)

    dead = commands.add_parser(
        "dead-letters", help="list, replay or purge dead letters"
    )
    dead_commands = dead.add_subparsers(dest="action", required=True)
    listing = dead_commands.add_parser("list", help="show dead letters")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=dead_letters_list)
    for name, run, verb in (
        ("replay", dead_letters_replay, "deliver again"),
        ("purge", dead_letters_purge, "delete for good"),
    ):
        action = dead_commands.add_parser(name, help=f"{verb}: named ids, or --all")
        action.add_argument("ids", nargs="*", metavar="ID")
        action.add_argument("--all", action="store_true")
        action.set_defaults(run=run)
    for sub in dead_commands.choices.values():
        sub.add_argument(
            "--config",
            "-c",
            default="/etc/p2a-connector/connector.toml",
            help="the daemon's configuration file, to find the spool",
        )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
