#![deny(unsafe_code)]

pub mod esp;
pub mod wire;
