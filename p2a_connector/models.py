"""
Value classes shared by the layers: what the session layer hands upward.

A `MOPdu` is a deliver_sm or data_sm exactly as the SMSC sent it, parsed
tolerantly: every field is a plain integer, string or byte string, and every
TLV is kept in arrival order, known or not.  Interpretation (alphabets, UDH,
receipts) belongs to `p2a_connector.decode`.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Address:
    """An SMPP address with its type of number and numbering plan."""

    address: str
    ton: int = 0
    npi: int = 0

    def to_json(self) -> dict:
        return {"address": self.address, "ton": self.ton, "npi": self.npi}


@attrs.frozen
class TLV:
    """One optional parameter: its tag and its raw value bytes."""

    tag: int
    value: bytes


@attrs.frozen
class MOPdu:
    """
    A mobile-originated deliver_sm or data_sm as received.

    data_sm has no protocol_id, priority_flag, short_message and friends:
    those fields are zero or empty for it, and its text is in the
    message_payload TLV.
    """

    command: str
    sequence_number: int
    service_type: str
    source: Address
    destination: Address
    esm_class: int
    protocol_id: int
    priority_flag: int
    registered_delivery: int
    data_coding: int
    short_message: bytes
    tlvs: tuple[TLV, ...] = ()

    def tlv(self, tag: int) -> bytes | None:
        """The value of the first TLV with this tag, or None."""
        for tlv in self.tlvs:
            if tlv.tag == tag:
                return tlv.value
        return None
