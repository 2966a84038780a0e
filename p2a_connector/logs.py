"""
Log observers for twistd's ``--logger`` option.

``twistd -n --logger p2a_connector.logs.json_stdout p2a-connector ...``
writes one JSON object per line to standard output, for journald or a log
shipper; every field an event was logged with (``id``, ``bind``,
``sequence_number``, ``webhook``...) is a key of that object.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_stdout() -> ILogObserver:
    """One JSON object per line on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
