"""
SMPP 3.4 PDUs on the wire: framing, a tolerant deliver_sm/data_sm parser and
encoders for the PDUs the connector and the simulator send.

The smpp.pdu codec encodes what we send, but it cannot be trusted with what
an SMSC sends us: it refuses deliver_sm carrying ussd_service_op or
its_session_info, refuses enum values it does not know (esm_class,
data_coding, ton, npi) and silently drops vendor TLVs.  So deliver_sm and
data_sm bodies are parsed here, keeping every field as a plain number or
string and every TLV raw, in arrival order.  Headers are read and written
here too, so that any command_status, known or not, survives a round trip.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable

import attrs
from smpp.pdu import constants, operations, pdu_types
from smpp.pdu.pdu_encoding import PDUEncoder

from p2a_connector.models import TLV, Address, MOPdu
from p2a_connector.smpp_status import command_name, status_code, status_name

HEADER_SIZE = 16
RESPONSE_BIT = 0x80000000

_ids = constants.command_id_name_map
GENERIC_NACK = _ids["generic_nack"]
BIND_RECEIVER = _ids["bind_receiver"]
BIND_TRANSMITTER = _ids["bind_transmitter"]
BIND_TRANSCEIVER = _ids["bind_transceiver"]
UNBIND = _ids["unbind"]
DELIVER_SM = _ids["deliver_sm"]
SUBMIT_SM = _ids["submit_sm"]
DATA_SM = _ids["data_sm"]
ENQUIRE_LINK = _ids["enquire_link"]
ALERT_NOTIFICATION = _ids["alert_notification"]
BIND_COMMANDS = (BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER)

_HEADER = struct.Struct(">IIII")
_TLV_HEADER = struct.Struct(">HH")
_encoder = PDUEncoder()


class PDUError(Exception):
    """A PDU that cannot be accepted, and the command_status to answer it with."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status_name(status)}: {reason}")
        self.status = status
        self.reason = reason


@attrs.frozen
class Header:
    """The four integers that start every PDU."""

    command_length: int
    command_id: int
    command_status: int
    sequence_number: int

    @property
    def command(self) -> str:
        return command_name(self.command_id)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


def frame(command_id: int, status: int, sequence_number: int, body: bytes) -> bytes:
    """A whole PDU: the header computed for ``body``, then ``body``."""
    length = HEADER_SIZE + len(body)
    return _HEADER.pack(length, command_id, status, sequence_number) + body


class Framer:
    """
    Cuts a TCP byte stream into PDUs.

    A command_length below the header size or above ``max_pdu_size`` means
    the stream can no longer be trusted: PDU boundaries are lost, so
    `next_frame` raises PDUError(ESME_RINVCMDLEN) and the caller should
    close the connection.
    """

    def __init__(self, max_pdu_size: int):
        self.max_pdu_size = max_pdu_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> tuple[Header, bytes] | None:
        """The next complete PDU as (header, body), or None until one is."""
        if len(self._buffer) < 4:
            return None

        (length,) = struct.unpack_from(">I", self._buffer)
        if length < HEADER_SIZE or length > self.max_pdu_size:
            raise PDUError(
                status_code("ESME_RINVCMDLEN"),
                f"command_length {length} is outside {HEADER_SIZE}.."
                f"{self.max_pdu_size}; the stream is corrupt",
            )
        if len(self._buffer) < length:
            return None

        header = Header(*_HEADER.unpack_from(self._buffer))
        body = bytes(self._buffer[HEADER_SIZE:length])
        del self._buffer[:length]
        return header, body

    def sequence_number_of_partial(self) -> int:
        """The sequence_number of the PDU at the front, or 0 if unknown."""
        if len(self._buffer) < HEADER_SIZE:
            return 0
        return _HEADER.unpack_from(self._buffer)[3]


# --- the tolerant MO parser ---------------------------------------------


class _Reader:
    """Reads a PDU body front to back, naming the field that did not fit."""

    def __init__(self, body: bytes):
        self.body = body
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.body) - self.offset

    def integers(self, names: tuple[str, ...]) -> bytes:
        """One octet per name, in order; iterating the bytes gives the ints."""
        end = self.offset + len(names)
        if end > len(self.body):
            raise _truncated(names[len(self.body) - self.offset])
        value = self.body[self.offset : end]
        self.offset = end
        return value

    def octets(self, size: int, name: str, status: str) -> bytes:
        if self.remaining < size:
            raise PDUError(
                status_code(status),
                f"{name} says {size} octets but only {self.remaining} remain",
            )
        value = self.body[self.offset : self.offset + size]
        self.offset += size
        return value

    def c_octet_string(self, name: str, max_size: int, status: str) -> str:
        """A NUL-terminated string of at most ``max_size`` octets with its NUL."""
        end = self.body.find(b"\0", self.offset, self.offset + max_size)
        if end < 0:
            if self.remaining < max_size:
                raise _truncated(name)
            raise PDUError(
                status_code(status),
                f"{name} is longer than {max_size - 1} characters",
            )
        raw = self.body[self.offset : end]
        self.offset = end + 1
        # Latin-1 maps every octet to one character, so nothing an SMSC puts
        # in an address is lost or refused; SMPP itself says ASCII.
        return raw.decode("latin-1")

    def tlvs(self) -> tuple[TLV, ...]:
        found = []
        while self.remaining:
            if self.remaining < _TLV_HEADER.size:
                raise PDUError(
                    status_code("ESME_RINVOPTPARSTREAM"),
                    f"{self.remaining} stray octets after the last TLV",
                )
            tag, length = _TLV_HEADER.unpack_from(self.body, self.offset)
            self.offset += _TLV_HEADER.size
            value = self.octets(length, f"TLV 0x{tag:04x}", "ESME_RINVPARLEN")
            found.append(TLV(tag, value))
        return tuple(found)


def _truncated(name: str) -> PDUError:
    return PDUError(
        status_code("ESME_RINVCMDLEN"), f"the body ends before {name} is complete"
    )


def parse_mo(command_id: int, sequence_number: int, body: bytes) -> MOPdu:
    """
    Parse the body of a deliver_sm or a data_sm (or of a submit_sm, which
    has the deliver_sm layout: the simulator reads ours with it).

    Every integer field is taken as is, whatever its value; every TLV is
    kept.  Raises PDUError with the status to answer when the body is
    truncated, overruns, or a string field is longer than SMPP allows.
    """
    reader = _Reader(body)
    if command_id == DELIVER_SM:
        return _deliver_sm(reader, sequence_number)
    if command_id == SUBMIT_SM:
        return attrs.evolve(_deliver_sm(reader, sequence_number), command="submit_sm")
    if command_id == DATA_SM:
        return _data_sm(reader, sequence_number)
    raise PDUError(
        status_code("ESME_RINVCMDID"),
        f"{command_name(command_id)} is not a deliver_sm or a data_sm",
    )


# The field names of the octets read together, for the errors that name
# the field a truncated body lacks.
_SOURCE = ("source_ton", "source_npi", "source_addr")
_DEST = ("dest_ton", "dest_npi", "dest_addr")
_CLASS_TO_PRIORITY = ("esm_class", "protocol_id", "priority_flag")
_REGISTERED_TO_LENGTH = (
    "registered_delivery",
    "replace_if_present_flag",
    "data_coding",
    "sm_default_msg_id",
    "sm_length",
)
_DATA_SM_OCTETS = ("esm_class", "registered_delivery", "data_coding")


def _address(
    reader: _Reader, names: tuple[str, str, str], max_size: int, status: str
) -> Address:
    ton, npi = reader.integers(names[:2])
    address = reader.c_octet_string(names[2], max_size, status)
    return Address(address, ton, npi)


def _deliver_sm(reader: _Reader, sequence_number: int) -> MOPdu:
    service_type = reader.c_octet_string("service_type", 6, "ESME_RINVSERTYP")
    source = _address(reader, _SOURCE, 21, "ESME_RINVSRCADR")
    destination = _address(reader, _DEST, 21, "ESME_RINVDSTADR")
    esm_class, protocol_id, priority_flag = reader.integers(_CLASS_TO_PRIORITY)
    reader.c_octet_string("schedule_delivery_time", 17, "ESME_RINVSCHED")
    reader.c_octet_string("validity_period", 17, "ESME_RINVEXPIRY")
    registered_delivery, _, data_coding, _, sm_length = reader.integers(
        _REGISTERED_TO_LENGTH
    )
    short_message = reader.octets(sm_length, "sm_length", "ESME_RINVMSGLEN")
    tlvs = reader.tlvs()

    return MOPdu(
        command="deliver_sm",
        sequence_number=sequence_number,
        service_type=service_type,
        source=source,
        destination=destination,
        esm_class=esm_class,
        protocol_id=protocol_id,
        priority_flag=priority_flag,
        registered_delivery=registered_delivery,
        data_coding=data_coding,
        short_message=short_message,
        tlvs=tlvs,
    )


def _data_sm(reader: _Reader, sequence_number: int) -> MOPdu:
    service_type = reader.c_octet_string("service_type", 6, "ESME_RINVSERTYP")
    source = _address(reader, _SOURCE, 65, "ESME_RINVSRCADR")
    destination = _address(reader, _DEST, 65, "ESME_RINVDSTADR")
    esm_class, registered_delivery, data_coding = reader.integers(_DATA_SM_OCTETS)
    tlvs = reader.tlvs()

    return MOPdu(
        command="data_sm",
        sequence_number=sequence_number,
        service_type=service_type,
        source=source,
        destination=destination,
        esm_class=esm_class,
        protocol_id=0,
        priority_flag=0,
        registered_delivery=registered_delivery,
        data_coding=data_coding,
        short_message=b"",
        tlvs=tlvs,
    )


# --- encoding MO PDUs (the simulator's side) ------------------------------

TLVLike = TLV | tuple[int, bytes]
NO_ADDRESS = Address("")


def _c_octet_string(value: str | bytes) -> bytes:
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return raw + b"\0"


def _encode_tlvs(tlvs: Iterable[TLVLike]) -> bytes:
    out = bytearray()
    for tlv in tlvs:
        tag, value = (tlv.tag, tlv.value) if isinstance(tlv, TLV) else tlv
        out += _TLV_HEADER.pack(tag, len(value)) + value
    return bytes(out)


def encode_deliver_sm(sequence_number: int, **fields) -> bytes:
    """
    A whole deliver_sm PDU with exactly these field values (see `sm_body`).

    Built by hand rather than by the codec so that any value an SMSC may
    send (unknown data_coding, vendor TLVs, USSD TLVs) can be produced.
    """
    return frame(DELIVER_SM, 0, sequence_number, sm_body(**fields))


def encode_submit_sm(sequence_number: int, **fields) -> bytes:
    """
    A whole submit_sm PDU (see `sm_body`), for replies.

    Built by hand like deliver_sm, which has the same layout: the codec
    refuses the USSD TLVs (ussd_service_op, its_session_info) a USSD reply
    needs.
    """
    return frame(SUBMIT_SM, 0, sequence_number, sm_body(**fields))


def sm_body(
    *,
    service_type: str = "",
    source: Address = NO_ADDRESS,
    destination: Address = NO_ADDRESS,
    esm_class: int = 0,
    protocol_id: int = 0,
    priority_flag: int = 0,
    schedule_delivery_time: str = "",
    validity_period: str = "",
    registered_delivery: int = 0,
    replace_if_present_flag: int = 0,
    data_coding: int = 0,
    sm_default_msg_id: int = 0,
    short_message: bytes = b"",
    tlvs: Iterable[TLVLike] = (),
) -> bytes:
    """
    The body of a deliver_sm or submit_sm with exactly these field values.

    Nothing is validated beyond what the wire format itself needs.
    """
    return b"".join(
        [
            _c_octet_string(service_type),
            bytes([source.ton, source.npi]),
            _c_octet_string(source.address),
            bytes([destination.ton, destination.npi]),
            _c_octet_string(destination.address),
            bytes([esm_class, protocol_id, priority_flag]),
            _c_octet_string(schedule_delivery_time),
            _c_octet_string(validity_period),
            bytes([registered_delivery, replace_if_present_flag, data_coding]),
            bytes([sm_default_msg_id, len(short_message)]),
            short_message,
            _encode_tlvs(tlvs),
        ]
    )


def encode_data_sm(
    sequence_number: int,
    *,
    service_type: str = "",
    source: Address = NO_ADDRESS,
    destination: Address = NO_ADDRESS,
    esm_class: int = 0,
    registered_delivery: int = 0,
    data_coding: int = 0,
    tlvs: Iterable[TLVLike] = (),
) -> bytes:
    """A whole data_sm PDU with exactly these field values."""
    body = b"".join(
        [
            _c_octet_string(service_type),
            bytes([source.ton, source.npi]),
            _c_octet_string(source.address),
            bytes([destination.ton, destination.npi]),
            _c_octet_string(destination.address),
            bytes([esm_class, registered_delivery, data_coding]),
            _encode_tlvs(tlvs),
        ]
    )
    return frame(DATA_SM, 0, sequence_number, body)


# --- encoding through the smpp.pdu codec ----------------------------------


def _encode(command_id: int, status: int, sequence_number: int, **params) -> bytes:
    """
    Encode a PDU's body with the codec and frame it ourselves.

    The codec only knows the command_status values in its table; framing
    here lets a response carry any status a handler or a test chooses.
    """
    klass = operations.getPDUClass(
        getattr(pdu_types.CommandId, command_name(command_id))
    )
    pdu = klass(sequence_number, pdu_types.CommandStatus.ESME_ROK, **params)
    if status != 0 and getattr(pdu, "noBodyOnError", False):
        body = b""
    else:
        body = _encoder.encodeBody(pdu)
    return frame(command_id, status, sequence_number, body)


def _named(kind, names: dict[int, str], value: int, field: str):
    if value not in names:
        raise ValueError(f"{field} {value} is not a value SMPP 3.4 defines")
    return getattr(kind, names[value])


def encode_bind(
    command_id: int,
    sequence_number: int,
    *,
    system_id: str,
    password: str,
    system_type: str = "",
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> bytes:
    """A bind_receiver, bind_transmitter or bind_transceiver, version 3.4."""
    return _encode(
        command_id,
        0,
        sequence_number,
        system_id=system_id,
        password=password,
        system_type=system_type,
        interface_version=0x34,
        addr_ton=_named(
            pdu_types.AddrTon, constants.addr_ton_value_map, addr_ton, "addr_ton"
        ),
        addr_npi=_named(
            pdu_types.AddrNpi, constants.addr_npi_value_map, addr_npi, "addr_npi"
        ),
        address_range=address_range,
    )


def encode_bind_resp(
    command_id: int, sequence_number: int, status: int, system_id: str
) -> bytes:
    """The response to a bind; it has no body when the status is an error."""
    return _encode(
        command_id | RESPONSE_BIT, status, sequence_number, system_id=system_id
    )


def encode_enquire_link(sequence_number: int) -> bytes:
    return _encode(ENQUIRE_LINK, 0, sequence_number)


def encode_enquire_link_resp(sequence_number: int) -> bytes:
    return _encode(ENQUIRE_LINK | RESPONSE_BIT, 0, sequence_number)


def encode_unbind(sequence_number: int) -> bytes:
    return _encode(UNBIND, 0, sequence_number)


def encode_unbind_resp(sequence_number: int) -> bytes:
    return _encode(UNBIND | RESPONSE_BIT, 0, sequence_number)


def encode_generic_nack(sequence_number: int, status: int) -> bytes:
    return _encode(GENERIC_NACK, status, sequence_number)


def encode_deliver_sm_resp(sequence_number: int, status: int) -> bytes:
    """
    A deliver_sm_resp; its message_id is always empty, as SMPP 3.4 says.

    Framed here rather than by the codec, which gives the same bytes (the
    body is the empty message_id's NUL, whatever the status) in fifteen
    times the time, and this is sent for every PDU received.
    """
    return frame(DELIVER_SM | RESPONSE_BIT, status, sequence_number, b"\0")


def encode_data_sm_resp(sequence_number: int, status: int) -> bytes:
    """A data_sm_resp with an empty message_id, framed like deliver_sm_resp."""
    return frame(DATA_SM | RESPONSE_BIT, status, sequence_number, b"\0")


def encode_submit_sm_resp(sequence_number: int, status: int, message_id: str) -> bytes:
    """A submit_sm_resp; SMPP 3.4 leaves out its body when the status is an error."""
    body = b"" if status != 0 else _c_octet_string(message_id)
    return frame(SUBMIT_SM | RESPONSE_BIT, status, sequence_number, body)


def message_id_of(body: bytes) -> str:
    """The message_id of a submit_sm_resp body; empty when there is none."""
    return body.split(b"\0", 1)[0].decode("ascii", "replace")


def encode_mo_resp(command_id: int, sequence_number: int, status: int) -> bytes:
    """The response to a deliver_sm or a data_sm."""
    if command_id == DATA_SM:
        return encode_data_sm_resp(sequence_number, status)
    return encode_deliver_sm_resp(sequence_number, status)


def decode(header: Header, body: bytes):
    """
    Decode a simple PDU (bind_*, bind_*_resp, unbind, enquire_link...) with
    the codec; the result is an smpp.pdu PDU whose ``params`` hold the
    fields.  Raises the codec's PDUParseError on what it cannot read; its
    command_status is only meaningful for known values, so callers read the
    status from ``header``.
    """
    raw = frame(header.command_id, header.command_status, header.sequence_number, body)
    return _encoder.decode(io.BytesIO(raw))
