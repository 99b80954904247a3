//! IPFIX (RFC 7011) messages of flow records: a template set per address family, and data sets
//! filled up to `MAX_MESSAGE_LEN`. Sans-IO: the exporter sends what this writes.
//!
//! ```text
//! message header: version 10 | length | export time | sequence number | observation domain
//! set header:     set id (2: templates, 256..: data of that template) | length
//! template:       template id | field count | (element id | length) per field
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use mesh_config::control::Direction;

/// The protocol version in every message header.
pub const VERSION: u16 = 10;
#[cfg(test)]
pub const MESSAGE_HEADER_LEN: usize = 16;
pub const SET_HEADER_LEN: usize = 4;
pub const TEMPLATE_SET_ID: u16 = 2;
pub const TEMPLATE_IPV4: u16 = 256;
pub const TEMPLATE_IPV6: u16 = 257;
/// Messages stay below a 1500-byte underlay MTU with IP and UDP headers.
pub const MAX_MESSAGE_LEN: usize = 1400;
/// The field length that marks a variable-length field (RFC 7011 §7).
const VARIABLE_LENGTH: u16 = 0xffff;
/// The longest string a record carries (names are cut).
const MAX_NAME_LEN: usize = 64;

/// Information elements (IANA "IPFIX Information Elements").
mod element {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const INTERFACE_NAME: u16 = 82;
    pub const INTERFACE_DESCRIPTION: u16 = 83;
    pub const FLOW_END_REASON: u16 = 136;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const LAYER2_SEGMENT_ID: u16 = 351;
}

/// The fields after the addresses, the same for both families.
const COMMON_FIELDS: [(u16, u16); 13] = [
    (element::SOURCE_TRANSPORT_PORT, 2),
    (element::DESTINATION_TRANSPORT_PORT, 2),
    (element::PROTOCOL_IDENTIFIER, 1),
    (element::TCP_CONTROL_BITS, 2),
    (element::FLOW_DIRECTION, 1),
    (element::LAYER2_SEGMENT_ID, 8),
    (element::OCTET_DELTA_COUNT, 8),
    (element::PACKET_DELTA_COUNT, 8),
    (element::FLOW_START_MILLISECONDS, 8),
    (element::FLOW_END_MILLISECONDS, 8),
    (element::FLOW_END_REASON, 1),
    // The overlay, and the peer node the flow goes to or comes from: the flow's "interface" is
    // the tunnel between this node and that peer on that overlay.
    (element::INTERFACE_NAME, VARIABLE_LENGTH),
    (element::INTERFACE_DESCRIPTION, VARIABLE_LENGTH),
];

/// The top byte of layer2SegmentId that says the rest is a VXLAN network identifier.
const SEGMENT_TYPE_VXLAN: u64 = 0x01 << 56;

/// Why a record was exported (flowEndReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    IdleTimeout = 1,
    ActiveTimeout = 2,
    EndOfFlow = 3,
}

/// A flow's source and destination, of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addresses {
    V4 { source: Ipv4Addr, destination: Ipv4Addr },
    V6 { source: Ipv6Addr, destination: Ipv6Addr },
}

/// One flow record as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub addresses: Addresses,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: u8,
    pub tcp_flags: u16,
    pub direction: Direction,
    pub vni: u32,
    pub octets: u64,
    pub packets: u64,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub end_reason: EndReason,
    pub overlay: &'a str,
    pub peer: &'a str,
}

impl Record<'_> {
    fn template(&self) -> u16 {
        match self.addresses {
            Addresses::V4 { .. } => TEMPLATE_IPV4,
            Addresses::V6 { .. } => TEMPLATE_IPV6,
        }
    }

    /// Writes the record in its template's field order.
    fn write(&self, out: &mut Vec<u8>) {
        match self.addresses {
            Addresses::V4 { source, destination } => {
                out.extend_from_slice(&source.octets());
                out.extend_from_slice(&destination.octets());
            }
            Addresses::V6 { source, destination } => {
                out.extend_from_slice(&source.octets());
                out.extend_from_slice(&destination.octets());
            }
        }
        out.extend_from_slice(&self.source_port.to_be_bytes());
        out.extend_from_slice(&self.destination_port.to_be_bytes());
        out.push(self.protocol);
        out.extend_from_slice(&self.tcp_flags.to_be_bytes());
        out.push(match self.direction {
            Direction::In => 0,
            Direction::Out => 1,
        });
        out.extend_from_slice(&(SEGMENT_TYPE_VXLAN | u64::from(self.vni)).to_be_bytes());
        for value in [self.octets, self.packets, self.start_unix_ms, self.end_unix_ms] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        out.push(self.end_reason as u8);
        for name in [self.overlay, self.peer] {
            let name = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
    }

    /// The most bytes `write` appends.
    const MAX_LEN: usize = 2 * 16 + 2 + 2 + 1 + 2 + 1 + 8 + 4 * 8 + 1 + 2 * (1 + MAX_NAME_LEN);
}

/// Numbers the messages of one exporter (the sequence number counts data records).
#[derive(Debug)]
pub struct MessageWriter {
    domain: u32,
    records_sent: u32,
}

impl MessageWriter {
    pub fn new(observation_domain: u32) -> Self {
        MessageWriter { domain: observation_domain, records_sent: 0 }
    }

    /// One message with both templates.
    pub fn templates(&self, export_secs: u32, out: &mut Vec<u8>) {
        let start = self.header(export_secs, out);
        let set = begin_set(out, TEMPLATE_SET_ID);
        for (template, source, destination) in [
            (TEMPLATE_IPV4, element::SOURCE_IPV4_ADDRESS, element::DESTINATION_IPV4_ADDRESS),
            (TEMPLATE_IPV6, element::SOURCE_IPV6_ADDRESS, element::DESTINATION_IPV6_ADDRESS),
        ] {
            let address_len = if template == TEMPLATE_IPV4 { 4 } else { 16 };
            out.extend_from_slice(&template.to_be_bytes());
            out.extend_from_slice(&(2 + COMMON_FIELDS.len() as u16).to_be_bytes());
            for (id, len) in [(source, address_len), (destination, address_len)].into_iter().chain(COMMON_FIELDS) {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        end(out, set);
        end(out, start);
    }

    /// One message with as many of `records` (from the front) as fit; returns how many.
    pub fn records(&mut self, export_secs: u32, records: &[Record<'_>], out: &mut Vec<u8>) -> usize {
        let start = self.header(export_secs, out);
        let mut set: Option<(u16, usize)> = None;
        let mut taken = 0;
        for record in records {
            let room = MAX_MESSAGE_LEN - (out.len() - start);
            let new_set = set.is_none_or(|(template, _)| template != record.template());
            if room < Record::MAX_LEN + if new_set { SET_HEADER_LEN } else { 0 } {
                break;
            }
            if new_set {
                if let Some((_, open)) = set {
                    end(out, open);
                }
                set = Some((record.template(), begin_set(out, record.template())));
            }
            record.write(out);
            taken += 1;
        }
        if let Some((_, open)) = set {
            end(out, open);
        }
        end(out, start);
        self.records_sent = self.records_sent.wrapping_add(taken as u32);
        taken
    }

    /// Appends a message header (length filled by `end`); returns where it starts.
    fn header(&self, export_secs: u32, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&export_secs.to_be_bytes());
        out.extend_from_slice(&self.records_sent.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
        start
    }
}

fn begin_set(out: &mut Vec<u8>, id: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    start
}

/// Writes the length of the message or set that starts at `start` (both have it at offset 2).
fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(v6: bool, peer: &str) -> Record<'_> {
        let addresses = match v6 {
            false => Addresses::V4 { source: Ipv4Addr::new(10, 244, 0, 1), destination: Ipv4Addr::new(10, 244, 0, 2) },
            true => Addresses::V6 { source: "fd00::1".parse().unwrap(), destination: "fd00::2".parse().unwrap() },
        };
        Record {
            addresses,
            source_port: 1,
            destination_port: 2,
            protocol: 17,
            tcp_flags: 0,
            direction: Direction::Out,
            vni: 4242,
            octets: 640,
            packets: 5,
            start_unix_ms: 1000,
            end_unix_ms: 2000,
            end_reason: EndReason::IdleTimeout,
            overlay: "ovl0",
            peer,
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// Parses a message back: (set id, set body) per set, after checking every length.
    fn sets(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(u16_at(message, 0), VERSION);
        assert_eq!(usize::from(u16_at(message, 2)), message.len(), "message length");
        let mut at = MESSAGE_HEADER_LEN;
        let mut out = Vec::new();
        while at < message.len() {
            let len = usize::from(u16_at(message, at + 2));
            assert!(len >= SET_HEADER_LEN && at + len <= message.len(), "set length {len} at {at}");
            out.push((u16_at(message, at), message[at + SET_HEADER_LEN..at + len].to_vec()));
            at += len;
        }
        out
    }

    /// Decodes the records of a data set with the template's field lengths.
    fn decode(template: &[(u16, u16)], mut body: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut records = Vec::new();
        while !body.is_empty() {
            let mut fields = Vec::new();
            for (_, len) in template {
                let (len, skip) = match *len {
                    VARIABLE_LENGTH => (usize::from(body[0]), 1),
                    fixed => (usize::from(fixed), 0),
                };
                fields.push(body[skip..skip + len].to_vec());
                body = &body[skip + len..];
            }
            records.push(fields);
        }
        records
    }

    /// The templates of a template set body: id -> fields.
    fn templates(mut body: &[u8]) -> Vec<(u16, Vec<(u16, u16)>)> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let (id, count) = (u16_at(body, 0), usize::from(u16_at(body, 2)));
            let fields = (0..count).map(|i| (u16_at(body, 4 + 4 * i), u16_at(body, 6 + 4 * i))).collect();
            out.push((id, fields));
            body = &body[4 + 4 * count..];
        }
        out
    }

    #[test]
    fn message_header_and_template_bytes() {
        let writer = MessageWriter::new(7);
        let mut out = Vec::new();
        writer.templates(0x0102_0304, &mut out);
        assert_eq!(&out[..MESSAGE_HEADER_LEN], &[0, 10, 0, 148, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 7]);
        // Set header, then template 256 with 15 fields, the first the IPv4 source address.
        assert_eq!(&out[16..28], &[0, 2, 0, 132, 1, 0, 0, 15, 0, 8, 0, 4]);
        let parsed = templates(&sets(&out)[0].1);
        assert_eq!(parsed.iter().map(|t| t.0).collect::<Vec<_>>(), vec![TEMPLATE_IPV4, TEMPLATE_IPV6]);
        assert_eq!(parsed[1].1[0], (element::SOURCE_IPV6_ADDRESS, 16));
    }

    #[test]
    fn a_record_reads_back_with_its_template() {
        let mut writer = MessageWriter::new(1);
        let mut template_message = Vec::new();
        writer.templates(0, &mut template_message);
        let template = templates(&sets(&template_message)[0].1).remove(0).1;
        let mut out = Vec::new();
        assert_eq!(writer.records(0, &[record(false, "n2")], &mut out), 1);
        let data = sets(&out);
        assert_eq!(data[0].0, TEMPLATE_IPV4);
        let fields = decode(&template, &data[0].1).remove(0);
        assert_eq!(fields[0], [10, 244, 0, 1]);
        assert_eq!(fields[7], (SEGMENT_TYPE_VXLAN | 4242).to_be_bytes());
        assert_eq!(fields[8], 640u64.to_be_bytes());
        assert_eq!(fields[9], 5u64.to_be_bytes());
        assert_eq!((fields[13].as_slice(), fields[14].as_slice()), (&b"ovl0"[..], &b"n2"[..]));
        // The next message's sequence number counts the record.
        let mut next = Vec::new();
        writer.records(0, &[], &mut next);
        assert_eq!(&next[8..12], &[0, 0, 0, 1]);
    }

    proptest! {
        #[test]
        fn every_message_parses_back(
            v6 in proptest::collection::vec(any::<bool>(), 0..80),
            peer in "[a-z0-9-]{0,100}",
        ) {
            let mut writer = MessageWriter::new(1);
            let mut template_message = Vec::new();
            writer.templates(0, &mut template_message);
            let templates = templates(&sets(&template_message)[0].1);
            let records: Vec<Record<'_>> = v6.iter().map(|v6| record(*v6, &peer)).collect();
            let mut left = &records[..];
            let mut decoded = 0;
            while !left.is_empty() {
                let mut out = Vec::new();
                let taken = writer.records(0, left, &mut out);
                prop_assert!(taken > 0 && out.len() <= MAX_MESSAGE_LEN);
                for (id, body) in sets(&out) {
                    let template = &templates.iter().find(|t| t.0 == id).expect("a known template").1;
                    for fields in decode(template, &body) {
                        prop_assert_eq!(&fields[14][..], &peer.as_bytes()[..peer.len().min(MAX_NAME_LEN)]);
                        decoded += 1;
                    }
                }
                left = &left[taken..];
            }
            prop_assert_eq!(decoded, records.len());
        }
    }
}
