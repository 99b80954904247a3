//! `[flows]`: IPFIX export of the inner flows of the overlays (`ipfix = "198.51.100.7:4739"`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::parse::duration;
use crate::reader::{Ctx, Tab};

pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_FLOWS: usize = 65_536;

const FLOWS_KEYS: &[&str] = &["ipfix", "active_timeout", "idle_timeout", "max_flows"];
const EXAMPLE: &str = "ipfix = \"198.51.100.7:4739\"";

/// `[flows]`; without the section no flows are metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowsSection {
    /// The IPFIX collector (UDP).
    pub ipfix: Option<SocketAddr>,
    /// A long flow is exported (and counted afresh) after this long.
    pub active_timeout: Duration,
    /// A flow without packets for this long is exported and forgotten.
    pub idle_timeout: Duration,
    /// Flows tracked at most; packets of further flows are counted as overflow, not metered.
    pub max_flows: usize,
}

impl Default for FlowsSection {
    fn default() -> Self {
        FlowsSection {
            ipfix: None,
            active_timeout: DEFAULT_ACTIVE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

pub(crate) fn parse(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> FlowsSection {
    let Some(t) = root.table(ctx, "flows", "[flows]", &format!("[flows] followed by {EXAMPLE} on the next line"))
    else {
        return FlowsSection::default();
    };
    t.check_keys(ctx, FLOWS_KEYS);
    let mut flows = FlowsSection {
        active_timeout: duration(ctx, &t, "active_timeout", DEFAULT_ACTIVE_TIMEOUT),
        idle_timeout: duration(ctx, &t, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
        ..FlowsSection::default()
    };
    if let Some(max) = t.int(ctx, "max_flows", "max_flows = 65536") {
        match usize::try_from(max.v).ok().filter(|max| (1..=1 << 24).contains(max)) {
            Some(max) => flows.max_flows = max,
            None => ctx.err(
                &max.span,
                t.key("max_flows"),
                "max_flows must be between 1 and 16777216",
                "e.g. max_flows = 65536",
            ),
        }
    }
    let Some(collector) = t.req_str(ctx, "ipfix", EXAMPLE) else { return flows };
    match collector.v.parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => flows.ipfix = Some(address),
        _ => ctx.err(
            &collector.span,
            t.key("ipfix"),
            format!("\"{}\" is not an IP address and port (the collector's, UDP)", collector.v),
            format!("write it like {EXAMPLE} (4739 is the IPFIX port)"),
        ),
    }
    flows
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::MeshConfig;

    fn parse(flows: &str) -> Result<MeshConfig, String> {
        let text = format!("[mesh]\nname = \"lab\"\n\n[[node]]\nname = \"n1\"\naddress = \"198.18.0.1\"\n\n{flows}");
        MeshConfig::parse(Path::new("mesh.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn collector_and_timeouts() {
        assert_eq!(parse("").unwrap().flows.ipfix, None);
        let config = parse("[flows]\nipfix = \"127.0.0.1:4739\"\nidle_timeout = \"2s\"\nmax_flows = 10\n").unwrap();
        assert_eq!(config.flows.ipfix, Some("127.0.0.1:4739".parse().unwrap()));
        assert_eq!(
            (config.flows.idle_timeout, config.flows.active_timeout),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
        assert_eq!(config.flows.max_flows, 10);
    }

    #[test]
    fn errors_name_key_and_fix() {
        let error = parse("[flows]\nipfix = \"collector\"\n").unwrap_err();
        assert!(error.contains("flows.ipfix") && error.contains("198.51.100.7:4739"), "{error}");
        let error = parse("[flows]\nipfix = \"127.0.0.1:4739\"\nmax_flows = 0\n").unwrap_err();
        assert!(error.contains("max_flows must be between"), "{error}");
        let error = parse("[flows]\nidle_timeout = \"1s\"\n").unwrap_err();
        assert!(error.contains("missing required key `ipfix`"), "{error}");
    }
}
