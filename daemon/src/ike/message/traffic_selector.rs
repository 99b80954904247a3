//! The Traffic Selector payloads TSi and TSr (RFC 7296 §3.13).
//!
//! ```text
//! payload:  number of TSs (1) | reserved (3) | traffic selectors
//! selector: TS type (1) | IP protocol ID (1) | selector length (2) | start port (2)
//!           | end port (2) | starting address | ending address (4 bytes each for IPv4,
//!           16 for IPv6)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{Error, Result};

use super::codec::{count_u8, Reader};
use super::ids::traffic_selector;

/// Selector type, protocol, length and ports, before the addresses.
const SELECTOR_HEADER_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSelectors {
    pub selectors: Vec<TrafficSelector>,
}

/// An address range, port range and IP protocol. Both addresses are of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// 0 for any protocol.
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start_address: IpAddr,
    pub end_address: IpAddr,
}

impl TrafficSelector {
    /// One address, one protocol, one port: a node's `node_addr/32[udp/4790]`.
    pub fn host(address: IpAddr, ip_protocol: u8, port: u16) -> TrafficSelector {
        TrafficSelector { ip_protocol, start_port: port, end_port: port, start_address: address, end_address: address }
    }

    /// TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE, by the start address's family.
    pub fn ts_type(&self) -> u8 {
        match self.start_address {
            IpAddr::V4(_) => traffic_selector::IPV4_ADDRESS_RANGE,
            IpAddr::V6(_) => traffic_selector::IPV6_ADDRESS_RANGE,
        }
    }

    fn parse(reader: &mut Reader<'_>) -> Result<TrafficSelector> {
        let ts_type = reader.u8()?;
        let ip_protocol = reader.u8()?;
        let length = usize::from(reader.u16()?);
        let address_len = match ts_type {
            traffic_selector::IPV4_ADDRESS_RANGE => 4,
            traffic_selector::IPV6_ADDRESS_RANGE => 16,
            // Without a known type the addresses cannot be read (and the mesh never sends any
            // other), so the whole payload is refused rather than half-understood.
            _ => return Err(Error::Malformed("unknown IKE traffic selector type")),
        };
        if length != SELECTOR_HEADER_LEN + 2 * address_len {
            return Err(Error::Malformed("IKE traffic selector length does not match its type"));
        }
        let start_port = reader.u16()?;
        let end_port = reader.u16()?;
        let (start_address, end_address) = if address_len == 4 {
            (Ipv4Addr::from(reader.array::<4>()?).into(), Ipv4Addr::from(reader.array::<4>()?).into())
        } else {
            (Ipv6Addr::from(reader.array::<16>()?).into(), Ipv6Addr::from(reader.array::<16>()?).into())
        };
        Ok(TrafficSelector { ip_protocol, start_port, end_port, start_address, end_address })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        let address_len = match (self.start_address, self.end_address) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 4,
            (IpAddr::V6(_), IpAddr::V6(_)) => 16,
            _ => panic!("traffic selector mixes IPv4 and IPv6"),
        };
        out.push(self.ts_type());
        out.push(self.ip_protocol);
        out.extend_from_slice(&((SELECTOR_HEADER_LEN + 2 * address_len) as u16).to_be_bytes());
        out.extend_from_slice(&self.start_port.to_be_bytes());
        out.extend_from_slice(&self.end_port.to_be_bytes());
        for address in [self.start_address, self.end_address] {
            match address {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            }
        }
    }
}

impl TrafficSelectors {
    pub fn parse(body: &[u8]) -> Result<TrafficSelectors> {
        let mut reader = Reader::new(body);
        let count = usize::from(reader.u8()?);
        reader.skip(3)?;
        let mut selectors = Vec::with_capacity(count);
        while !reader.is_empty() {
            selectors.push(TrafficSelector::parse(&mut reader)?);
        }
        if selectors.len() != count {
            return Err(Error::Malformed("IKE number of traffic selectors does not match the payload length"));
        }
        Ok(TrafficSelectors { selectors })
    }

    /// Appends the payload body.
    ///
    /// # Panics
    /// If there are more than 255 selectors or one mixes IPv4 and IPv6 addresses.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(count_u8(self.selectors.len(), "traffic selectors"));
        out.extend_from_slice(&[0, 0, 0]);
        for selector in &self.selectors {
            selector.emit(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::PROTOCOL_UDP;
    use proptest::prelude::*;

    const TWO_SELECTORS: [u8; 60] = [
        0x02, // two selectors
        0x00, 0x00, 0x00, // reserved
        0x07, // TS_IPV4_ADDR_RANGE
        0x11, // UDP
        0x00, 0x10, // selector length 16
        0x12, 0xb6, 0x12, 0xb6, // ports 4790-4790
        0xc6, 0x12, 0x00, 0x01, // 198.18.0.1
        0xc6, 0x12, 0x00, 0x01, // 198.18.0.1
        0x08, // TS_IPV6_ADDR_RANGE
        0x00, // any protocol
        0x00, 0x28, // selector length 40
        0x00, 0x00, 0xff, 0xff, // ports 0-65535
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // starting address 2001:db8::,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // second half
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // ending address 2001:db8::ffff:ffff:ffff:ffff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // second half
    ];

    fn two_selectors() -> TrafficSelectors {
        TrafficSelectors {
            selectors: vec![
                TrafficSelector::host(IpAddr::from([198, 18, 0, 1]), PROTOCOL_UDP, 4790),
                TrafficSelector {
                    ip_protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                    start_address: "2001:db8::".parse().unwrap(),
                    end_address: "2001:db8::ffff:ffff:ffff:ffff".parse().unwrap(),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(TrafficSelectors::parse(&TWO_SELECTORS), Ok(two_selectors()));
        let mut out = Vec::new();
        two_selectors().emit(&mut out);
        assert_eq!(out, TWO_SELECTORS);
        assert_eq!(two_selectors().selectors[1].ts_type(), traffic_selector::IPV6_ADDRESS_RANGE);
    }

    #[test]
    fn rejects_bad_counts_types_and_lengths() {
        let parse = |bytes: &[u8]| TrafficSelectors::parse(bytes);
        for len in 0..TWO_SELECTORS.len() {
            assert!(parse(&TWO_SELECTORS[..len]).is_err(), "{len}");
        }

        let mut bytes = TWO_SELECTORS;
        bytes[0] = 3;
        assert_eq!(
            parse(&bytes),
            Err(Error::Malformed("IKE number of traffic selectors does not match the payload length"))
        );

        let mut bytes = TWO_SELECTORS;
        bytes[4] = 9; // TS_FC_ADDR_RANGE
        assert_eq!(parse(&bytes), Err(Error::Malformed("unknown IKE traffic selector type")));

        let mut bytes = TWO_SELECTORS;
        bytes[7] = 40; // an IPv4 selector claiming the IPv6 length
        assert_eq!(parse(&bytes), Err(Error::Malformed("IKE traffic selector length does not match its type")));
    }

    #[test]
    #[should_panic(expected = "mixes IPv4 and IPv6")]
    fn mixed_families_panic() {
        let mut selector = TrafficSelector::host(IpAddr::from([10, 0, 0, 1]), 0, 0);
        selector.end_address = "::1".parse().unwrap();
        TrafficSelectors { selectors: vec![selector] }.emit(&mut Vec::new());
    }

    proptest! {
        #[test]
        fn mutated_selectors_never_panic(at in 0..TWO_SELECTORS.len(), value in any::<u8>()) {
            let mut bytes = TWO_SELECTORS;
            bytes[at] = value;
            if let Ok(ts) = TrafficSelectors::parse(&bytes) {
                // Reserved bits are not kept, so compare what re-encoding parses to.
                let mut out = Vec::new();
                ts.emit(&mut out);
                prop_assert_eq!(TrafficSelectors::parse(&out), Ok(ts));
            }
        }
    }
}
