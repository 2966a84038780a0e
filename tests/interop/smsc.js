// An SMSC for the interoperability tests, built on node-smpp (npm "smpp"),
// an SMPP implementation that shares no code with the connector: every PDU
// the connector reads here was encoded by node-smpp's own codec.
//
//   node smsc.js CORPUS.json [PORT]
//
// It listens on 127.0.0.1 (PORT, or one the system picks), accepts a bind
// from system_id "p2a" with password "secret", and then sends each entry of
// the corpus as a deliver_sm, one after the other.  It answers enquire_link
// and unbind.  Everything it has to say goes to stdout as one JSON object a
// line: {"event": "listening", "port": N}, {"event": "bound", ...}, one
// {"event": "deliver_sm_resp", "index": I, "command_status": S} per entry,
// then {"event": "done"}.
//
// A corpus entry:
//   {"source": [address, ton, npi], "destination": [address, ton, npi],
//    "esm_class": 0, "data_coding": 0,
//    "short_message": {"hex": "..."}             octets as they are, or
//                     {"text": "...", "udh": "hex"}   node-smpp encodes the
//                                                 text for data_coding,
//    "tlvs": {"sar_msg_ref_num": 7, "message_payload": {"hex": "..."}, ...},
//    "vendor_tlvs": [[tag, "hex"], ...]}
// TLVs are named as node-smpp names them; a value is a number, a string, or
// {"hex": ...} / {"text": ...} like short_message.

"use strict";

const fs = require("fs");
const smpp = require("smpp");

const SYSTEM_ID = "p2a";
const PASSWORD = "secret";

function say(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + "\n");
}

function octets(value) {
  if (value === null || typeof value !== "object") {
    return value;
  }
  if ("hex" in value) {
    return Buffer.from(value.hex, "hex");
  }
  if ("udh" in value) {
    return { udh: Buffer.from(value.udh, "hex"), message: value.text };
  }
  return value.text;
}

// Vendor tags are not in node-smpp's table; it encodes them once told their
// name and type.
function vendorName(tag) {
  const name = "vendor_" + tag.toString(16);
  if (!(name in smpp.tlvs)) {
    smpp.addTLV(name, { id: tag, type: smpp.types.tlv.buffer });
  }
  return name;
}

function deliverSm(entry) {
  const [source, sourceTon, sourceNpi] = entry.source;
  const [destination, destinationTon, destinationNpi] = entry.destination;
  const options = {
    source_addr: source,
    source_addr_ton: sourceTon,
    source_addr_npi: sourceNpi,
    destination_addr: destination,
    dest_addr_ton: destinationTon,
    dest_addr_npi: destinationNpi,
    esm_class: entry.esm_class || 0,
    data_coding: entry.data_coding || 0,
    short_message: entry.short_message
      ? octets(entry.short_message)
      : Buffer.alloc(0),
  };
  for (const [name, value] of Object.entries(entry.tlvs || {})) {
    options[name] = octets(value);
  }
  for (const [tag, hex] of entry.vendor_tlvs || []) {
    options[vendorName(tag)] = Buffer.from(hex, "hex");
  }
  return options;
}

function sendCorpus(session, corpus) {
  let index = 0;
  const next = () => {
    if (index === corpus.length) {
      say("done", { sent: corpus.length });
      return;
    }
    const current = index++;
    const sent = session.deliver_sm(deliverSm(corpus[current]), (resp) => {
      say("deliver_sm_resp", {
        index: current,
        command: resp.command,
        command_status: resp.command_status,
      });
      next();
    });
    if (!sent) {
      say("error", { index: current, reason: "the connection is not writable" });
    }
  };
  next();
}

function main() {
  const corpus = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const port = Number(process.argv[3] || 0);

  const server = smpp.createServer((session) => {
    const bind = (pdu) => {
      const accepted =
        pdu.system_id === SYSTEM_ID && pdu.password === PASSWORD;
      session.send(
        pdu.response({
          command_status: accepted ? smpp.ESME_ROK : smpp.ESME_RBINDFAIL,
          system_id: "node-smsc",
        })
      );
      say("bound", { command: pdu.command, system_id: pdu.system_id, accepted });
      if (accepted) {
        sendCorpus(session, corpus);
      } else {
        session.close();
      }
    };
    session.on("bind_transceiver", bind);
    session.on("bind_receiver", bind);
    session.on("enquire_link", (pdu) => session.send(pdu.response()));
    session.on("unbind", (pdu) => {
      say("unbind", {});
      session.send(pdu.response());
      session.close();
    });
    session.on("generic_nack", (pdu) => {
      say("generic_nack", { command_status: pdu.command_status });
    });
    session.on("error", (error) => say("error", { reason: String(error) }));
  });

  server.listen(port, "127.0.0.1", () => {
    say("listening", { port: server.address().port });
  });
}

main();
