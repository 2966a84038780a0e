"""
The ``p2a-connector`` command line, for operations staff.

Exit status: 0 on success, 1 when the command ran and found a problem,
2 for a usage error or an unusable configuration.
"""

from __future__ import annotations

import argparse
import sys

from p2a_connector import config
from p2a_connector.config import Config, ConfigError


def check_config(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(args.file)
    except ConfigError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    print(describe(loaded))
    return 0


def describe(loaded: Config) -> str:
    lines = [f"spool: {loaded.spool.backend} at {loaded.spool.path}"]
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
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
