//! What watches the datapath's frames: a running `ikectl capture` and the flow meter of
//! `[flows]`. The workers pay one relaxed atomic load per batch while nothing watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use mesh_config::control::Direction;

use super::capture::CaptureSession;
use crate::flows::{BatchFlows, FlowMeter};
use crate::topology::{OverlayId, PeerId};

/// Held by `MeshState`; the control plane installs and removes observers.
#[derive(Default)]
pub struct Observers {
    /// Set while any observer is installed: the only thing a worker reads when none is.
    watching: AtomicBool,
    capture: ArcSwapOption<CaptureSession>,
    flows: ArcSwapOption<FlowMeter>,
}

/// The observers of one batch, loaded once at its start.
pub struct Observing {
    capture: Option<Arc<CaptureSession>>,
    /// Merged into the meter when the batch ends.
    flows: Option<BatchFlows>,
}

/// One overlay frame in the clear, as the datapath sees it.
#[derive(Debug, Clone, Copy)]
pub struct SeenFrame<'a> {
    pub direction: Direction,
    pub overlay: OverlayId,
    pub peer: PeerId,
    pub spi: u32,
    pub vni: u32,
    pub frame: &'a [u8],
}

impl Observers {
    /// For a worker at the start of a batch: `None` (one relaxed load) unless something watches.
    pub fn load(&self) -> Option<Observing> {
        if !self.watching.load(Ordering::Relaxed) {
            return None;
        }
        let capture = self.capture.load_full();
        let flows = self.flows.load_full().map(BatchFlows::new);
        (capture.is_some() || flows.is_some()).then_some(Observing { capture, flows })
    }

    /// Meters every frame from now on (`[flows]`).
    pub fn start_flows(&self, meter: Arc<FlowMeter>) {
        self.flows.store(Some(meter));
        self.watching.store(true, Ordering::Relaxed);
    }

    /// Flows tracked and packets not metered (the cache was full), while flows are exported.
    pub fn flow_stats(&self) -> Option<(usize, u64)> {
        self.flows.load().as_ref().map(|meter| (meter.tracked(), meter.overflow()))
    }

    /// Installs `session`; only one capture runs at a time.
    pub fn start_capture(&self, session: Arc<CaptureSession>) -> Result<(), String> {
        let previous = self.capture.compare_and_swap(&None::<Arc<CaptureSession>>, Some(session));
        if previous.is_some() {
            return Err("another `ikectl capture` is running on this node: stop it first (Ctrl-C)".to_string());
        }
        self.watching.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub fn stop_capture(&self) {
        self.capture.store(None);
        self.watching.store(self.flows.load().is_some(), Ordering::Relaxed);
    }
}

impl Observing {
    /// Called for every frame of the batch, before it is encrypted or after it was decrypted.
    pub fn frame(&self, seen: SeenFrame<'_>, now_ms: u64) {
        if let Some(capture) = &self.capture {
            capture.offer(seen, now_ms);
        }
        if let Some(flows) = &self.flows {
            flows.add(&seen, now_ms);
        }
    }
}
