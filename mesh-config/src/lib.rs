pub mod control;
pub mod types;

pub use types::{Cipher, Encap, Mode};
