//! meshd's in-band control messages: ESP payloads with next header 253 (RFC 3692, "use for
//! experimentation and testing"), sealed with the pair's own SAs, so only a meshd peer that holds
//! the keys ever reads one. Path-MTU probes and their acknowledgements travel this way; the type
//! byte leaves room for more; `ikectl ping` sends echo requests and gets echo replies.
//!
//! ```text
//! 0          1         2            4               8            10           12
//! | version  | type    | reserved 0 | id (32 bits)  | size (16)  | reserved 0 | padding (zeros) ...
//! ```
//! `size` is what the message is about: for a probe, the length of the whole outer IP packet it
//! was padded to; an acknowledgement repeats the probe's id and size. Receivers ignore the
//! reserved bytes and the padding.

use super::{read_u16, read_u32, write_u16, write_u32, Error, Result};

/// ESP next header value of an in-band message.
pub const NEXT_HEADER: u8 = 253;
/// The only version so far; a receiver refuses others.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;

mod field {
    use crate::wire::Field;
    #[cfg(any(test, feature = "internals"))]
    use crate::wire::Rest;

    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const RESERVED_1: Field = 2..4;
    pub const ID: Field = 4..8;
    pub const SIZE: Field = 8..10;
    pub const RESERVED_2: Field = 10..12;
    #[cfg(any(test, feature = "internals"))]
    pub const PADDING: Rest = super::HEADER_LEN..;
}

/// What an in-band message is. Unknown types parse, so that an older meshd can count and ignore
/// what a newer one sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A path-MTU probe, padded to `size`; the receiver answers with a [`MessageType::ProbeAck`].
    Probe,
    /// "Your probe `id` of `size` bytes arrived."
    ProbeAck,
    /// `ikectl ping`: padded to `size`; the receiver answers with an [`MessageType::EchoReply`] of
    /// the same id and size.
    EchoRequest,
    /// The answer to an echo request.
    EchoReply,
    Unknown(u8),
}

impl MessageType {
    const PROBE: u8 = 1;
    const PROBE_ACK: u8 = 2;
    const ECHO_REQUEST: u8 = 3;
    const ECHO_REPLY: u8 = 4;

    pub fn from_byte(value: u8) -> Self {
        match value {
            Self::PROBE => MessageType::Probe,
            Self::PROBE_ACK => MessageType::ProbeAck,
            Self::ECHO_REQUEST => MessageType::EchoRequest,
            Self::ECHO_REPLY => MessageType::EchoReply,
            other => MessageType::Unknown(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            MessageType::Probe => Self::PROBE,
            MessageType::ProbeAck => Self::PROBE_ACK,
            MessageType::EchoRequest => Self::ECHO_REQUEST,
            MessageType::EchoReply => Self::ECHO_REPLY,
            MessageType::Unknown(other) => other,
        }
    }
}

crate::wire::view! {
    /// A read/write view of an in-band message (the decrypted ESP payload).
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    fn check_fields(&self) -> Result<()> {
        if self.version() != VERSION {
            return Err(Error::Malformed("in-band message version is not 1"));
        }
        Ok(())
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn message_type(&self) -> MessageType {
        MessageType::from_byte(self.buffer.as_ref()[field::TYPE])
    }

    pub fn id(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ID)
    }

    pub fn size(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SIZE)
    }

    /// Everything after the header (a probe's padding).
    #[cfg(any(test, feature = "internals"))]
    pub fn padding(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PADDING]
    }
}

/// An in-band message header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InbandHeader {
    pub message_type: MessageType,
    pub id: u32,
    pub size: u16,
}

impl InbandHeader {
    /// Reads the header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Self {
        InbandHeader { message_type: packet.message_type(), id: packet.id(), size: packet.size() }
    }

    /// Writes `HEADER_LEN` bytes (version, type, id, size, reserved zeros) at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`.
    pub fn emit(&self, buf: &mut [u8]) {
        let header = &mut buf[..HEADER_LEN];
        header[field::VERSION] = VERSION;
        header[field::TYPE] = self.message_type.to_byte();
        write_u16(header, field::RESERVED_1, 0);
        write_u32(header, field::ID, self.id);
        write_u16(header, field::SIZE, self.size);
        write_u16(header, field::RESERVED_2, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A probe, id 0x01020304, for a 1280-byte packet, with 4 bytes of padding.
    const PROBE: [u8; 16] = [1, 1, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x00, 0, 0, 0, 0, 0, 0];

    #[test]
    fn parse_probe() {
        let packet = Packet::new_checked(&PROBE[..]).unwrap();
        assert_eq!(
            InbandHeader::parse(&packet),
            InbandHeader { message_type: MessageType::Probe, id: 0x0102_0304, size: 1280 }
        );
        assert_eq!(packet.padding(), &[0; 4]);
    }

    #[test]
    fn emit_round_trips_byte_exact() {
        let mut buf = [0xAA; 16];
        InbandHeader { message_type: MessageType::Probe, id: 0x0102_0304, size: 1280 }.emit(&mut buf);
        buf[HEADER_LEN..].fill(0);
        assert_eq!(buf, PROBE);
        let mut ack = [0u8; HEADER_LEN];
        InbandHeader { message_type: MessageType::ProbeAck, id: 7, size: 9000 }.emit(&mut ack);
        assert_eq!(ack, [1, 2, 0, 0, 0, 0, 0, 7, 0x23, 0x28, 0, 0]);
    }

    #[test]
    fn echo_types_round_trip() {
        for (message_type, byte) in [(MessageType::EchoRequest, 3), (MessageType::EchoReply, 4)] {
            let mut buf = [0u8; HEADER_LEN];
            InbandHeader { message_type, id: 5, size: 1400 }.emit(&mut buf);
            assert_eq!(buf, [1, byte, 0, 0, 0, 0, 0, 5, 0x05, 0x78, 0, 0]);
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(InbandHeader::parse(&packet), InbandHeader { message_type, id: 5, size: 1400 });
        }
    }

    #[test]
    fn unknown_types_parse_and_keep_their_byte() {
        let mut bytes = PROBE;
        bytes[1] = 0x42;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.message_type(), MessageType::Unknown(0x42));
        assert_eq!(packet.message_type().to_byte(), 0x42);
    }

    #[test]
    fn rejects_truncation_and_other_versions() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&PROBE[..HEADER_LEN - 1]), Err(Error::Truncated));
        assert_eq!(check(&PROBE[..HEADER_LEN]), Ok(()));
        let mut bytes = PROBE;
        bytes[0] = 2;
        assert_eq!(check(&bytes), Err(Error::Malformed("in-band message version is not 1")));
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                prop_assert_eq!(p.version(), VERSION);
                let _ = (InbandHeader::parse(&p), p.padding());
            }
        }
    }
}
