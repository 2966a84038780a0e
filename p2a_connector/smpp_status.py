"""SMPP command_status and command_id names, from the smpp.pdu codec's tables."""

from __future__ import annotations

from smpp.pdu import constants

ESME_ROK = 0x00000000


def status_code(name: str) -> int:
    """The numeric command_status for a name such as ``ESME_RX_T_APPN``."""
    return constants.command_status_name_map[name]


def status_name(code: int) -> str:
    """The name of a command_status, or its hex value when it has none."""
    entry = constants.command_status_value_map.get(code)
    return entry["name"] if entry else f"0x{code:08x}"


def command_name(command_id: int) -> str:
    """The name of a command_id, or its hex value when it has none."""
    return constants.command_id_value_map.get(command_id, f"0x{command_id:08x}")


def tag_name(tag: int) -> str | None:
    """The SMPP 3.4 name of a TLV tag, or None for unknown and vendor tags."""
    return constants.tag_value_map.get(tag)
