"""
The ``p2a-connector`` command line, for operations staff.

Exit status: 0 on success, 1 when the command ran and found a problem (a
dead letter that is not there, an event with no trail, a daemon that is not
ready), 2 for a usage error, an unusable configuration or a daemon that
cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from p2a_connector import config, trail
from p2a_connector.config import Config, ConfigError
from p2a_connector.decode import iso_time
from p2a_connector.spool import Spool, SpoolError
from p2a_connector.spools import location, spool_from_config, spool_options


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
        spool = spool_from_config(
            loaded.spool, _no_assembly, reactor, **spool_options(loaded)
        )
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


def trail_command(args: argparse.Namespace) -> int:
    async def work(spool: Spool) -> int:
        steps = await spool.trail(args.id)
        if not steps:
            print(
                f"no trail for {args.id}: no such event, or its trail is older "
                "than trail.keep",
                file=sys.stderr,
            )
            return 1
        if args.json:
            print(json.dumps({"id": args.id, "steps": trail.as_json(steps)}))
        else:
            print(trail.render(args.id, steps))
        return 0

    return _with_spool(args, work)


def status_command(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(args.config)
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    if args.url is None and not loaded.admin.enabled:
        print(
            f"{args.config}: admin.enabled = false, so the daemon has no status to "
            "ask for; enable it or give --url",
            file=sys.stderr,
        )
        return 2
    url = (args.url or admin_url(loaded)).rstrip("/") + "/status"
    request = urllib.request.Request(url)
    if loaded.admin.token is not None:
        request.add_header("Authorization", f"Bearer {loaded.admin.token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        print(f"{url}: the daemon answered HTTP {e.code} {e.reason}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        print(f"{url}: cannot reach the daemon: {reason}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(body))
    else:
        print(describe_status(url, body))
    return 0 if body.get("ready") else 1


def admin_url(loaded: Config) -> str:
    """The admin endpoint's URL from this host, as configured."""
    address = loaded.admin.address
    if address in ("0.0.0.0", "::"):
        address = "127.0.0.1" if address == "0.0.0.0" else "::1"
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{loaded.admin.port}/"


def describe_status(url: str, body: dict) -> str:
    state = "ready" if body.get("ready") else "NOT READY"
    letters = body.get("dead_letters")
    reassemblies = body.get("reassemblies", {})
    where = url.removesuffix("/status")
    spool = (
        f"spool {body.get('spool')}: {body.get('pending')} pending, "
        f"{'?' if letters is None else letters} dead letter(s), "
        f"{reassemblies.get('open', 0)} reassemblies open "
        f"({reassemblies.get('bytes', 0)} bytes), "
        f"{body.get('outbound_queued', 0)} outbound to send"
    )
    lines = [f"{body.get('role', '?')} process at {where}: {state}", spool]
    for bind in body.get("binds", []):
        lines.append(
            f"bind {bind['bind']} (operator {bind['operator']}, {bind['mode']} to "
            f"{bind['smsc']}): {bind['state']}"
        )
    for operator in body.get("operators_without_a_bound_bind", []):
        lines.append(f"operator {operator} has no bound bind")
    return "\n".join(lines)


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

    trail_parser = commands.add_parser(
        "trail", help="show the steps of one event, from its PDUs to its delivery"
    )
    trail_parser.add_argument("id", metavar="ID", help="the event id (webhook-id)")
    trail_parser.add_argument("--json", action="store_true", help="as one JSON object")
    trail_parser.set_defaults(run=trail_command)

    status_parser = commands.add_parser(
        "status", help="ask the running daemon for its binds, pending and dead letters"
    )
    status_parser.add_argument(
        "--url", help="the admin endpoint, if not the configuration's [admin]"
    )
    status_parser.add_argument("--json", action="store_true", help="the raw JSON")
    status_parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the daemon"
    )
    status_parser.set_defaults(run=status_command)

    for sub in (*dead_commands.choices.values(), trail_parser, status_parser):
        sub.add_argument(
            "--config",
            "-c",
            default="/etc/p2a-connector/connector.toml",
            help="the daemon's configuration file, to find the spool and endpoint",
        )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
