//! Zero-copy checked views over untrusted packet bytes, in the style of smoltcp's `wire`.
//!
//! Each format has a `Packet<T: AsRef<[u8]>>` (Ethernet: `Frame<T>`) wrapping a caller-owned
//! buffer. `new_checked` validates every length and field that the getters rely on, so after
//! it succeeds no getter or payload accessor can panic. `new_unchecked` skips that; its getters
//! panic on a short buffer. Each format also has a small header repr whose `emit` writes a
//! header into a caller-owned buffer for the datapath. Nothing here allocates, does IO or crypto.

use core::fmt;
use core::ops::{Range, RangeFrom};

/// What every view is: a struct around a buffer, wrapped with or without checks and given back.
/// A view type adds `check_len` (the lengths that make its getters safe) and `check_fields`
/// (anything else `new_checked` must refuse, e.g. a version); both run in `new_checked`.
macro_rules! view {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps a buffer without checking it; getters may panic on a short or inconsistent one.
            pub fn new_unchecked(buffer: T) -> $name<T> {
                $name { buffer }
            }

            /// Wraps a buffer after checking its lengths and fields.
            pub fn new_checked(buffer: T) -> $crate::wire::Result<$name<T>> {
                let view = Self::new_unchecked(buffer);
                view.check_len()?;
                view.check_fields()?;
                Ok(view)
            }

            // Generated for every view; only some callers (wire::too_big) take the buffer back.
            #[allow(dead_code)]
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}
pub(crate) use view;

pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod inband;
pub mod ipv4;
pub mod ipv6;
pub mod neighbour;
pub mod query;
pub mod tcp;
pub mod too_big;
pub mod udp;
pub mod vxlan;

#[cfg(test)]
pub use self::ethernet::{EthernetAddress, EthernetHeader};
#[cfg(test)]
pub use self::ipv4::Ipv4Header;
#[cfg(test)]
pub use self::ipv6::Ipv6Header;
#[cfg(test)]
pub use self::udp::{Packet as UdpPacket, UdpHeader};

/// Why bytes could not be read as a given format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field says.
    Truncated,
    /// A field holds a value this format does not allow; the text names it.
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed(what) => write!(f, "malformed packet: {what}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// A fixed-size field: a byte range within a header.
type Field = Range<usize>;
/// Everything from an offset to the end of the buffer.
type Rest = RangeFrom<usize>;

// Big-endian field access. `field` always has the width of the integer, so indexing
// panics only on a buffer that `check_len` would have rejected.

fn read_u16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

fn read_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_the_problem() {
        assert_eq!(Error::Truncated.to_string(), "truncated packet");
        assert_eq!(Error::Malformed("IPv4 version is not 4").to_string(), "malformed packet: IPv4 version is not 4");
    }
}
