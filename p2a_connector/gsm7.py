"""
The GSM 7-bit default alphabet and its extension table (3GPP TS 23.038, 6.2.1).

SMPP carries GSM 7-bit text unpacked: one septet in each octet, so decoding
is a table lookup per octet, with 0x1B escaping into the extension table.
The decoder never raises: an octet outside the 7-bit range becomes U+FFFD and
the caller is told that a replacement happened.

Limitation: septets packed seven to eight octets, as on the air interface,
are not recognised; such text decodes wrongly, usually with replacements
that mark it as a decode error, and its raw bytes reach the webhook.
"""

from __future__ import annotations

ESCAPE = 0x1B
REPLACEMENT = "\ufffd"

# Index = septet value.  0x1B is the escape; it is never looked up here.
DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

# 0x1B 0x1B is reserved for a further extension table; until one is defined
# the specification asks for a space.
_RESERVED_ESCAPE = " "


def decode(data: bytes) -> tuple[str, bool]:
    """
    Decode unpacked GSM 7-bit octets.

    :returns: the text, and whether any octet had to be replaced by U+FFFD.
    """
    chars: list[str] = []
    replaced = False
    index = 0
    while index < len(data):
        octet = data[index]
        index += 1

        if octet >= 0x80:
            chars.append(REPLACEMENT)
            replaced = True
            continue

        if octet != ESCAPE:
            chars.append(DEFAULT[octet])
            continue

        if index == len(data):
            # An escape with nothing after it: shown as a space, as a
            # receiver that does not understand the escape would.
            chars.append(" ")
            break

        following = data[index]
        index += 1
        if following >= 0x80:
            chars.append(REPLACEMENT)
            replaced = True
        elif following == ESCAPE:
            chars.append(_RESERVED_ESCAPE)
        else:
            # A code the extension table does not define is shown as the
            # default-table character, as 23.038 asks of a receiver.
            chars.append(EXTENSION.get(following, DEFAULT[following]))

    return "".join(chars), replaced
