//! Kernel drop tracing for meshd: a BPF program in C (`src/bpf/kfree_skb.bpf.c`, built by clang
//! in build.rs) on the `skb:kfree_skb` tracepoint, filtered in the kernel to the mesh's own
//! traffic in the node's network namespace, and the loader that reads its events.

#![deny(unsafe_code)]

pub mod event;
pub mod kallsyms;
pub mod reasons;
pub mod tracer;

pub use event::{DropEvent, EVENT_LEN};
pub use tracer::{KernelDrop, Tracer, TracerConfig, TracerError};

/// The compiled BPF object.
pub const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kfree_skb.bpf.o"));
