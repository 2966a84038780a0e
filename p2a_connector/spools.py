"""
The spool backend a configuration asks for: `spool_from_config` builds it,
unopened, with the bounds and timeouts the configuration gives.
"""

from __future__ import annotations

from typing import Any

from p2a_connector.config import LimitsConfig, SpoolConfig, parse_redis_url
from p2a_connector.spool import Assembler, Spool


def spool_from_config(
    config: SpoolConfig,
    assembler: Assembler,
    reactor: Any,
    limits: LimitsConfig | None = None,
    *,
    completed_ttl: float = 600.0,
) -> Spool:
    """
    A `SqliteSpool` or a `RedisSpool` as ``config.backend`` says; without
    ``limits`` (the command line) no bound is enforced.
    """
    bounds: dict[str, Any] = {}
    if limits is not None:
        bounds = {
            "max_reassemblies": limits.max_reassemblies,
            "max_reassemblies_per_operator": limits.max_reassemblies_per_operator,
            "max_reassembly_bytes": limits.max_reassembly_bytes,
        }
    if config.backend == "redis":
        from p2a_connector.redis_spool import RedisSpool

        return RedisSpool(
            config.url,
            assembler,
            reactor,
            prefix=config.prefix,
            sentinels=config.sentinels,
            sentinel_master=config.sentinel_master,
            claim_idle=config.claim_idle,
            completed_ttl=completed_ttl,
            **bounds,
        )

    from p2a_connector.sqlite_spool import SqliteSpool

    return SqliteSpool(
        config.path,
        assembler,
        reactor,
        commit_interval=config.commit_interval,
        completed_ttl=completed_ttl,
        **bounds,
    )


def location(config: SpoolConfig) -> str:
    """Where the spool is, for messages; never shows a password."""
    if config.backend != "redis":
        return config.path
    if config.sentinels:
        sentinels = ", ".join(f"{host}:{port}" for host, port in config.sentinels)
        return f"sentinel master {config.sentinel_master} via {sentinels}"
    host, port, db, _, _ = parse_redis_url(config.url)
    return f"redis://{host}:{port}/{db} prefix {config.prefix}"
