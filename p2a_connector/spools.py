"""
The spool backend a configuration asks for: `spool_from_config` builds it,
unopened, with the bounds and timeouts the configuration gives.
"""

from __future__ import annotations

from typing import Any

from p2a_connector import conversation, outbound
from p2a_connector.config import Config, LimitsConfig, SpoolConfig, parse_redis_url
from p2a_connector.spool import Assembler, Spool


def spool_from_config(
    config: SpoolConfig,
    assembler: Assembler,
    reactor: Any,
    limits: LimitsConfig | None = None,
    *,
    completed_ttl: float = 600.0,
    trail_keep: float | None = None,
    conversation_idle: float = conversation.DEFAULT_IDLE,
    ussd_idle: float = conversation.DEFAULT_USSD_IDLE,
    outbound_keep: float = outbound.DEFAULT_KEEP,
    receipt_keep: float = outbound.DEFAULT_RECEIPT_KEEP,
) -> Spool:
    """
    A `SqliteSpool`, a `RedisSpool` or, with ``config.cluster``, a
    `ShardedSpool` of Redis spools, as ``config.backend`` says; without
    ``limits`` (the command line) no bound is enforced.  ``trail_keep``: how
    long trails are kept, None for no trail (`TrailConfig.spool_keep`).  The
    two-way options are the spools' own (see `SqliteSpool`).
    """
    bounds = spool_bounds(limits) if limits is not None else {}
    bounds |= {
        "conversation_idle": conversation_idle,
        "ussd_idle": ussd_idle,
        "outbound_keep": outbound_keep,
        "receipt_keep": receipt_keep,
    }
    if config.backend == "redis":
        from p2a_connector.redis_shards import ShardedSpool
        from p2a_connector.redis_spool import RedisSpool

        options = {
            "prefix": config.prefix,
            "claim_idle": config.claim_idle,
            "wait_replicas": config.wait_replicas,
            "wait_timeout": config.wait_timeout,
            "completed_ttl": completed_ttl,
            "trail_keep": trail_keep,
            **bounds,
        }
        if config.cluster:
            return ShardedSpool(
                config.cluster,
                config.url,
                assembler,
                reactor,
                shards=config.shards,
                **options,
            )
        return RedisSpool(
            config.url,
            assembler,
            reactor,
            sentinels=config.sentinels,
            sentinel_master=config.sentinel_master,
            **options,
        )

    from p2a_connector.sqlite_spool import SqliteSpool

    return SqliteSpool(
        config.path,
        assembler,
        reactor,
        commit_interval=config.commit_interval,
        completed_ttl=completed_ttl,
        trail_keep=trail_keep,
        **bounds,
    )


def spool_options(config: Config) -> dict[str, Any]:
    """
    The keyword arguments of `spool_from_config` that a whole configuration
    gives, beside the bounds: for the daemon and the command line alike.
    """
    return {
        "completed_ttl": config.reassembly.timeout,
        "trail_keep": config.trail.spool_keep,
        "conversation_idle": config.conversation.idle_timeout,
        "ussd_idle": config.conversation.ussd_idle,
        "outbound_keep": config.outbound.keep,
        "receipt_keep": config.outbound.receipt_keep,
    }


def spool_bounds(limits: LimitsConfig) -> dict[str, Any]:
    """The ``[limits]`` a spool enforces itself, as its keyword arguments."""
    return {
        "max_reassemblies": limits.max_reassemblies,
        "max_reassemblies_per_operator": limits.max_reassemblies_per_operator,
        "max_reassembly_bytes": limits.max_reassembly_bytes,
    }


def location(config: SpoolConfig) -> str:
    """Where the spool is, for messages; never shows a password."""
    if config.backend != "redis":
        return config.path
    if config.sentinels:
        sentinels = ", ".join(f"{host}:{port}" for host, port in config.sentinels)
        return f"sentinel master {config.sentinel_master} via {sentinels}"
    if config.cluster:
        nodes = ", ".join(f"{host}:{port}" for host, port in config.cluster)
        return f"redis cluster via {nodes} prefix {config.prefix}"
    host, port, db, _, _ = parse_redis_url(config.url)
    return f"redis://{host}:{port}/{db} prefix {config.prefix}"
