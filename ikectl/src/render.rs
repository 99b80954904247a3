//! Tables for people, JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use mesh_config::control::{
    DropReason, DropRecord, DropReport, FdbEntry, FlushReport, IkeSaInfo, KernelDropRecord, KernelDropReport, PeerInfo,
    PingReport, Reply, SaInfo, SaKeys, Status, TraceReport,
};
use mesh_config::Cipher;

/// The reply's data as pretty JSON (the `data` of the control protocol's reply).
pub fn json(reply: &Reply) -> String {
    let value = match reply {
        Reply::Status(v) => serde_json::to_value(v),
        Reply::SaList(v) => serde_json::to_value(v),
        Reply::SaFlush(v) => serde_json::to_value(v),
        Reply::Peers(v) => serde_json::to_value(v),
        Reply::Fdb(v) => serde_json::to_value(v),
        Reply::Drops(v) => serde_json::to_value(v),
        Reply::DropStream(v) => serde_json::to_value(v),
        Reply::Reload(v) => serde_json::to_value(v),
        Reply::Trace(v) => serde_json::to_value(v),
        Reply::Ping(v) => serde_json::to_value(v),
        Reply::CaptureStart(v) => serde_json::to_value(v),
        Reply::CaptureFrames(v) => serde_json::to_value(v),
        Reply::SaKeys(v) => serde_json::to_value(v),
        Reply::LogLevel(v) => serde_json::to_value(v),
        Reply::BugReport(v) => serde_json::to_value(v),
    };
    let mut text =
        value.and_then(|v| serde_json::to_string_pretty(&v)).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

pub fn text(reply: &Reply) -> String {
    match reply {
        Reply::Status(status) => render_status(status),
        Reply::SaList(list) => render_ike_sas(&list.ike_sas) + &render_sas(&list.child_sas),
        Reply::SaFlush(report) => render_flush(report),
        Reply::Peers(peers) => render_peers(peers),
        Reply::Fdb(entries) => render_fdb(entries),
        Reply::Drops(report) => render_drops(report),
        Reply::DropStream(batch) => batch
            .drops
            .iter()
            .map(drop_line)
            .chain(batch.kernel.iter().map(kernel_drop_line))
            .map(|line| line + "\n")
            .collect(),
        Reply::Reload(plan) => plan.to_string(),
        Reply::Trace(report) => render_trace(report),
        Reply::Ping(report) => render_ping(report),
        Reply::CaptureStart(start) => {
            format!("capturing on node {} ({} interfaces)\n", start.node, start.interfaces.len())
        }
        Reply::CaptureFrames(batch) => format!("{} frames ({} left out)\n", batch.frames.len(), batch.dropped),
        Reply::SaKeys(keys) => render_sa_keys(keys),
        Reply::BugReport(files) => files.iter().map(|file| format!("{}\n", file.name)).collect(),
        Reply::LogLevel(report) => match (&report.reverts_to, report.reverts_in_secs) {
            (Some(back), Some(secs)) => format!("log filter: {} (back to {back} in {secs}s)\n", report.filter),
            _ => format!("log filter: {}\n", report.filter),
        },
    }
}

fn render_sa_keys(keys: &[SaKeys]) -> String {
    let mut table = table(&["peer", "dir", "spi", "cipher", "source", "destination", "key (then salt)"]);
    for sa in keys {
        let row =
            [&sa.peer, &sa.direction.to_string(), &sa.spi.to_string(), sa.cipher.as_str(), &sa.source.to_string()];
        let row: Vec<String> = row.iter().map(|cell| cell.to_string()).collect();
        table.add_row([row, vec![sa.destination.to_string(), sa.key.clone()]].concat());
    }
    finish(table)
}

/// One row of Wireshark's ESP SA table (the `esp_sa` file of a profile, or `-o uat:esp_sa:ROW`):
/// protocol, source, destination, SPI, encryption algorithm, key then salt, authentication
/// algorithm (none with an AEAD) and its key.
pub fn wireshark_esp_sa(sa: &SaKeys) -> String {
    let protocol = if sa.source.is_ipv4() { "IPv4" } else { "IPv6" };
    let algorithm = match sa.cipher {
        Cipher::Aes256Gcm16 => "AES-GCM with 16 octet ICV [RFC4106]",
        Cipher::Chacha20Poly1305 => "ChaCha20 with Poly1305 [RFC7634]",
    };
    format!(
        "\"{protocol}\",\"{}\",\"{}\",\"{}\",\"{algorithm}\",\"0x{}\",\"NULL\",\"\"",
        sa.source, sa.destination, sa.spi, sa.key
    )
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    table
}

pub fn finish(table: Table) -> String {
    format!("{table}\n")
}

fn ago(secs: Option<u64>) -> String {
    secs.map_or_else(|| "never".to_string(), |s| format!("{}s ago", s))
}

fn counts(drops: &BTreeMap<DropReason, u64>) -> String {
    if drops.is_empty() {
        return "0".to_string();
    }
    drops.iter().map(|(reason, count)| format!("{reason}={count}")).collect::<Vec<_>>().join(" ")
}

fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {} of mesh \"{}\" at {}", status.node, status.mesh, status.underlay_address);
    let _ = writeln!(
        out,
        "meshd {}, up {}s, {} datapath workers, config {}",
        status.daemon_version, status.uptime_secs, status.workers, status.config_path
    );
    let _ =
        writeln!(out, "peers: {} configured, {} with SAs both ways", status.peers_configured, status.peers_with_sas);
    let _ = writeln!(out, "drops: {} (ikectl drops for details)", status.drops_total);
    let _ = match &status.public_key {
        Some(fingerprint) => {
            writeln!(out, "identity: Ed25519 public key {fingerprint}... (meshd pubkey prints it whole)")
        }
        None => writeln!(out, "identity: the mesh's pre-shared key (no public_key for this node in the mesh file)"),
    };
    if status.peers_with_sas < status.peers_configured {
        let _ = writeln!(
            out,
            "warning: {} peer(s) have no SA pair: see ikectl peers",
            status.peers_configured - status.peers_with_sas
        );
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let mut overlays = table(&["overlay", "interface", "VNI", "MTU", "MTU from", "address"]);
    for o in &status.overlays {
        overlays.add_row(vec![
            o.name.clone(),
            o.interface.clone(),
            o.vni.to_string(),
            o.mtu.to_string(),
            o.mtu_reason.clone(),
            o.address.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out + &finish(overlays)
}

fn render_ike_sas(sas: &[IkeSaInfo]) -> String {
    if sas.is_empty() {
        return String::new();
    }
    let mut t = table(&[
        "peer",
        "IKE SA (SPIi / SPIr)",
        "state",
        "role",
        "AEAD / PRF / group",
        "remote",
        "NAT / encap",
        "peer auth",
        "up",
        "rekey in",
        "Child SAs (in / out)",
    ]);
    for sa in sas {
        let dash = || "-".to_string();
        t.add_row(vec![
            sa.peer.clone(),
            format!("{} / {}", sa.initiator_spi, sa.responder_spi),
            sa.state.clone(),
            if sa.we_initiated { "initiator" } else { "responder" }.to_string(),
            format!("{} / {} / {}", sa.cipher.map_or_else(dash, |c| c.to_string()), sa.prf, sa.group),
            sa.remote.to_string(),
            match (sa.nat_detected, sa.udp_encap) {
                (true, _) => "this node behind NAT, udp 4500",
                (false, true) => "no NAT, udp 4500",
                (false, false) => "no NAT, udp 500",
            }
            .to_string(),
            match (&sa.peer_auth, &sa.peer_key) {
                (Some(method), Some(key)) => format!("{method} {key}"),
                (Some(method), None) => method.clone(),
                (None, _) => dash(),
            },
            sa.established_secs.map_or_else(dash, |s| format!("{s}s")),
            sa.rekey_in_secs.map_or_else(dash, |s| format!("{s}s")),
            sa.child_spis.iter().map(|(i, o)| format!("{i} / {o}")).collect::<Vec<_>>().join(", "),
        ]);
    }
    format!("IKE SAs\n{}Child SAs\n", finish(t))
}

fn render_sas(sas: &[SaInfo]) -> String {
    if sas.is_empty() {
        return "no Child SAs\n".to_string();
    }
    let mut t = table(&[
        "peer",
        "dir",
        "SPI",
        "cipher",
        "mode",
        "encap",
        "origin",
        "age",
        "packets",
        "bytes",
        "seq / replay window",
        "last used",
        "drops",
    ]);
    for sa in sas {
        let sequence = match (&sa.replay, sa.sequence) {
            (Some(r), _) => {
                format!("top {} ({}/{} in window)", r.highest_sequence, r.received_in_window, r.window_size)
            }
            (None, Some(seq)) => format!("sent {seq}"),
            (None, None) => "-".to_string(),
        };
        t.add_row(vec![
            sa.peer.clone(),
            sa.direction.to_string(),
            sa.spi.to_string(),
            format!("{}{}", sa.cipher, if sa.esn { " esn" } else { "" }),
            sa.mode.to_string(),
            sa.encap.to_string(),
            format!("{:?}", sa.origin).to_lowercase(),
            format!("{}s", sa.age_secs),
            sa.packets.to_string(),
            sa.bytes.to_string(),
            sequence,
            ago(sa.last_used_secs),
            counts(&sa.drops),
        ]);
    }
    finish(t)
}

fn spis(list: &[mesh_config::control::Spi]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn render_flush(report: &FlushReport) -> String {
    let mut out = format!("removed: {}\nreinstalled: {}\n", spis(&report.removed), spis(&report.reinstalled));
    if let Some(ms) = report.traffic_back_ms {
        let _ = writeln!(out, "renegotiated: SAs both ways again after {ms} ms");
    }
    if let Some(advice) = &report.advice {
        let _ = writeln!(out, "note: {advice}");
    }
    out
}

fn render_peers(peers: &[PeerInfo]) -> String {
    let mut t = table(&[
        "peer",
        "address",
        "mode",
        "encap",
        "out SPI",
        "in SPIs",
        "tx pkts",
        "tx bytes",
        "rx pkts",
        "rx bytes",
        "last rx",
        "drops",
        "keying",
        "path MTU",
        "overlay MTU",
    ]);
    for p in peers {
        t.add_row(vec![
            p.name.clone(),
            p.address.to_string(),
            p.mode.to_string(),
            p.encap.to_string(),
            p.outbound_spi.map_or_else(|| "none".to_string(), |s| s.to_string()),
            spis(&p.inbound_spis),
            p.tx_packets.to_string(),
            p.tx_bytes.to_string(),
            p.rx_packets.to_string(),
            p.rx_bytes.to_string(),
            ago(p.last_rx_secs),
            p.drops.to_string(),
            p.keying.clone(),
            match (p.path_mtu, &p.path_mtu_source) {
                (Some(mtu), Some(source)) => format!("{mtu} ({source})"),
                (Some(mtu), None) => mtu.to_string(),
                (None, _) => "-".to_string(),
            },
            p.overlay_mtu.map_or_else(|| "-".to_string(), |mtu| mtu.to_string()),
        ]);
    }
    finish(t)
}

fn render_fdb(entries: &[FdbEntry]) -> String {
    if entries.is_empty() {
        return "no MAC learned yet (entries appear when frames arrive from peers)\n".to_string();
    }
    let mut t = table(&["overlay", "VNI", "MAC", "peer", "last seen"]);
    for e in entries {
        t.add_row(vec![
            e.overlay.clone(),
            e.vni.to_string(),
            e.mac.clone(),
            e.peer.clone(),
            format!("{}s ago", e.age_secs),
        ]);
    }
    finish(t)
}

fn render_drops(report: &DropReport) -> String {
    let kernel = report.kernel.as_ref().map(render_kernel_drops).unwrap_or_default();
    if report.total == 0 {
        return "no drops in meshd\n".to_string() + &kernel;
    }
    let mut by_reason = table(&["reason", "count"]);
    for (reason, count) in &report.by_reason {
        by_reason.add_row(vec![reason.to_string(), count.to_string()]);
    }
    let mut by_peer = table(&["peer", "drops by reason"]);
    for (peer, drops) in &report.by_peer {
        by_peer.add_row(vec![peer.clone(), counts(drops)]);
    }
    let mut recent = table(&["time (UTC)", "reason", "peer", "SPI", "seq", "from", "VNI", "inner"]);
    for d in &report.recent {
        let dash = || "-".to_string();
        recent.add_row(vec![
            utc_time(d.at_unix_ms),
            d.reason.to_string(),
            d.peer.clone().unwrap_or_else(dash),
            d.spi.map_or_else(dash, |s| s.to_string()),
            d.sequence.map_or_else(dash, |s| s.to_string()),
            d.outer_source.map_or_else(dash, |s| s.to_string()),
            d.vni.map_or_else(dash, |v| v.to_string()),
            d.inner.as_ref().map_or_else(dash, ToString::to_string),
        ]);
    }
    format!("{} drops\n{}{}recent:\n{}{kernel}", report.total, finish(by_reason), finish(by_peer), finish(recent))
}

fn render_kernel_drops(report: &KernelDropReport) -> String {
    if let Some(why) = &report.unavailable {
        return format!("kernel drops: not traced: {why}\n");
    }
    let mut out = format!("kernel drops of mesh traffic: {}", report.total);
    if report.lost > 0 {
        let _ = write!(out, " (and {} not reported: the tracer's ring buffer was full)", report.lost);
    }
    out.push('\n');
    if report.total == 0 {
        return out;
    }
    let mut by_reason = table(&["kernel reason", "count"]);
    for (reason, count) in &report.by_reason {
        by_reason.add_row(vec![reason.clone(), count.to_string()]);
    }
    let mut recent = table(&["time (UTC)", "reason", "where", "peer", "interface", "packet"]);
    for d in &report.recent {
        recent.add_row(vec![
            utc_time(d.at_unix_ms),
            d.reason.clone(),
            d.location.clone(),
            d.peer.clone().unwrap_or_else(|| "-".to_string()),
            d.interface.clone().unwrap_or_else(|| "-".to_string()),
            kernel_packet(d),
        ]);
    }
    out + &finish(by_reason) + "recent kernel drops:\n" + &finish(recent)
}

/// `esp 198.18.0.1 -> 198.18.0.2`, `udp 198.18.0.1:4500 -> 198.18.0.2:4500`.
fn kernel_packet(d: &KernelDropRecord) -> String {
    let end = |address: Option<std::net::IpAddr>, port: Option<u16>| match (address, port) {
        (Some(a), Some(p)) => std::net::SocketAddr::new(a, p).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".to_string(),
    };
    format!("{} {} -> {}", d.protocol, end(d.source, d.source_port), end(d.destination, d.destination_port))
}

/// One kernel drop as one line, for `drops --follow --kernel`.
pub fn kernel_drop_line(d: &KernelDropRecord) -> String {
    let mut line = format!("{} kernel:{} at {} {}", utc_time(d.at_unix_ms), d.reason, d.location, kernel_packet(d));
    if let Some(peer) = &d.peer {
        let _ = write!(line, " peer={peer}");
    }
    if let Some(interface) = &d.interface {
        let _ = write!(line, " dev={interface}");
    }
    line
}

fn render_ping(report: &PingReport) -> String {
    let mut t = table(&["", &format!("this node ({})", report.node), &format!("peer ({})", report.peer)]);
    for row in &report.rows {
        t.add_row(vec![row.what.clone(), row.this_node.clone(), row.peer.clone()]);
    }
    let mut out = finish(t);
    let _ = writeln!(out, "verdict: {}", if report.healthy { "healthy" } else { "NOT healthy" });
    for verdict in &report.verdicts {
        let _ = writeln!(out, "  - {verdict}");
    }
    out
}

fn render_trace(report: &TraceReport) -> String {
    let mut t = table(&["#", "hop", "decision", "counters"]);
    for (index, hop) in report.hops.iter().enumerate() {
        let counters = hop.counters.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>();
        t.add_row(vec![(index + 1).to_string(), hop.hop.clone(), hop.summary.clone(), counters.join(" ")]);
    }
    let mut out = format!("trace {} in overlay {}\n{}", report.target, report.overlay, finish(t));
    for (index, hop) in report.hops.iter().enumerate() {
        if let Some(problem) = &hop.problem {
            let _ = writeln!(out, "problem at hop {} ({}): {problem}", index + 1, hop.hop);
        }
    }
    out
}

/// One drop as one line, for `drops --follow`: only what is known.
pub fn drop_line(d: &DropRecord) -> String {
    let mut line = format!("{} {}", utc_time(d.at_unix_ms), d.reason);
    let mut field = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = write!(line, " {name}={value}");
        }
    };
    field("peer", d.peer.clone());
    field("spi", d.spi.map(|s| s.to_string()));
    field("seq", d.sequence.map(|s| s.to_string()));
    field("from", d.outer_source.map(|s| s.to_string()));
    field("vni", d.vni.map(|v| v.to_string()));
    field("inner", d.inner.as_ref().map(|i| format!("[{i}]")));
    line
}

/// Time of day in UTC with milliseconds: drops are looked at while they happen.
fn utc_time(unix_ms: u64) -> String {
    let ms_of_day = unix_ms % 86_400_000;
    let (hours, minutes) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (seconds, millis) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{hours:02}:{minutes:02}:{seconds:02}.{millis:03}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::control::{Direction, ReplayInfo, SaList, SaOrigin, Spi};
    use mesh_config::{Cipher, Encap, Mode};

    fn inbound_sa() -> SaInfo {
        SaInfo {
            peer: "n2".into(),
            direction: Direction::In,
            spi: Spi(0x1002),
            cipher: Cipher::Aes256Gcm16,
            mode: Mode::Transport,
            encap: Encap::Udp,
            origin: SaOrigin::Manual,
            esn: false,
            age_secs: 12,
            packets: 3,
            bytes: 294,
            last_used_secs: Some(1),
            replay: Some(ReplayInfo { highest_sequence: 3, window_size: 4096, received_in_window: 3 }),
            sequence: None,
            drops: BTreeMap::from([(DropReason::Authentication, 2)]),
        }
    }

    #[test]
    fn sa_table_shows_what_the_operator_needs() {
        let out = text(&Reply::SaList(SaList { ike_sas: vec![], child_sas: vec![inbound_sa()] }));
        for needle in [
            "n2",
            "in",
            "0x00001002",
            "aes256gcm16",
            "transport",
            "udp",
            "manual",
            "top 3 (3/4096 in window)",
            "1s ago",
            "authentication=2",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }
        assert_eq!(text(&Reply::SaList(SaList { ike_sas: vec![], child_sas: vec![] })), "no Child SAs\n");
    }

    #[test]
    fn json_is_the_bare_data() {
        let value: serde_json::Value =
            serde_json::from_str(&json(&Reply::SaList(SaList { ike_sas: vec![], child_sas: vec![inbound_sa()] })))
                .unwrap();
        let sa = &value["child_sas"][0];
        assert_eq!(sa["spi"], "0x00001002");
        assert_eq!(sa["drops"]["authentication"], 2);
        assert_eq!(sa["replay"]["highest_sequence"], 3);
    }

    #[test]
    fn flush_advice_is_printed() {
        let out = text(&Reply::SaFlush(FlushReport {
            removed: vec![Spi(1)],
            reinstalled: vec![],
            advice: Some("do this".into()),
            traffic_back_ms: Some(120),
        }));
        assert_eq!(
            out,
            "removed: 0x00000001\nreinstalled: none\nrenegotiated: SAs both ways again after 120 ms\nnote: do this\n"
        );
    }

    #[test]
    fn wireshark_rows_are_tsharks_esp_sa_format() {
        let sa = SaKeys {
            peer: "n2".into(),
            direction: mesh_config::control::Direction::Out,
            source: "198.18.0.1".parse().unwrap(),
            destination: "198.18.0.2".parse().unwrap(),
            spi: mesh_config::control::Spi(0x1102),
            cipher: Cipher::Aes256Gcm16,
            key: "00112233".into(),
        };
        assert_eq!(
            wireshark_esp_sa(&sa),
            r#""IPv4","198.18.0.1","198.18.0.2","0x00001102","AES-GCM with 16 octet ICV [RFC4106]","0x00112233","NULL","""#
        );
    }
}
