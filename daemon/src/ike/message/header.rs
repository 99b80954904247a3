//! The fixed IKE header (RFC 7296 §3.1).
//!
//! ```text
//! initiator SPI (8) | responder SPI (8) | next payload (1) | major.minor version (1)
//!   | exchange type (1) | flags (1) | message ID (4) | length (4)
//! ```

use crate::wire::{Error, Result};

use super::codec::{read_u32, read_u64, write_u32, write_u64, Field};
use super::ids::flag;

/// Length of the header; the Length field counts it.
pub const HEADER_LEN: usize = field::LENGTH.end;
/// The only major version this implementation speaks.
pub const MAJOR_VERSION: u8 = 2;

mod field {
    use super::Field;

    pub const INITIATOR_SPI: Field = 0..8;
    pub const RESPONDER_SPI: Field = 8..16;
    pub const NEXT_PAYLOAD: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE_TYPE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MESSAGE_ID: Field = 20..24;
    pub const LENGTH: Field = 24..28;
}

crate::wire::view! {
    /// A read/write view of an IKE message: the header and the payload bytes after it.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The major version must be 2 (RFC 7296 §3.1).
    fn check_fields(&self) -> Result<()> {
        if self.major_version() != MAJOR_VERSION {
            return Err(Error::Malformed("IKE major version is not 2"));
        }
        Ok(())
    }

    /// Checks that the header fits and that the Length field covers the header and no more
    /// than the buffer. Bytes past the Length are not part of the message.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let length = self.length();
        if length < HEADER_LEN as u32 {
            return Err(Error::Malformed("IKE length is shorter than the header"));
        }
        if u64::from(length) > len as u64 {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn initiator_spi(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::INITIATOR_SPI)
    }

    /// Zero in the first message of IKE_SA_INIT.
    pub fn responder_spi(&self) -> u64 {
        read_u64(self.buffer.as_ref(), field::RESPONDER_SPI)
    }

    /// Type of the first payload.
    pub fn next_payload(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_PAYLOAD]
    }

    pub fn major_version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION] >> 4
    }

    /// Sent as 0 and ignored on receipt.
    #[cfg(test)]
    pub fn minor_version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION] & 0x0F
    }

    pub fn exchange_type(&self) -> u8 {
        self.buffer.as_ref()[field::EXCHANGE_TYPE]
    }

    /// The raw Flags field; see [`flag`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn initiator(&self) -> bool {
        self.flags() & flag::INITIATOR != 0
    }

    #[cfg(test)]
    pub fn version_flag(&self) -> bool {
        self.flags() & flag::VERSION != 0
    }

    pub fn response(&self) -> bool {
        self.flags() & flag::RESPONSE != 0
    }

    pub fn message_id(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::MESSAGE_ID)
    }

    /// Header plus payloads, in bytes.
    pub fn length(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::LENGTH)
    }

    /// The bytes of the whole message: the header and the payloads up to the Length.
    #[cfg(any(test, feature = "internals"))]
    pub fn message(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.length() as usize]
    }

    /// The payload chain: the bytes between the header and the Length.
    #[cfg(any(test, feature = "internals"))]
    pub fn payload(&self) -> &[u8] {
        &self.message()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_initiator_spi(&mut self, value: u64) {
        write_u64(self.buffer.as_mut(), field::INITIATOR_SPI, value);
    }

    pub fn set_responder_spi(&mut self, value: u64) {
        write_u64(self.buffer.as_mut(), field::RESPONDER_SPI, value);
    }

    pub fn set_next_payload(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_PAYLOAD] = value;
    }

    pub fn set_version(&mut self, major: u8, minor: u8) {
        self.buffer.as_mut()[field::VERSION] = (major << 4) | (minor & 0x0F);
    }

    pub fn set_exchange_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::EXCHANGE_TYPE] = value;
    }

    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    pub fn set_message_id(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::MESSAGE_ID, value);
    }

    pub fn set_length(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::LENGTH, value);
    }
}

/// The header fields that identify a message; the framing fields (next payload, length) come
/// from the payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub initiator_spi: u64,
    pub responder_spi: u64,
    pub exchange_type: u8,
    /// The Initiator flag: sent by the original initiator of the IKE SA.
    pub initiator: bool,
    /// The Response flag.
    pub response: bool,
    pub message_id: u32,
}

impl Header {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Header {
        Header {
            initiator_spi: packet.initiator_spi(),
            responder_spi: packet.responder_spi(),
            exchange_type: packet.exchange_type(),
            initiator: packet.initiator(),
            response: packet.response(),
            message_id: packet.message_id(),
        }
    }

    /// Writes `HEADER_LEN` bytes at the start of `buf`: version 2.0, the Version flag clear.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`.
    pub fn emit(&self, buf: &mut [u8], next_payload: u8, length: u32) {
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_initiator_spi(self.initiator_spi);
        packet.set_responder_spi(self.responder_spi);
        packet.set_next_payload(next_payload);
        packet.set_version(MAJOR_VERSION, 0);
        packet.set_exchange_type(self.exchange_type);
        let mut flags = 0;
        if self.initiator {
            flags |= flag::INITIATOR;
        }
        if self.response {
            flags |= flag::RESPONSE;
        }
        packet.set_flags(flags);
        packet.set_message_id(self.message_id);
        packet.set_length(length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::message::ids::{exchange, payload};
    use proptest::prelude::*;

    const MESSAGE: [u8; 32] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // initiator SPI
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // responder SPI 0
        0x29, // next payload: Notify
        0x20, // version 2.0
        0x22, // exchange type IKE_SA_INIT (34)
        0x08, // flags: Initiator
        0x00, 0x00, 0x00, 0x00, // message ID 0
        0x00, 0x00, 0x00, 0x20, // length 32
        0x00, 0x00, 0x00, 0x04, // an empty payload: next none, not critical, length 4
    ];

    fn header() -> Header {
        Header {
            initiator_spi: 0x0102_0304_0506_0708,
            responder_spi: 0,
            exchange_type: exchange::IKE_SA_INIT,
            initiator: true,
            response: false,
            message_id: 0,
        }
    }

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&MESSAGE[..]).unwrap();
        assert_eq!(p.initiator_spi(), 0x0102_0304_0506_0708);
        assert_eq!(p.responder_spi(), 0);
        assert_eq!(p.next_payload(), payload::NOTIFY);
        assert_eq!(p.major_version(), 2);
        assert_eq!(p.minor_version(), 0);
        assert_eq!(p.exchange_type(), exchange::IKE_SA_INIT);
        assert_eq!(p.flags(), flag::INITIATOR);
        assert!(p.initiator() && !p.response() && !p.version_flag());
        assert_eq!(p.message_id(), 0);
        assert_eq!(p.length(), 32);
        assert_eq!(p.message(), &MESSAGE[..]);
        assert_eq!(p.payload(), &MESSAGE[28..]);
        assert_eq!(Header::parse(&p), header());
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = [0xEEu8; 32];
        header().emit(&mut buf, payload::NOTIFY, 32);
        buf[28..].copy_from_slice(&MESSAGE[28..]);
        assert_eq!(buf, MESSAGE);
    }

    #[test]
    fn response_flags() {
        let mut buf = [0u8; HEADER_LEN];
        let h =
            Header { initiator: false, response: true, message_id: 0xdead_beef, responder_spi: u64::MAX, ..header() };
        h.emit(&mut buf, payload::NONE, HEADER_LEN as u32);
        assert_eq!(buf[19], 0x20);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&p), h);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn trailing_bytes_are_not_payload() {
        let mut padded = MESSAGE.to_vec();
        padded.extend_from_slice(&[0xff; 3]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &MESSAGE[28..]);
    }

    #[test]
    fn rejects_truncation_and_bad_fields() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&MESSAGE[..27]), Err(Error::Truncated));
        assert_eq!(check(&MESSAGE[..31]), Err(Error::Truncated));

        let mut bytes = MESSAGE;
        bytes[27] = 27;
        assert_eq!(check(&bytes), Err(Error::Malformed("IKE length is shorter than the header")));
        bytes[24] = 0xff; // about 4 GiB
        assert_eq!(check(&bytes), Err(Error::Truncated));

        let mut bytes = MESSAGE;
        bytes[17] = 0x30;
        assert_eq!(check(&bytes), Err(Error::Malformed("IKE major version is not 2")));
        // The lengths alone are fine, so the caller can still answer INVALID_MAJOR_VERSION.
        let p = Packet::new_unchecked(&bytes[..]);
        assert_eq!(p.check_len(), Ok(()));
        assert_eq!(p.major_version(), 3);

        // A minor version other than 0 is ignored.
        let mut bytes = MESSAGE;
        bytes[17] = 0x21;
        assert!(check(&bytes).is_ok());
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (Header::parse(&p), p.next_payload(), p.minor_version());
                let _ = (p.flags(), p.version_flag(), p.message(), p.payload());
            }
        }
    }
}
