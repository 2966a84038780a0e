"""
The User Data Header of a short message (3GPP TS 23.040, 9.2.3.24).

A UDH is a length octet followed by information elements, each an
identifier, a length and that many octets.  This module splits one off the
front of the user data and reads the elements the connector acts on:
concatenation (8-bit and 16-bit reference), application ports and the
national language shifts that choose the GSM 7-bit tables.  Every other
element, and any of those whose length is not the one 23.040 gives it, is
kept as it came, for the webhook to see.
"""

from __future__ import annotations

import attrs

IEI_CONCAT_8 = 0x00
IEI_PORTS_8 = 0x04
IEI_PORTS_16 = 0x05
IEI_CONCAT_16 = 0x08
IEI_SINGLE_SHIFT = 0x24
IEI_LOCKING_SHIFT = 0x25


class MalformedUDH(ValueError):
    """The header's own lengths contradict the bytes that carry it."""


@attrs.frozen
class Element:
    """One information element: its identifier and its data octets."""

    iei: int
    data: bytes

    def to_json(self) -> dict:
        return {"iei": self.iei, "data": self.data.hex()}


@attrs.frozen
class Concatenation:
    """A concatenation element that 23.040 says a receiver should honour."""

    reference: int
    total: int
    seqnum: int
    method: str


@attrs.frozen
class Ports:
    """Application port addressing: where the message is from and going to."""

    source: int
    destination: int

    def to_json(self) -> dict:
        return {"source": self.source, "destination": self.destination}


@attrs.frozen
class Header:
    """A parsed UDH: what the connector understood and what it kept as is."""

    concat: Concatenation | None
    ports: Ports | None
    others: tuple[Element, ...]
    # National language identifiers (23.038 6.2.1.2.4), as sent: an
    # identifier no table exists for is the caller's to report.
    single_shift: int | None = None
    locking_shift: int | None = None


def split(user_data: bytes) -> tuple[bytes, bytes]:
    """
    Separate the UDH (with its length octet) from the message that follows.

    :raises MalformedUDH: when the UDH length runs past the user data.
    """
    if not user_data:
        raise MalformedUDH("the message is empty")
    end = 1 + user_data[0]
    if end > len(user_data):
        raise MalformedUDH(
            f"the UDH length {user_data[0]} runs past the end of the message, "
            f"{len(user_data) - 1} octets after the length octet"
        )
    return user_data[:end], user_data[end:]


def elements(udh: bytes) -> tuple[Element, ...]:
    """
    The information elements of a UDH given with its length octet.

    :raises MalformedUDH: when an element's length runs past the UDH.
    """
    body = udh[1:]
    found = []
    index = 0
    while index < len(body):
        if index + 2 > len(body):
            raise MalformedUDH(
                f"the UDH ends inside the element that starts at octet {index + 1}"
            )
        iei, length = body[index], body[index + 1]
        start = index + 2
        if start + length > len(body):
            raise MalformedUDH(
                f"the UDH element 0x{iei:02x} claims {length} octets "
                f"where the UDH has {len(body) - start} left"
            )
        found.append(Element(iei, body[start : start + length]))
        index = start + length
    return tuple(found)


def parse(udh: bytes) -> Header:
    """
    Read a UDH given with its length octet.

    A concatenation element whose numbers 23.040 tells a receiver to ignore
    (no parts, part 0, a part past the total) is not used, and neither is a
    one-part "concatenation"; such elements stay among the others.  When an
    element the specification does not allow to repeat occurs twice, the
    last one counts, as 23.040 says.

    :raises MalformedUDH: when the UDH's lengths are inconsistent.
    """
    concat = None
    ports = None
    shifts: dict[int, int] = {}
    others = []
    for element in elements(udh):
        if element.iei in (IEI_CONCAT_8, IEI_CONCAT_16):
            found = _concatenation(element)
            if found is not None:
                concat = found
                continue
        elif element.iei in (IEI_PORTS_8, IEI_PORTS_16):
            found_ports = _ports(element)
            if found_ports is not None:
                ports = found_ports
                continue
        elif (
            element.iei in (IEI_SINGLE_SHIFT, IEI_LOCKING_SHIFT)
            and len(element.data) == 1
        ):
            shifts[element.iei] = element.data[0]
            continue
        others.append(element)
    return Header(
        concat=concat,
        ports=ports,
        others=tuple(others),
        single_shift=shifts.get(IEI_SINGLE_SHIFT),
        locking_shift=shifts.get(IEI_LOCKING_SHIFT),
    )


def fill_bits(udh: bytes) -> int:
    """
    The bits between a UDH and packed GSM 7-bit text that follows it.

    The text starts on the first septet boundary after the header, counted
    from the start of the user data; ``udh`` includes its length octet.
    """
    return (7 - len(udh) * 8 % 7) % 7


def _concatenation(element: Element) -> Concatenation | None:
    data = element.data
    if element.iei == IEI_CONCAT_8 and len(data) == 3:
        reference, total, seqnum = data
        method = "udh8"
    elif element.iei == IEI_CONCAT_16 and len(data) == 4:
        reference = int.from_bytes(data[:2], "big")
        total, seqnum = data[2], data[3]
        method = "udh16"
    else:
        return None

    if total <= 1 or seqnum == 0 or seqnum > total:
        return None
    return Concatenation(reference, total, seqnum, method)


def _ports(element: Element) -> Ports | None:
    # Both forms give the destination port first, then the originator's.
    data = element.data
    if element.iei == IEI_PORTS_8 and len(data) == 2:
        return Ports(source=data[1], destination=data[0])
    if element.iei == IEI_PORTS_16 and len(data) == 4:
        return Ports(
            source=int.from_bytes(data[2:], "big"),
            destination=int.from_bytes(data[:2], "big"),
        )
    return None
