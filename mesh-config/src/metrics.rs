//! `[metrics]`: the opt-in Prometheus endpoint (`listen = "127.0.0.1:9477"`).

use std::net::SocketAddr;

use crate::reader::{Ctx, Tab};

/// The port the docs suggest (Prometheus' port allocation list has no entry for it).
pub const DEFAULT_METRICS_PORT: u16 = 9477;

const METRICS_KEYS: &[&str] = &["listen"];
const EXAMPLE: &str = "listen = \"127.0.0.1:9477\"";

/// `[metrics]`; without the section there is no endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSection {
    /// Where `GET /metrics` is served.
    pub listen: Option<SocketAddr>,
}

pub(crate) fn parse(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> MetricsSection {
    let Some(t) = root.table(ctx, "metrics", "[metrics]", &format!("[metrics] followed by {EXAMPLE} on the next line"))
    else {
        return MetricsSection::default();
    };
    t.check_keys(ctx, METRICS_KEYS);
    let Some(listen) = t.req_str(ctx, "listen", EXAMPLE) else { return MetricsSection::default() };
    match listen.v.parse::<SocketAddr>() {
        Ok(address) if address.port() == 0 => {
            ctx.err(
                &listen.span,
                t.key("listen"),
                "port 0 would be a different port after every restart",
                format!("pick a fixed port, e.g. {EXAMPLE}"),
            );
            MetricsSection::default()
        }
        Ok(address) => MetricsSection { listen: Some(address) },
        Err(_) => {
            ctx.err(
                &listen.span,
                t.key("listen"),
                format!("\"{}\" is not an IP address and port", listen.v),
                format!("write it like {EXAMPLE} (or \"[::1]:{DEFAULT_METRICS_PORT}\" for IPv6)"),
            );
            MetricsSection::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::MeshConfig;

    fn parse(metrics: &str) -> Result<MeshConfig, String> {
        let text = format!("[mesh]\nname = \"lab\"\n\n[[node]]\nname = \"n1\"\naddress = \"198.18.0.1\"\n\n{metrics}");
        MeshConfig::parse(Path::new("mesh.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn listen_address() {
        assert_eq!(parse("").unwrap().metrics.listen, None);
        let config = parse("[metrics]\nlisten = \"127.0.0.1:9477\"\n").unwrap();
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
        assert_eq!(parse("[metrics]\nlisten = \"[::1]:9477\"\n").unwrap().metrics.listen.unwrap().port(), 9477);
    }

    #[test]
    fn errors_name_line_key_and_fix() {
        let error = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(error.contains("mesh.toml:9: metrics.listen"), "{error}");
        assert!(error.contains("\"localhost\" is not an IP address and port"), "{error}");
        assert!(error.contains("127.0.0.1:9477"), "{error}");
        let error = parse("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(error.contains("port 0"), "{error}");
        let error = parse("[metrics]\n").unwrap_err();
        assert!(error.contains("missing required key `listen`"), "{error}");
        let error = parse("[metrics]\nlisten = \"127.0.0.1:9477\"\nport = 1\n").unwrap_err();
        assert!(error.contains("unknown key `port`"), "{error}");
    }
}
