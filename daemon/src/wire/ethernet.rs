//! Ethernet II frames (the overlay frames carried in VXLAN). 802.1Q tags are not parsed: a
//! tagged frame shows ethertype 0x8100 and the tag at the start of its payload.

use core::fmt;
use core::str::FromStr;

use super::{read_u16, write_u16, Error, Result};

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The I/G bit: set on group addresses, broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    fn from_slice(bytes: &[u8]) -> EthernetAddress {
        let mut a = [0; 6];
        a.copy_from_slice(bytes);
        EthernetAddress(a)
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for EthernetAddress {
    type Err = Error;

    /// Parses six colon-separated pairs of hex digits, either case: `aa:bb:cc:dd:ee:ff`.
    fn from_str(s: &str) -> Result<Self> {
        const BAD: Error = Error::Malformed("MAC address is not six colon-separated hex pairs");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(BAD)?;
            // from_str_radix alone would accept "+f" and single digits.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BAD);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BAD)?;
        }
        if parts.next().is_some() {
            return Err(BAD);
        }
        Ok(EthernetAddress(out))
    }
}

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;

/// Destination, source, ethertype.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

mod field {
    use crate::wire::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

crate::wire::view! {
    /// A read/write view of an Ethernet II frame.
    Frame
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Nothing beyond the length to refuse.
    fn check_fields(&self) -> Result<()> {
        Ok(())
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn destination(&self) -> EthernetAddress {
        EthernetAddress::from_slice(&self.buffer.as_ref()[field::DESTINATION])
    }

    pub fn source(&self) -> EthernetAddress {
        EthernetAddress::from_slice(&self.buffer.as_ref()[field::SOURCE])
    }

    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_destination(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&value.0);
    }

    pub fn set_source(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&value.0);
    }

    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, value);
    }

    #[cfg(test)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// An Ethernet header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetHeader {
    pub destination: EthernetAddress,
    pub source: EthernetAddress,
    pub ethertype: u16,
}

impl EthernetHeader {
    /// Writes `HEADER_LEN` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `HEADER_LEN`.
    pub fn emit(&self, buf: &mut [u8]) {
        let mut frame = Frame::new_unchecked(&mut buf[..HEADER_LEN]);
        frame.set_destination(self.destination);
        frame.set_source(self.source);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // An ARP request as a Linux host sends it: broadcast, from 52:54:00:12:34:56.
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source
        0x08, 0x06, // ethertype: ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x0a, 0xf4, 0x00, 0x01, // sender 10.244.0.1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xf4, 0x00, 0x02, // target 10.244.0.2
    ];

    #[test]
    fn parse_arp_frame() {
        let frame = Frame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(frame.destination(), EthernetAddress::BROADCAST);
        assert_eq!(frame.source(), EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        assert_eq!(frame.ethertype(), ETHERTYPE_ARP);
        assert_eq!(frame.payload(), &ARP_FRAME[14..]);
        assert_eq!(frame.into_inner(), &ARP_FRAME[..]);
    }

    #[test]
    fn emit_round_trip() {
        let header = EthernetHeader {
            destination: EthernetAddress::BROADCAST,
            source: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            ethertype: ETHERTYPE_ARP,
        };
        let mut buf = [0u8; 42];
        header.emit(&mut buf);
        buf[HEADER_LEN..].copy_from_slice(&ARP_FRAME[HEADER_LEN..]);
        assert_eq!(buf, ARP_FRAME);
    }

    #[test]
    fn setters_write_fields() {
        let mut buf = [0u8; 16];
        let mut frame = Frame::new_unchecked(&mut buf[..]);
        frame.set_destination(EthernetAddress([1, 2, 3, 4, 5, 6]));
        frame.set_source(EthernetAddress([7, 8, 9, 10, 11, 12]));
        frame.set_ethertype(ETHERTYPE_IPV6);
        frame.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x86, 0xdd, 0xaa, 0xbb]);
    }

    #[test]
    fn rejects_truncation() {
        assert_eq!(Frame::new_checked(&ARP_FRAME[..13]).unwrap_err(), Error::Truncated);
        assert_eq!(Frame::new_checked(&[][..]).unwrap_err(), Error::Truncated);
        let header_only = Frame::new_checked(&ARP_FRAME[..14]).unwrap();
        assert!(header_only.payload().is_empty());
    }

    #[test]
    fn address_classes() {
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        let ipv6_mcast = EthernetAddress([0x33, 0x33, 0, 0, 0, 1]);
        assert!(ipv6_mcast.is_multicast() && !ipv6_mcast.is_broadcast());
        let unicast = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!(unicast.is_unicast() && !unicast.is_multicast());
    }

    #[test]
    fn address_text() {
        let a = EthernetAddress([0x52, 0x54, 0x00, 0xab, 0xCD, 0x0f]);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52:54:00:AB:cd:0f".parse::<EthernetAddress>().unwrap(), a);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:f",
            "52:54:00:ab:cd:+f",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:0f:",
        ] {
            assert!(bad.parse::<EthernetAddress>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn getters_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = Frame::new_checked(&bytes[..]) {
                let _ = (frame.destination(), frame.source(), frame.ethertype());
                prop_assert_eq!(frame.payload().len(), bytes.len() - HEADER_LEN);
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }

        #[test]
        fn address_display_parses_back(bytes in any::<[u8; 6]>()) {
            let a = EthernetAddress(bytes);
            prop_assert_eq!(a.to_string().parse::<EthernetAddress>().unwrap(), a);
        }

        #[test]
        fn address_parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<EthernetAddress>();
        }
    }
}
