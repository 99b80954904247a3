//! meshd: the IPsec overlay mesh daemon. docs/architecture.md describes the modules, who owns
//! which state, the threads and what crosses between them.

#![deny(unsafe_code)]

/// Declares modules that are private to the crate, and public with the `internals` feature:
/// the fuzz targets (fuzz/) and the benchmarks (daemon/benches/) reach the parsers and the hot
/// path through them. Private by default, so the compiler finds dead code.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            mod $name;
        )*
    };
}

// What the command line (src/main.rs) uses.
pub mod daemon;
pub mod error;
pub mod guard;
pub mod logging;
pub mod manual_nonces;
pub mod node_identity;

internal_modules!(
    ctl,
    datapath,
    diag,
    dispatch,
    drops,
    esp,
    fdb,
    framing,
    flows,
    ids,
    ike,
    keying,
    manual,
    netif,
    offload,
    overhead,
    overlay_tap,
    pmtu,
    reload,
    report,
    sadb,
    state,
    tap,
    topology,
    upgrade,
    wire,
);
mod sys;
