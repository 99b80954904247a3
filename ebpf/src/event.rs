//! The event the BPF program writes into its ring buffer (`struct drop_event` in the C file),
//! read through a checked view with named offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Byte offsets of `struct drop_event` (native endian, as the kernel wrote it).
mod field {
    use std::ops::Range;
    pub const LOCATION: Range<usize> = 0..8;
    pub const REASON: Range<usize> = 8..12;
    pub const IFINDEX: Range<usize> = 12..16;
    pub const SOURCE_PORT: Range<usize> = 16..18;
    pub const DESTINATION_PORT: Range<usize> = 18..20;
    pub const FAMILY: usize = 20;
    pub const PROTOCOL: usize = 21;
    pub const SOURCE: Range<usize> = 24..40;
    pub const DESTINATION: Range<usize> = 40..56;
}

/// `sizeof(struct drop_event)`.
pub const EVENT_LEN: usize = field::DESTINATION.end;

/// A checked view of one event.
#[derive(Debug, Clone, Copy)]
pub struct DropEvent<'a>(&'a [u8; EVENT_LEN]);

impl<'a> DropEvent<'a> {
    /// `None` when `bytes` is not exactly one event (another build of the BPF program).
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        bytes.try_into().ok().map(DropEvent)
    }

    fn array<const N: usize>(&self, range: std::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[range]);
        out
    }

    /// The kernel address that freed the packet.
    pub fn location(&self) -> u64 {
        u64::from_ne_bytes(self.array(field::LOCATION))
    }

    /// `enum skb_drop_reason`.
    pub fn reason(&self) -> u32 {
        u32::from_ne_bytes(self.array(field::REASON))
    }

    /// The packet's device, 0 when it had none.
    pub fn ifindex(&self) -> u32 {
        u32::from_ne_bytes(self.array(field::IFINDEX))
    }

    /// IP protocol (0 when no IP header was found).
    pub fn protocol(&self) -> u8 {
        self.0[field::PROTOCOL]
    }

    /// UDP ports in host order (0 unless UDP).
    pub fn ports(&self) -> (u16, u16) {
        (u16::from_ne_bytes(self.array(field::SOURCE_PORT)), u16::from_ne_bytes(self.array(field::DESTINATION_PORT)))
    }

    /// Source and destination, when the packet had an IP header.
    pub fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        let source: [u8; 16] = self.array(field::SOURCE);
        let destination: [u8; 16] = self.array(field::DESTINATION);
        let v4 = |a: [u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        match self.0[field::FAMILY] {
            4 => Some((v4(source), v4(destination))),
            6 => Some((IpAddr::V6(Ipv6Addr::from(source)), IpAddr::V6(Ipv6Addr::from(destination)))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ESP packet from 198.18.0.1 to 198.18.0.2 dropped by netfilter (reason 12) on ifindex 2,
    /// as x86-64 lays out the struct.
    #[rustfmt::skip]
    const NETFILTER_DROP: [u8; EVENT_LEN] = [
        0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xff, 0xff, // location 0xffffba9876543210
        12, 0, 0, 0,                                    // reason
        2, 0, 0, 0,                                     // ifindex
        0, 0, 0, 0,                                     // ports
        4, 50, 0, 0,                                    // family, protocol, pad
        198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn reads_every_field() {
        let event = DropEvent::new_checked(&NETFILTER_DROP).unwrap();
        assert_eq!(event.location(), 0xffff_ba98_7654_3210);
        assert_eq!(event.reason(), 12);
        assert_eq!(event.ifindex(), 2);
        assert_eq!(event.protocol(), 50);
        assert_eq!(event.ports(), (0, 0));
        assert_eq!(event.addresses(), Some(("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap())));
    }

    #[test]
    fn udp_over_ipv6() {
        let mut bytes = NETFILTER_DROP;
        bytes[16..18].copy_from_slice(&4500u16.to_ne_bytes());
        bytes[18..20].copy_from_slice(&4500u16.to_ne_bytes());
        bytes[20] = 6;
        bytes[21] = 17;
        bytes[24..40].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        let event = DropEvent::new_checked(&bytes).unwrap();
        assert_eq!(event.ports(), (4500, 4500));
        assert_eq!(event.addresses().unwrap().0, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(DropEvent::new_checked(&NETFILTER_DROP[..EVENT_LEN - 1]).is_none());
        assert!(DropEvent::new_checked(&[0u8; EVENT_LEN + 1]).is_none());
    }
}
