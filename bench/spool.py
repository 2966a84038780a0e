"""
What storing messages costs the receiving side, without the rest of a run.

Stores ``--messages`` messages (single-part or two-part GSM 7-bit, each its
own text and source address) through `p2a_connector.intake.Intake` into a
spool, ``--window`` PDUs at a time as an SMSC's window would hand them over,
and prints the CPU this process and the private redis-server spent per
message, and, for Redis, the commands per message that `INFO commandstats`
counted (the scripts' own commands included).  Nothing is delivered, so the
figures are the intake's and the spool's alone: compare two versions by
running this for each in turn.

    .venv/bin/python bench/spool.py --spool redis --parts 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from twisted.internet import defer, task

from p2a_connector import config, traffic
from p2a_connector.harness import config_text
from p2a_connector.intake import Intake
from p2a_connector.models import Address
from p2a_connector.redis_spool import RedisSpool
from p2a_connector.smpp_status import ESME_ROK
from p2a_connector.sqlite_spool import SqliteSpool

# The benchmark's private Redis (AOF, appendfsync everysec), beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import PrivateRedis

# A configuration of one operator, one bind and one webhook; the spool is
# made here, not from its [spool] table.
CONFIG = config_text(
    spool=Path("unused.db"), webhook_url="http://127.0.0.1:9/sms", smsc_port=9
)


def messages(count: int, parts: int) -> list[list]:
    """Each message's deliver_sm PDUs as the session hands them on."""
    filler = "lorem ipsum dolor sit amet " * (7 if parts == 2 else 3)
    made = []
    for n in range(count):
        split = traffic.split(
            f"message {n:08d} {filler}",
            "gsm7",
            "udh8" if parts == 2 else None,
            reference=n % 256,
        )
        source = Address(f"4477009{n % 100_000:05d}", 1, 1)
        made.append(
            [
                part.deliver_sm(source, Address("88000"), sequence_number=n * 2 + k)
                for k, part in enumerate(split, 1)
            ]
        )
    return made


def redis_cli(port: int, *command: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *command],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


def redis_info(port: int, section: str) -> dict[str, str]:
    """One INFO section of the private Redis, as name -> value text."""
    lines = redis_cli(port, "INFO", section).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def redis_cpu(port: int) -> float:
    info = redis_info(port, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_calls(port: int) -> dict[str, int]:
    """Calls per command name, from INFO commandstats."""
    return {
        name.removeprefix("cmdstat_"): int(value.split("calls=")[1].split(",")[0])
        for name, value in redis_info(port, "commandstats").items()
    }


async def run(reactor, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="p2a-spoolbench-"))
    loaded = config.parse(tomllib.loads(CONFIG))
    bind = loaded.operators[0].binds[0]
    intake = Intake(loaded, None, reactor)
    redis, server = None, None
    if args.spool == "redis":
        redis = PrivateRedis(work, "everysec")
        server = redis.servers[0]
        intake.spool = RedisSpool(redis.url, intake.assemble, reactor)
    else:
        intake.spool = SqliteSpool(str(work / "spool.db"), intake.assemble, reactor)
    try:
        await intake.spool.open()
        made = messages(args.messages, args.parts)
        per_turn = max(1, args.window // args.parts)
        redis_before = redis_cpu(server.port) if server else 0.0
        calls_before = redis_calls(server.port) if server else {}
        cpu_before, wall_before = time.process_time(), time.perf_counter()

        for start in range(0, len(made), per_turn):
            statuses = await defer.gatherResults(
                [
                    intake.receive(bind, pdu)
                    for message in made[start : start + per_turn]
                    for pdu in message
                ]
            )
            if any(status != ESME_ROK for status in statuses):
                raise RuntimeError(f"the spool answered {statuses}")

        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        report = {
            "messages": len(made),
            "parts": args.parts,
            "spool": args.spool,
            "pending": intake.spool.pending(),
            "process_us_per_message": round(1e6 * cpu / len(made), 1),
            "messages_per_second": round(len(made) / wall),
        }
        if server:
            report["redis_us_per_message"] = round(
                1e6 * (redis_cpu(server.port) - redis_before) / len(made), 1
            )
            after = redis_calls(server.port)
            report["redis_calls_per_message"] = {
                name: round((calls - calls_before.get(name, 0)) / len(made), 2)
                for name, calls in sorted(after.items())
                if calls > calls_before.get(name, 0) and name != "info"
            }
        await intake.spool.close()
        return report
    finally:
        if redis:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--parts", type=int, choices=(1, 2), default=2)
    parser.add_argument("--window", type=int, default=64, help="PDUs at a time")
    parser.add_argument("--spool", choices=("redis", "sqlite"), default="redis")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    async def react(reactor) -> None:
        report = await run(reactor, args)
        if args.json:
            print(json.dumps(report))
            return
        for name, value in report.items():
            if isinstance(value, dict):
                value = ", ".join(f"{key} {calls}" for key, calls in value.items())
            print(f"{name.replace('_', ' '):24s}{value}")

    # Exits the process: 0 once the run is done, 1 if it failed.
    task.react(lambda reactor: defer.ensureDeferred(react(reactor)))


if __name__ == "__main__":
    main()
