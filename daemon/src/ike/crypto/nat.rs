//! NAT detection (RFC 7296 §2.23): the data of the NAT_DETECTION_SOURCE_IP and
//! NAT_DETECTION_DESTINATION_IP notifies is `SHA-1(SPIi | SPIr | IP address | port)`, with the
//! address 4 or 16 octets and the port in network order. In the IKE_SA_INIT request SPIr is
//! zero.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::digest::{self, SHA1_FOR_LEGACY_USE_ONLY};

/// Length of the hash (SHA-1).
pub const NAT_DETECTION_HASH_LEN: usize = 20;

/// The NAT_DETECTION_*_IP notify data for `addr` (the source or destination address and port
/// of the packet as we send it, or as it arrived).
pub fn nat_detection_hash(spi_i: &[u8; 8], spi_r: &[u8; 8], addr: SocketAddr) -> [u8; NAT_DETECTION_HASH_LEN] {
    let mut ctx = digest::Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(spi_i);
    ctx.update(spi_r);
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    let mut out = [0u8; NAT_DETECTION_HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::crypto::test_util::to_hex;

    /// Expected values computed independently with Python's hashlib:
    ///
    /// ```text
    /// python3 -c "import hashlib,ipaddress;h=lambda si,sr,ip,port:hashlib.sha1(bytes.fromhex(si+sr)+ipaddress.ip_address(ip).packed+port.to_bytes(2,'big')).hexdigest();print(h('0102030405060708','0000000000000000','198.18.0.1',500));print(h('0102030405060708','1112131415161718','2001:db8::1',4500))"
    /// ```
    #[test]
    fn against_python() {
        let spi_i = [1, 2, 3, 4, 5, 6, 7, 8];
        let spi_r = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
        assert_eq!(
            to_hex(&nat_detection_hash(&spi_i, &[0; 8], "198.18.0.1:500".parse().unwrap())),
            "280f94959aee1ebe498f9dff32da1d081ab8d03e"
        );
        assert_eq!(
            to_hex(&nat_detection_hash(&spi_i, &spi_r, "[2001:db8::1]:4500".parse().unwrap())),
            "1ee24423bf8f59515e0265c6d0f08be3d038f7e5"
        );
    }

    #[test]
    fn every_input_matters() {
        let base = nat_detection_hash(&[1; 8], &[2; 8], "192.0.2.1:500".parse().unwrap());
        for other in [
            nat_detection_hash(&[9; 8], &[2; 8], "192.0.2.1:500".parse().unwrap()),
            nat_detection_hash(&[1; 8], &[9; 8], "192.0.2.1:500".parse().unwrap()),
            nat_detection_hash(&[1; 8], &[2; 8], "192.0.2.2:500".parse().unwrap()),
            nat_detection_hash(&[1; 8], &[2; 8], "192.0.2.1:4500".parse().unwrap()),
            nat_detection_hash(&[1; 8], &[2; 8], "[::ffff:192.0.2.1]:500".parse().unwrap()),
        ] {
            assert_ne!(base, other);
        }
    }
}
