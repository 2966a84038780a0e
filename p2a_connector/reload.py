"""
What reloading the configuration changes, worked out before anything is done.

`diff` compares the configuration the daemon runs on with the one just read
from the same file: which binds to keep, start, stop or restart (by name),
which webhooks were added, removed or changed, and which settings only a
restart can change.  `effective` is the configuration to run on after the
reload: the new one, with those restart-only settings left as they were.
Both are pure, so the decisions can be tested without a daemon.
"""

from __future__ import annotations

import attrs

from p2a_connector.config import BindConfig, Config, WebhookConfig

# The parts of `Config` a running daemon applies on reload.  Anything else
# (the spool, the admin endpoint, sections added later) is opened once at
# start-up, so a change to it waits for a restart.
RELOADABLE = frozenset(
    {"webhooks", "operators", "routes", "limits", "reassembly", "shutdown_timeout"}
)


@attrs.frozen
class Changes:
    """
    The difference between two configurations, as a reload applies it.

    :ivar binds_changed: the new settings of binds whose settings differ;
        each is stopped and started again.
    :ivar restart_needed: dotted keys (``spool.path``) whose new values are
        ignored until the daemon restarts.
    """

    binds_added: tuple[BindConfig, ...] = ()
    binds_removed: tuple[BindConfig, ...] = ()
    binds_changed: tuple[BindConfig, ...] = ()
    binds_kept: tuple[str, ...] = ()
    webhooks_added: tuple[str, ...] = ()
    webhooks_removed: tuple[str, ...] = ()
    webhooks_changed: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def summary(self) -> dict[str, int]:
        """Counts by kind of change, for the one line a reload logs."""
        return {
            "binds_added": len(self.binds_added),
            "binds_removed": len(self.binds_removed),
            "binds_restarted": len(self.binds_changed),
            "binds_kept": len(self.binds_kept),
            "webhooks_added": len(self.webhooks_added),
            "webhooks_removed": len(self.webhooks_removed),
            "webhooks_changed": len(self.webhooks_changed),
        }


def diff(old: Config, new: Config, *, binds: bool = True) -> Changes:
    """
    What changes from ``old`` to ``new``.  With ``binds`` false (a process
    that holds no binds) the bind fields stay empty.
    """
    old_binds = _binds(old) if binds else {}
    new_binds = _binds(new) if binds else {}
    old_hooks = _webhooks(old)
    new_hooks = _webhooks(new)

    return Changes(
        binds_added=tuple(b for n, b in new_binds.items() if n not in old_binds),
        binds_removed=tuple(b for n, b in old_binds.items() if n not in new_binds),
        binds_changed=tuple(
            b for n, b in new_binds.items() if n in old_binds and old_binds[n] != b
        ),
        binds_kept=tuple(
            n for n, b in new_binds.items() if n in old_binds and old_binds[n] == b
        ),
        webhooks_added=tuple(n for n in new_hooks if n not in old_hooks),
        webhooks_removed=tuple(n for n in old_hooks if n not in new_hooks),
        webhooks_changed=tuple(
            n for n, w in new_hooks.items() if n in old_hooks and old_hooks[n] != w
        ),
        restart_needed=_restart_needed(old, new),
    )


def effective(old: Config, new: Config) -> Config:
    """``new``, with every setting that needs a restart kept from ``old``."""
    kept = {
        name: getattr(old, name)
        for name in attrs.fields_dict(Config)
        if name not in RELOADABLE
    }
    return attrs.evolve(new, **kept)


def _binds(config: Config) -> dict[str, BindConfig]:
    return {bind.name: bind for op in config.operators for bind in op.binds}


def _webhooks(config: Config) -> dict[str, WebhookConfig]:
    return {webhook.name: webhook for webhook in config.webhooks}


def _restart_needed(old: Config, new: Config) -> tuple[str, ...]:
    keys: list[str] = []
    for name in attrs.fields_dict(Config):
        before, after = getattr(old, name), getattr(new, name)
        if name in RELOADABLE or before == after:
            continue
        if attrs.has(type(before)) and type(before) is type(after):
            keys.extend(
                f"{name}.{field}"
                for field in attrs.fields_dict(type(before))
                if getattr(before, field) != getattr(after, field)
            )
        else:
            keys.append(name)
    return tuple(keys)
