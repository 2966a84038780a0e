"""
The benchmark still runs and still checks what it claims to: a small run of
bench/throughput.py per spool and receiver, which exits 0 only when nothing
was lost and every signature held.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import available

BENCH = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"


def run(*args: str, bench: Path = BENCH) -> dict:
    if bench == BENCH:
        args = ("--duration", "60", *args)
    done = subprocess.run(
        [sys.executable, str(bench), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("receiver", ["process", "lean"])
def test_a_small_sqlite_run_delivers_every_message(receiver):
    report = run("--messages", "300", "--parts", "2", "--receiver", receiver)

    assert report["ok"] is True
    assert report["distinct_ids"] == 300
    assert report["signature_failures"] == 0
    assert set(report["cpu_us_per_message"]) >= {"twistd all", "bench", "receiver"}


@pytest.mark.skipif(not available(), reason="no redis-server binary on this machine")
def test_a_small_redis_run_with_split_roles_delivers_every_message():
    report = run(
        "--messages", "300", "--spool", "redis", "--dispatchers", "2",
        "--receiver", "lean", "--dispatcher-nice", "5",
    )  # fmt: skip

    assert report["ok"] is True
    assert report["distinct_ids"] == 300
    assert {"twistd receiver", "twistd dispatcher-2", "redis-server"} <= set(
        report["cpu_us_per_message"]
    )


@pytest.mark.skipif(not available(), reason="no redis-server binary on this machine")
def test_a_small_redis_cluster_run_delivers_every_message():
    report = run("--messages", "300", "--parts", "2", "--spool", "cluster")

    assert report["ok"] is True
    assert report["distinct_ids"] == 300
    assert report["parameters"]["shards"] == 4


SPOOL_BENCH = BENCH.with_name("spool.py")


@pytest.mark.parametrize(
    "spool",
    [
        "sqlite",
        pytest.param(
            "redis",
            marks=pytest.mark.skipif(not available(), reason="no redis-server"),
        ),
    ],
)
def test_the_spool_benchmark_stores_every_message_it_times(spool):
    report = run("--messages", "200", "--spool", spool, bench=SPOOL_BENCH)

    assert report["pending"] == report["messages"] == 200
    assert report["process_us_per_message"] > 0
    if spool == "redis":
        # One message in two parts: its event is added to one stream.
        assert report["redis_calls_per_message"]["xadd"] == 1.0
        assert report["redis_us_per_message"] > 0
