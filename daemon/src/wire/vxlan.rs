//! VXLAN headers (RFC 7348). The payload is the inner Ethernet frame.

use super::{Error, Result};

pub const HEADER_LEN: usize = 8;

/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = 0x00FF_FFFF;

/// The I flag: the VNI field is valid. RFC 7348 requires it set.
pub const FLAG_I: u8 = 0x08;

mod field {
    use crate::wire::{Field, Rest};

    pub const FLAGS: usize = 0;
    // Bytes 1..4 and 7 are reserved: zero on send, ignored on receipt (RFC 7348 §5).
    pub const VNI: Field = 4..7;
    pub const PAYLOAD: Rest = super::HEADER_LEN..;
}

crate::wire::view! {
    /// A read/write view of a VXLAN packet.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The I flag must be set (RFC 7348 §5).
    fn check_fields(&self) -> Result<()> {
        if self.flags() & FLAG_I == 0 {
            return Err(Error::Malformed("VXLAN I flag is not set"));
        }
        Ok(())
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// # Panics
    /// If `value` exceeds [`VNI_MAX`].
    pub fn set_vni(&mut self, value: u32) {
        assert!(value <= VNI_MAX, "VNI {value} exceeds 24 bits");
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_be_bytes()[1..]);
    }

    #[cfg(test)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// Writes a VXLAN header (I flag, `vni`, reserved bits zero) at the start of `buf`.
///
/// # Panics
/// If `buf` is shorter than `HEADER_LEN` or `vni` exceeds [`VNI_MAX`].
pub fn emit(buf: &mut [u8], vni: u32) {
    let header = &mut buf[..HEADER_LEN];
    header.fill(0);
    let mut packet = Packet::new_unchecked(header);
    packet.set_flags(FLAG_I);
    packet.set_vni(vni);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet;
    use proptest::prelude::*;

    // VXLAN VNI 4242 carrying an ARP request.
    const PACKET: [u8; 50] = [
        0x08, // flags: I
        0x00, 0x00, 0x00, // reserved
        0x00, 0x10, 0x92, // VNI 4242
        0x00, // reserved
        // Ethernet: broadcast <- 52:54:00:12:34:56, ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00,
        0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0xf4, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x0a, 0xf4, 0x00, 0x02,
    ];

    #[test]
    fn parse_every_field() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!(p.vni(), 4242);
        assert_eq!(p.payload(), &PACKET[8..]);
        let inner = ethernet::Frame::new_checked(p.payload()).unwrap();
        assert_eq!(inner.ethertype(), ethernet::ETHERTYPE_ARP);
    }

    #[test]
    fn reserved_bits_are_ignored() {
        let mut bytes = PACKET;
        bytes[0] = 0xff;
        bytes[1..4].fill(0xff);
        bytes[7] = 0xff;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.vni(), 4242);
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = [0xEEu8; 50];
        emit(&mut buf, 4242);
        buf[8..].copy_from_slice(&PACKET[8..]);
        assert_eq!(buf, PACKET);

        emit(&mut buf, VNI_MAX);
        assert_eq!(buf[..8], [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
        assert_eq!(Packet::new_checked(&buf[..]).unwrap().vni(), VNI_MAX);
    }

    #[test]
    fn setters_write_fields() {
        let mut buf = [0u8; 9];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_flags(FLAG_I);
        p.set_vni(0x123456);
        p.payload_mut()[0] = 0xab;
        assert_eq!(buf, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xab]);
    }

    #[test]
    #[should_panic(expected = "24 bits")]
    fn emit_rejects_wide_vni() {
        emit(&mut [0u8; 8], VNI_MAX + 1);
    }

    #[test]
    fn rejects_truncation_and_missing_i_flag() {
        let check = |bytes: &[u8]| Packet::new_checked(bytes).map(|_| ());
        assert_eq!(check(&[]), Err(Error::Truncated));
        assert_eq!(check(&PACKET[..7]), Err(Error::Truncated));
        assert!(check(&PACKET[..8]).is_ok());
        let mut bytes = PACKET;
        bytes[0] = 0xf7;
        assert_eq!(check(&bytes), Err(Error::Malformed("VXLAN I flag is not set")));
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                prop_assert!(p.vni() <= VNI_MAX);
                prop_assert_eq!(p.payload().len(), bytes.len() - HEADER_LEN);
                let _ = p.flags();
            }
        }

        #[test]
        fn emitted_vni_parses_back(vni in 0..=VNI_MAX) {
            let mut buf = [0xEEu8; HEADER_LEN];
            emit(&mut buf, vni);
            prop_assert_eq!(Packet::new_checked(&buf[..]).unwrap().vni(), vni);
        }
    }
}
