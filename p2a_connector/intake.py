"""
The intake: what happens to each deliver_sm between the session and the spool.

It decodes enough to know whether the PDU is a whole message or one segment,
routes it to a webhook, stores it, and only then names the status the
session answers with.  Backpressure lives here: past the spool's limits
(undelivered events, open reassemblies, the bytes they hold), or when the
spool fails, the answer is the bind's temporary status, so the SMSC keeps
the message and offers it again later.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import attrs
import orjson
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2a_connector import conversation, decode, segments, trail
from p2a_connector.alphabets import DecodeOptions
from p2a_connector.config import BindConfig, Config
from p2a_connector.metrics import Metrics
from p2a_connector.models import MOPdu
from p2a_connector.smpp_status import ESME_ROK, status_name
from p2a_connector.spool import Event, Segment, SpoolError, SpoolLimit

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of characters, by the 10 bits they stand for.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_SHIFTS = tuple(range(120, -1, -10))


def new_event_id(now: float | None = None) -> str:
    """
    A webhook-id: ``msg_`` and 26 Crockford base32 characters.

    The first ten encode the millisecond time, so ids sort by creation; the
    rest are 80 random bits, so ids from several instances never collide.
    """
    millis = int((time.time() if now is None else now) * 1000)
    return "msg_" + crockford(millis.to_bytes(6, "big") + os.urandom(10))


def crockford(sixteen: bytes) -> str:
    """
    128 bits as 26 Crockford base32 characters, most significant first (the
    first character carries only the top 3 bits, as ULIDs do).
    """
    # 26 characters are 130 bits: the value's 128 with two zero bits on top,
    # taken ten bits (two characters) at a time.
    value = int.from_bytes(sixteen, "big")
    return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _SHIFTS])


def encode_body(envelope: dict) -> bytes:
    """
    The compact UTF-8 JSON the webhook receives, fixed once per event:
    the bytes ``json.dumps(envelope, ensure_ascii=False, separators=(",",
    ":"))`` encodes, made by orjson in a tenth of the time.
    """
    return orjson.dumps(envelope)


class Intake:
    """Decodes, routes and spools each mobile-originated PDU."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        spool,
        clock: IReactorTime,
        on_event: Callable[[Event], None] = lambda event: None,
        metrics: Metrics | None = None,
    ):
        self.config = config
        self.spool = spool
        self.clock = clock
        self.on_event = on_event
        self.metrics = metrics or Metrics()
        self._options = {
            bind.name: config.decode_options(bind.name)
            for operator in config.operators
            for bind in operator.binds
        }
        self._operators = frozenset(operator.name for operator in config.operators)

    def reconfigure(self, config: Config) -> None:
        """Routes, limits and decode options of ``config`` from the next PDU."""
        # A removed bind's segments may still be waiting for their siblings:
        # they keep the options they arrived with.
        self._options = {
            **self._options,
            **{
                bind.name: config.decode_options(bind.name)
                for operator in config.operators
                for bind in operator.binds
            },
        }
        self._operators = frozenset(operator.name for operator in config.operators)
        self.config = config

    def assemble(
        self, records: list[dict | segments.Part], complete: bool
    ) -> tuple[str, str, bytes]:
        """
        The spool's assembler: the segments of one message into one event.
        A record may come as the Part `_item` made of it (`Segment.parsed`).
        """
        event_id = new_event_id(self.clock.seconds())
        event_type, envelope = decode.build_event(
            records,
            event_id=event_id,
            options=self._decode_options(segments.record_of(records[0])["bind"]),
            complete=complete,
            completed_at=self.clock.seconds(),
        )
        return event_id, event_type, encode_body(envelope)

    def handler(self, bind: BindConfig) -> Callable[[MOPdu, object], Deferred]:
        """The session's MO handler for one bind."""

        def handle(mo: MOPdu, session: object) -> Deferred:
            return self.receive(bind, mo)

        return handle

    def receive(self, bind: BindConfig, mo: MOPdu) -> Deferred[int]:
        """
        Store one deliver_sm or data_sm; fire with the command_status to
        answer.  Plain callbacks, not a generator: this runs for every PDU,
        and inlineCallbacks cost about three times as much.
        """
        fields = {"bind": bind.name, "sequence_number": mo.sequence_number}

        if self.spool.pending() >= self.config.spool.max_pending:
            self.log.warn(
                "spool holds {pending} undelivered events, limit {limit}: "
                "answering {status} on {bind}",
                pending=self.spool.pending(),
                limit=self.config.spool.max_pending,
                status=status_name(bind.busy_status),
                **fields,
            )
            self.metrics.spool_refused(bind.operator, "max_pending")
            return succeed(bind.busy_status)

        if bind.operator not in self._operators:
            # A reload removed the operator while this bind was unbinding:
            # there is no route for it, and the SMSC may offer it elsewhere.
            self.log.warn(
                "operator {operator} is no longer configured: answering {status} "
                "to {command} seq {sequence_number} on {bind}",
                operator=bind.operator,
                status=status_name(bind.busy_status),
                command=mo.command,
                **fields,
            )
            return succeed(bind.busy_status)

        try:
            item = self._item(bind, mo)
        except decode.DecodeError as e:
            self.log.warn(
                "refused {command} seq {sequence_number} on {bind}: {reason} "
                "({status})",
                command=mo.command,
                reason=e.reason,
                status=status_name(e.status),
                **fields,
            )
            return succeed(e.status)

        if isinstance(item, Event) and item.type == "receipt.received":
            stored = self._linked(item).addCallback(self.spool.store)
        else:
            stored = maybeDeferred(self.spool.store, item)
        return stored.addCallbacks(
            self._acknowledged,
            self._not_stored,
            callbackArgs=(bind, mo, item),
            errbackArgs=(bind, mo, item),
        )

    def _not_stored(
        self, failure: Failure, bind: BindConfig, mo: MOPdu, item: Event | Segment
    ) -> int:
        """The busy status for a PDU the spool did not keep, logged."""
        fields = {"bind": bind.name, "sequence_number": mo.sequence_number}
        status = status_name(bind.busy_status)
        if failure.check(SpoolLimit):
            e = failure.value
            self.log.warn(
                "limits.{limit} = {bound} reached for operator {operator}: "
                "answering {status} to {command} seq {sequence_number} on {bind}",
                limit=e.limit,
                bound=e.bound,
                operator=e.operator,
                key=getattr(item, "key", None),
                command=mo.command,
                status=status,
                **fields,
            )
            self.metrics.spool_refused(e.operator, e.limit)
        elif failure.check(SpoolError):
            self.log.error(
                "spool failed, answering {status} on {bind}: {error}",
                status=status,
                error=str(failure.value),
                **fields,
            )
            self.metrics.spool_errors["store"].inc()
        else:
            # A fault of ours while assembling: the SMSC keeps the segment and
            # offers it again, which beats acknowledging what was not stored.
            self.log.failure(
                "could not store {command} seq {sequence_number} on {bind}; "
                "answering {status}",
                failure,
                command=mo.command,
                status=status,
                **fields,
            )
        return bind.busy_status

    def _acknowledged(
        self,
        completed: Event | None,
        bind: BindConfig,
        mo: MOPdu,
        item: Event | Segment,
    ) -> int:
        """ESME_ROK for a stored PDU, with one line per acknowledgement."""
        # The segment that completes a message is named on the line of the
        # event it completed.
        fields = {"bind": bind.name, "sequence_number": mo.sequence_number}
        event = item if isinstance(item, Event) else completed
        if isinstance(item, Segment) and event is None:
            self.log.info(
                "acknowledged segment {seqnum}/{total} of {key} on {bind}",
                seqnum=item.seqnum,
                total=item.total,
                key=item.key,
                id=None,
                **fields,
            )
        elif isinstance(item, Segment):
            self.log.info(
                "acknowledged {id} ({type}) for {webhook} on {bind}, completed by "
                "segment {seqnum}/{total} of {key}",
                id=event.id,
                type=event.type,
                webhook=event.webhook,
                seqnum=item.seqnum,
                total=item.total,
                key=item.key,
                **fields,
            )
        elif event is not None:
            self.log.info(
                "acknowledged {id} ({type}) for {webhook} on {bind}",
                id=event.id,
                type=event.type,
                webhook=event.webhook,
                **fields,
            )
        if event is not None:
            self.on_event(event)
        return ESME_ROK

    @inlineCallbacks
    def _linked(self, event: Event):
        """
        A receipt with ``data.reply_id`` when it reports on a reply (or an
        outbound API message) this connector sent; else as it was.
        """
        envelope = json.loads(event.body)
        message_id = envelope["data"]["receipt"].get("message_id")
        if not message_id:
            return event
        outbound_id = yield self.spool.reply_for(
            message_id, envelope["data"]["operator"]
        )
        if outbound_id is None:
            return event
        envelope["data"]["reply_id"] = outbound_id
        return attrs.evolve(event, body=encode_body(envelope))

    def _item(self, bind: BindConfig, mo: MOPdu) -> Event | Segment:
        now = self.clock.seconds()
        inspected = decode.inspect(mo)
        record = decode.segment_record(
            mo, inspected, operator=bind.operator, bind=bind.name, received_at=now
        )
        webhook = self.config.route(bind.operator, mo.destination.address)

        concat = inspected.concat
        max_segments = self.config.limits.max_segments
        if concat is not None and concat.total <= max_segments:
            return Segment(
                key=decode.reassembly_key(bind.operator, mo, concat),
                seqnum=concat.seqnum,
                total=concat.total,
                record=record,
                webhook=webhook,
                received_at=now,
                operator=bind.operator,
                conversation=conversation.conversation_key(
                    bind.operator, mo.source.address, mo.destination.address
                ),
                parsed=decode.part_of(record, inspected),
            )

        event_id = new_event_id(now)
        if concat is not None:
            # Refusing would lose text no retry can save; alone it holds nothing.
            self.log.warn(
                "segment {seqnum}/{total} seq {sequence_number} on {bind} declares "
                "more than limits.max_segments = {max_segments} parts: delivered "
                "alone as {id}, marked incomplete",
                seqnum=concat.seqnum,
                total=concat.total,
                max_segments=max_segments,
                id=event_id,
                bind=bind.name,
                sequence_number=mo.sequence_number,
            )
        event_type, envelope = decode.build_single_event(
            record,
            inspected,
            event_id=event_id,
            options=self._decode_options(bind.name),
            complete=concat is None,
            completed_at=now,
        )
        conversation_key, ussd = conversation.keys(event_type, envelope["data"])
        return Event(
            id=event_id,
            type=event_type,
            webhook=webhook,
            body=encode_body(envelope),
            created_at=now,
            trail=(trail.received(record),),
            conversation=conversation_key,
            ussd=ussd,
        )

    def _decode_options(self, bind_name: str) -> DecodeOptions:
        # A bind that left the configuration while its segments waited gets
        # the defaults.
        return self._options.get(bind_name) or DecodeOptions()
