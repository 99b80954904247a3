//! A pcapng writer (draft-ietf-opsawg-pcapng): a section header, one interface description per
//! capture interface, and enhanced packet blocks with a comment and the direction flag.
//! Little-endian, as the byte-order magic of the section header says.

/// Block types.
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u16 = 1;

/// Option codes.
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USER_APPLICATION: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
/// if_tsresol: 10^-9 s.
const NANOSECONDS: u8 = 9;

/// Block type, block length, and the trailing copy of the length.
const BLOCK_OVERHEAD: usize = 12;

/// The direction bits of `epb_flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketDirection {
    Inbound = 1,
    Outbound = 2,
}

/// One packet for an enhanced packet block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub interface: u32,
    pub at_unix_ns: u64,
    pub original_len: u32,
    pub data: &'a [u8],
    pub direction: PacketDirection,
    pub comment: &'a str,
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// Appends one block: type, total length, `body`, total length.
fn block(out: &mut Vec<u8>, block_type: u32, body: &[u8]) {
    let total = (BLOCK_OVERHEAD + body.len()) as u32;
    out.extend_from_slice(&block_type.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
}

/// Appends one option (code, length, value padded to 32 bits).
fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
    // Values longer than an option can hold are cut (only a comment could be).
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&(value.len() as u16).to_le_bytes());
    body.extend_from_slice(value);
    body.resize(body.len() + padded(value.len()) - value.len(), 0);
}

fn end_of_options(body: &mut Vec<u8>) {
    body.extend_from_slice(&OPT_END.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
}

/// The section header: version 1.0, section length unknown (a stream).
pub fn section_header(out: &mut Vec<u8>, application: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    option(&mut body, SHB_USER_APPLICATION, application.as_bytes());
    end_of_options(&mut body);
    block(out, SECTION_HEADER, &body);
}

/// An Ethernet interface with nanosecond timestamps.
pub fn interface_description(out: &mut Vec<u8>, name: &str, description: &str, snaplen: u32) {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&snaplen.to_le_bytes());
    option(&mut body, IF_NAME, name.as_bytes());
    option(&mut body, IF_DESCRIPTION, description.as_bytes());
    option(&mut body, IF_TSRESOL, &[NANOSECONDS]);
    end_of_options(&mut body);
    block(out, INTERFACE_DESCRIPTION, &body);
}

pub fn enhanced_packet(out: &mut Vec<u8>, packet: &Packet<'_>) {
    let mut body = Vec::with_capacity(20 + padded(packet.data.len()) + 32 + packet.comment.len());
    body.extend_from_slice(&packet.interface.to_le_bytes());
    body.extend_from_slice(&((packet.at_unix_ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(packet.at_unix_ns as u32).to_le_bytes());
    body.extend_from_slice(&(packet.data.len() as u32).to_le_bytes());
    body.extend_from_slice(&packet.original_len.to_le_bytes());
    body.extend_from_slice(packet.data);
    body.resize(body.len() + padded(packet.data.len()) - packet.data.len(), 0);
    option(&mut body, OPT_COMMENT, packet.comment.as_bytes());
    option(&mut body, EPB_FLAGS, &(packet.direction as u32).to_le_bytes());
    end_of_options(&mut body);
    block(out, ENHANCED_PACKET, &body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A block as read back: type and body, after checking both length fields.
    fn blocks(mut bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let total = u32_at(bytes, 4) as usize;
            assert_eq!(total % 4, 0, "block length is a multiple of 4");
            assert_eq!(u32_at(bytes, total - 4) as usize, total, "trailing length matches");
            out.push((u32_at(bytes, 0), bytes[8..total - 4].to_vec()));
            bytes = &bytes[total..];
        }
        out
    }

    /// The options after `fixed` bytes of a block body, up to the end-of-options.
    fn options(body: &[u8], fixed: usize) -> Vec<(u16, Vec<u8>)> {
        let mut at = fixed;
        let mut out = Vec::new();
        loop {
            let code = u16::from_le_bytes([body[at], body[at + 1]]);
            let len = usize::from(u16::from_le_bytes([body[at + 2], body[at + 3]]));
            if code == OPT_END {
                assert_eq!(at + 4, body.len(), "end of options ends the block");
                return out;
            }
            out.push((code, body[at + 4..at + 4 + len].to_vec()));
            at += 4 + padded(len);
        }
    }

    #[test]
    fn section_header_bytes() {
        let mut out = Vec::new();
        section_header(&mut out, "ik");
        #[rustfmt::skip]
        let expected = [
            0x0a, 0x0d, 0x0d, 0x0a, 40, 0, 0, 0,
            0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            4, 0, 2, 0, b'i', b'k', 0, 0,
            0, 0, 0, 0, 40, 0, 0, 0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn enhanced_packet_bytes() {
        let mut out = Vec::new();
        let packet = Packet {
            interface: 3,
            at_unix_ns: 0x1_0000_0002,
            original_len: 9,
            data: &[0xaa; 5],
            direction: PacketDirection::Outbound,
            comment: "c",
        };
        enhanced_packet(&mut out, &packet);
        #[rustfmt::skip]
        let expected = [
            6, 0, 0, 0, 60, 0, 0, 0,
            3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0,
            0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0,
            1, 0, 1, 0, b'c', 0, 0, 0,
            2, 0, 4, 0, 2, 0, 0, 0,
            0, 0, 0, 0,
            60, 0, 0, 0,
        ];
        assert_eq!(out, expected);
    }

    proptest! {
        #[test]
        fn every_packet_parses_back(
            interface in 0u32..64,
            at_unix_ns: u64,
            data in proptest::collection::vec(any::<u8>(), 0..300),
            comment in ".{0,80}",
            name in "[a-z0-9/]{0,20}",
            outbound: bool,
        ) {
            let mut out = Vec::new();
            section_header(&mut out, "ikectl");
            interface_description(&mut out, &name, "d", 1500);
            let direction = if outbound { PacketDirection::Outbound } else { PacketDirection::Inbound };
            let original_len = data.len() as u32 + 7;
            let packet = Packet { interface, at_unix_ns, original_len, data: &data, direction, comment: &comment };
            enhanced_packet(&mut out, &packet);
            let blocks = blocks(&out);
            prop_assert_eq!(blocks.iter().map(|b| b.0).collect::<Vec<_>>(), vec![SECTION_HEADER, INTERFACE_DESCRIPTION, ENHANCED_PACKET]);
            let idb = options(&blocks[1].1, 8);
            prop_assert_eq!(&idb[0], &(IF_NAME, name.as_bytes().to_vec()));
            let body = &blocks[2].1;
            let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
            prop_assert_eq!(u32_at(0), interface);
            prop_assert_eq!((u64::from(u32_at(4)) << 32) | u64::from(u32_at(8)), at_unix_ns);
            prop_assert_eq!(u32_at(12) as usize, data.len());
            prop_assert_eq!(u32_at(16), original_len);
            prop_assert_eq!(&body[20..20 + data.len()], &data[..]);
            let options = options(body, 20 + padded(data.len()));
            prop_assert_eq!(&options[0], &(OPT_COMMENT, comment.as_bytes().to_vec()));
            prop_assert_eq!(&options[1], &(EPB_FLAGS, (direction as u32).to_le_bytes().to_vec()));
        }
    }
}
