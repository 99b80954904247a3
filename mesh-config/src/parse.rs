//! From TOML text to a [`MeshConfig`]: per-field checks here, cross-entity checks in `validate`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::config::*;
use crate::duration::{parse_duration, DURATION_FORM};
use crate::entries::{ManualSaP, MeshP, NodeP, OverlayP};
use crate::error::{ConfigError, ConfigErrors};
use crate::identity;
use crate::reader::{integer, type_name, At, Ctx, Tab};
use crate::secret::KeyBytes;
use crate::types::{Cipher, Encap, Mode};
use crate::validate;

const TOP_KEYS: &[&str] = &["mesh", "ike", "node", "overlay", "manual_sa", "metrics", "flows"];
const MESH_KEYS: &[&str] = &["name", "psk_file", "vxlan_port", "encap", "mode", "key_file"];
const IKE_KEYS: &[&str] = &["proposals", "ike_lifetime", "child_lifetime", "dpd"];
const NODE_KEYS: &[&str] = &["name", "address", "ssh", "mode", "public_key", "public_keys"];
const OVERLAY_KEYS: &[&str] = &["name", "vni", "interface", "mtu", "address", "static_macs"];
const STATIC_MAC_KEYS: &[&str] = &["mac", "node"];
const MANUAL_SA_KEYS: &[&str] = &["from", "to", "spi", "cipher", "key"];

pub(crate) const NAME_RULE: &str = "use 1-32 characters from a-z, 0-9, '-' and '_'";

impl MeshConfig {
    /// Reads and validates `path` and the psk_file it names.
    pub fn load(path: &Path) -> Result<MeshConfig, ConfigErrors> {
        let text = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => zeroize::Zeroizing::new(t),
                Err(e) => {
                    let bytes = zeroize::Zeroizing::new(e.into_bytes());
                    let good = std::str::from_utf8(&bytes).err().map_or(0, |u| u.valid_up_to());
                    let line = bytes[..good].iter().filter(|b| **b == b'\n').count() + 1;
                    return Err(ConfigError::new(
                        path,
                        Some(line),
                        "file",
                        "the file is not valid UTF-8",
                        "save it as UTF-8 text",
                    )
                    .into());
                }
            },
            Err(e) => {
                return Err(ConfigError::new(
                    path,
                    None,
                    "file",
                    format!("cannot read the mesh file: {e}"),
                    "check the --config path and that this user may read it",
                )
                .into())
            }
        };
        let config = Self::parse(path, &text)?;
        crate::config::check_mode_for_manual_keys(&config)?;
        Ok(config)
    }

    /// Validates `text` as the contents of `path`; reads the psk_file (relative to `path`'s folder).
    pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigErrors> {
        parse(path, text)
    }
}

fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigErrors> {
    let mut ctx = Ctx::new(path, text);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            syntax_error(&mut ctx, e);
        }
        return Err(ctx.into_errors());
    }
    let root = Tab { t: doc.get_ref(), path: String::new(), span: 0..0, header: "the top level of the file".into() };
    root.check_keys(&mut ctx, TOP_KEYS);

    let mesh = parse_mesh(&mut ctx, &root);
    let ike = parse_ike(&mut ctx, &root);
    let nodes = parse_nodes(&mut ctx, &root);
    let overlays = parse_overlays(&mut ctx, &root);
    let sas = parse_manual_sas(&mut ctx, &root);
    let metrics = crate::metrics::parse(&mut ctx, &root);
    let flows = crate::flows::parse(&mut ctx, &root);

    validate::nodes(&mut ctx, &nodes);
    validate::overlays(&mut ctx, &overlays, &nodes);
    validate::manual_sas(&mut ctx, &sas, &nodes);
    let node_keys: Vec<_> = nodes.iter().map(|n| (n.label(), n.line, n.public_keys.as_slice())).collect();
    identity::check_nodes(&mut ctx, &node_keys, mesh.psk_file.is_some());
    let psk = mesh.psk_file.as_ref().and_then(|f| validate::read_psk(&mut ctx, f));

    if !ctx.errors.is_empty() {
        return Err(ctx.into_errors());
    }

    // No errors: every required field is present.
    let nodes: Vec<Node> = nodes
        .into_iter()
        .map(|n| {
            let address = n.address.expect("validated").v;
            Node {
                name: n.name.expect("validated").v,
                ssh: n.ssh.unwrap_or_else(|| default_ssh(address)),
                address,
                mode: n.mode,
                public_keys: n.public_keys.into_iter().map(|k| k.v).collect(),
                line: n.line,
            }
        })
        .collect();
    let overlays = overlays
        .into_iter()
        .map(|o| Overlay {
            name: o.name.expect("validated").v,
            vni: o.vni.expect("validated").v,
            interface: o.interface.expect("validated").v,
            mtu: o.mtu,
            addresses: o.addresses.into_iter().map(|(n, a)| (n.v, a.expect("validated").v)).collect::<BTreeMap<_, _>>(),
            static_macs: o.static_macs.into_iter().map(|(mac, node)| StaticMac { mac: mac.v, node: node.v }).collect(),
            line: o.line,
        })
        .collect();
    let manual_sas = sas
        .into_iter()
        .map(|s| ManualSa {
            from: s.from.expect("validated").v,
            to: s.to.expect("validated").v,
            spi: s.spi.expect("validated").v,
            cipher: s.cipher.expect("validated"),
            key: s.key.expect("validated"),
            line: s.line,
        })
        .collect();
    Ok(MeshConfig {
        path: path.to_path_buf(),
        mesh: MeshSection {
            name: mesh.name.expect("validated"),
            psk_file: mesh.psk_file.map(|p| p.v),
            key_file: mesh.key_file,
            vxlan_port: mesh.vxlan_port,
            encap: mesh.encap,
            mode: mesh.mode,
        },
        ike,
        nodes,
        overlays,
        manual_sas,
        psk,
        metrics,
        flows,
    })
}

/// `root@198.18.0.1`, `root@[fd00::1]`.
pub(crate) fn default_ssh(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("root@{a}"),
        IpAddr::V6(a) => format!("root@[{a}]"),
    }
}

fn syntax_error(ctx: &mut Ctx<'_>, e: &toml::de::Error) {
    let span = e.span().unwrap_or(0..0);
    let line = ctx.line(&span);
    let col = ctx.column(&span);
    if e.message().contains("duplicate key") {
        let key = ctx.source(&span).to_string();
        ctx.err_line(
            Some(line),
            "syntax",
            format!("`{key}` is set a second time in the same table"),
            "keep only one of the two lines",
        );
    } else {
        ctx.err_line(
            Some(line),
            "syntax",
            format!("TOML syntax error at column {col}: {}", e.message()),
            "fix the TOML on this line (strings need \"quotes\", sections [brackets], entries of a list [[double brackets]])",
        );
    }
}

/// 1-32 characters from a-z, 0-9, '-', '_'. The error says what is wrong.
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the name is empty".into());
    }
    if s.chars().count() > 32 {
        return Err(format!("\"{s}\" is longer than 32 characters"));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_')) {
        return Err(format!("\"{s}\" contains '{}', which is not allowed in a name", c.escape_default()));
    }
    Ok(())
}

/// A Linux interface name: 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
pub(crate) fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the interface name is empty".into());
    }
    if s.len() > 15 {
        return Err(format!("interface name \"{s}\" is longer than 15 bytes (the Linux limit)"));
    }
    if s == "." || s == ".." {
        return Err(format!("\"{s}\" is not a valid interface name"));
    }
    if let Some(c) = s.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(format!("interface name \"{s}\" contains '{}', which Linux does not allow", c.escape_default()));
    }
    Ok(())
}

fn choice<T: std::str::FromStr<Err = String>>(
    ctx: &mut Ctx<'_>,
    t: &Tab<'_, '_>,
    k: &str,
    example: &str,
    fix: &str,
) -> Option<T> {
    let s = t.str(ctx, k, example)?;
    match s.v.parse::<T>() {
        Ok(v) => Some(v),
        Err(problem) => {
            ctx.err(&s.span, t.key(k), problem, fix);
            None
        }
    }
}

fn parse_mesh(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> MeshP {
    let mut m = MeshP {
        name: None,
        psk_file: None,
        key_file: None,
        vxlan_port: DEFAULT_VXLAN_PORT,
        encap: Encap::Udp,
        mode: Mode::Transport,
    };
    let Some(t) = root.table(ctx, "mesh", "[mesh]", "[mesh] followed by name = \"lab\" on the next line") else {
        if root.raw("mesh").is_none() {
            ctx.err_line(
                None,
                "mesh",
                "the [mesh] section is missing",
                "add a [mesh] section with at least name = \"...\" and psk_file = \"psk\"",
            );
        }
        return m;
    };
    t.check_keys(ctx, MESH_KEYS);

    if let Some(name) = t.req_str(ctx, "name", "name = \"lab\"") {
        if name.v.is_empty()
            || name.v.chars().count() > 64
            || name.v.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            ctx.err(
                &name.span,
                t.key("name"),
                format!("\"{}\" is not a usable mesh name", name.v.escape_default()),
                "use 1-64 characters without spaces, e.g. name = \"lab\"",
            );
        } else {
            m.name = Some(name.v.to_string());
        }
    }
    if let Some(p) = t.str(ctx, "psk_file", "psk_file = \"psk\"") {
        if p.v.is_empty() {
            ctx.err(
                &p.span,
                t.key("psk_file"),
                "psk_file is empty",
                "name the file holding the pre-shared key, e.g. psk_file = \"psk\" (relative to this file's folder)",
            );
        } else {
            m.psk_file = Some(At { v: PathBuf::from(p.v), span: p.span });
        }
    }
    m.key_file = t.str(ctx, "key_file", "key_file = \"/etc/meshd/node.key\"").map(|p| PathBuf::from(p.v));
    if let Some(port) = t.int(ctx, "vxlan_port", "vxlan_port = 4790") {
        match port.v {
            0 => ctx.err(
                &port.span,
                t.key("vxlan_port"),
                "vxlan_port 0 is not a usable UDP port",
                format!("remove the line to use {DEFAULT_VXLAN_PORT}, or pick a port from 1 to 65535"),
            ),
            1..=65535 => m.vxlan_port = port.v as u16,
            n => ctx.err(
                &port.span,
                t.key("vxlan_port"),
                format!("{n} is not a UDP port"),
                format!("remove the line to use {DEFAULT_VXLAN_PORT}, or pick a port from 1 to 65535"),
            ),
        }
    }
    if let Some(e) = choice::<Encap>(
        ctx,
        &t,
        "encap",
        "encap = \"udp\"",
        "use encap = \"udp\" (ESP in UDP on port 4500, the default) or encap = \"esp\" (IP protocol 50)",
    ) {
        m.encap = e;
    }
    if let Some(mode) = choice::<Mode>(
        ctx,
        &t,
        "mode",
        "mode = \"transport\"",
        "use mode = \"transport\" (the default) or mode = \"tunnel\"",
    ) {
        m.mode = mode;
    }
    m
}

fn parse_ike(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> IkeSection {
    let mut ike = IkeSection::default();
    let Some(t) = root.table(ctx, "ike", "[ike]", "[ike] followed by dpd = \"10s\" on the next line") else {
        return ike;
    };
    t.check_keys(ctx, IKE_KEYS);

    let example = "proposals = [\"aes256gcm16-prfsha256-x25519\", \"chacha20poly1305-prfsha256-x25519\"]";
    if let Some(v) = t.raw("proposals") {
        match v.get_ref() {
            DeValue::Array(items) if items.is_empty() => ctx.err(
                &v.span(),
                t.key("proposals"),
                "the proposal list is empty",
                format!("remove the line to use the defaults, or list at least one: {example}"),
            ),
            DeValue::Array(items) => {
                let mut list: Vec<Proposal> = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let key = format!("{}[{i}]", t.key("proposals"));
                    let DeValue::String(s) = item.get_ref() else {
                        ctx.err(
                            &item.span(),
                            key,
                            format!("expected a string, found {}", type_name(item.get_ref())),
                            format!("write it like {example}"),
                        );
                        ok = false;
                        continue;
                    };
                    match s.parse::<Proposal>() {
                        Ok(p) if list.contains(&p) => {
                            ctx.err(&item.span(), key, format!("\"{s}\" is listed twice"), "list each proposal once");
                            ok = false;
                        }
                        Ok(p) => list.push(p),
                        Err(problem) => {
                            ctx.err(&item.span(), key, problem, PROPOSAL_FORM);
                            ok = false;
                        }
                    }
                }
                if ok {
                    ike.proposals = list;
                    ike.proposals_explicit = true;
                }
            }
            _ => t.wrong_type(ctx, "proposals", v, "an array of strings", example),
        }
    }
    ike.ike_lifetime = duration(ctx, &t, "ike_lifetime", DEFAULT_IKE_LIFETIME);
    ike.child_lifetime = duration(ctx, &t, "child_lifetime", DEFAULT_CHILD_LIFETIME);
    ike.dpd = duration(ctx, &t, "dpd", DEFAULT_DPD);
    ike
}

pub(crate) fn duration(ctx: &mut Ctx<'_>, t: &Tab<'_, '_>, k: &str, default: Duration) -> Duration {
    let example = format!("{k} = \"{}\"", crate::duration::format_duration(default));
    if let Some(v) = t.raw(k) {
        if let Some(Some(n)) = integer(v.get_ref()) {
            ctx.err(
                &v.span(),
                t.key(k),
                format!("a bare number ({n}) has no unit"),
                format!("write it as a string with a unit, e.g. {k} = \"{n}s\""),
            );
            return default;
        }
    }
    let Some(s) = t.str(ctx, k, &example) else {
        return default;
    };
    match parse_duration(s.v) {
        Ok(d) if d.is_zero() => {
            ctx.err(
                &s.span,
                t.key(k),
                format!("{k} must be longer than 0s"),
                format!("remove the line to use the default, or write e.g. {example}"),
            );
            default
        }
        Ok(d) => d,
        Err(problem) => {
            ctx.err(&s.span, t.key(k), problem, DURATION_FORM);
            default
        }
    }
}

fn parse_nodes(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> Vec<NodeP> {
    let example = "[[node]] then name = \"n1\" and address = \"198.18.0.1\"";
    let Some(items) = root.array_of_tables(ctx, "node", example) else {
        if root.raw("node").is_none() {
            ctx.err_line(
                None,
                "node",
                "there are no [[node]] sections",
                "add one [[node]] section with name and address for every host in the mesh",
            );
        }
        return Vec::new();
    };
    if items.is_empty() {
        ctx.err_line(
            None,
            "node",
            "there are no [[node]] sections",
            "add one [[node]] section with name and address for every host in the mesh",
        );
    }
    let mut nodes = Vec::new();
    for (idx, item, table) in items {
        let t = Tab { t: table, path: format!("node[{idx}]"), span: item.span(), header: "[[node]]".into() };
        t.check_keys(ctx, NODE_KEYS);
        let public_keys = identity::node_keys(ctx, &t);
        let mut n =
            NodeP { idx, line: ctx.line(&t.span), name: None, address: None, ssh: None, mode: None, public_keys };
        if let Some(name) = t.req_str(ctx, "name", "name = \"n1\"") {
            if let Err(problem) = check_name(name.v) {
                ctx.err(&name.span, t.key("name"), problem, format!("{NAME_RULE}, e.g. name = \"n1\""));
            }
            n.name = Some(At { v: name.v.to_string(), span: name.span });
        }
        if let Some(addr) = t.req_str(ctx, "address", "address = \"198.18.0.1\"") {
            match addr.v.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) => ctx
                    .err(
                        &addr.span,
                        t.key("address"),
                        format!("{ip} is not a unicast address"),
                        "write the node's underlay unicast address, e.g. address = \"198.18.0.1\"",
                    ),
                Ok(ip) => n.address = Some(At { v: ip, span: addr.span }),
                Err(_) if addr.v.contains('/') => ctx.err(
                    &addr.span,
                    t.key("address"),
                    format!("\"{}\" has a prefix length", addr.v),
                    "write a single address without /prefix, e.g. address = \"198.18.0.1\"",
                ),
                Err(_) => ctx.err(
                    &addr.span,
                    t.key("address"),
                    format!("\"{}\" is not an IP address", addr.v.escape_default()),
                    "write the node's underlay IPv4 or IPv6 address, e.g. address = \"198.18.0.1\"",
                ),
            }
        }
        if let Some(ssh) = t.str(ctx, "ssh", "ssh = \"root@198.18.0.1\"") {
            if ssh.v.is_empty() || ssh.v.chars().any(|c| c.is_whitespace() || c.is_control()) || ssh.v.starts_with('-')
            {
                ctx.err(
                    &ssh.span,
                    t.key("ssh"),
                    format!("\"{}\" is not an ssh destination", ssh.v.escape_default()),
                    "write [user@]host without spaces, e.g. ssh = \"root@198.18.0.1\", or remove the line for root@ADDRESS",
                );
            } else {
                n.ssh = Some(ssh.v.to_string());
            }
        }
        n.mode = choice::<Mode>(
            ctx,
            &t,
            "mode",
            "mode = \"tunnel\"",
            "use mode = \"transport\" or mode = \"tunnel\", or remove the line to use [mesh] mode",
        );
        nodes.push(n);
    }
    nodes
}

fn parse_overlays(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> Vec<OverlayP> {
    let example = "[[overlay]] then name = \"ovl0\" and vni = 4242";
    let Some(items) = root.array_of_tables(ctx, "overlay", example) else {
        return Vec::new();
    };
    let mut overlays = Vec::new();
    for (idx, item, table) in items {
        // Name first: it names the overlay in every other key.
        let mut t = Tab { t: table, path: format!("overlay[{idx}]"), span: item.span(), header: "[[overlay]]".into() };
        let mut name = None;
        if let Some(n) = t.req_str(ctx, "name", "name = \"ovl0\"") {
            match check_name(n.v) {
                Ok(()) => t.path = format!("overlay.{}", n.v),
                Err(problem) => ctx.err(&n.span, t.key("name"), problem, format!("{NAME_RULE}, e.g. name = \"ovl0\"")),
            }
            name = Some(At { v: n.v.to_string(), span: n.span });
        }
        t.check_keys(ctx, OVERLAY_KEYS);
        let mut o = OverlayP {
            line: ctx.line(&t.span),
            prefix: t.path.clone(),
            name,
            vni: None,
            interface: None,
            interface_key: t.key("interface"),
            mtu: OverlayMtu::Auto,
            addresses: Vec::new(),
            static_macs: Vec::new(),
        };
        if let Some(vni) = t.req_int(ctx, "vni", "vni = 4242") {
            if (0..=i128::from(MAX_VNI)).contains(&vni.v) {
                o.vni = Some(At { v: vni.v as u32, span: vni.span });
            } else {
                ctx.err(
                    &vni.span,
                    t.key("vni"),
                    format!("VNI {} is out of range", vni.v),
                    format!("pick a VNI from 0 to {MAX_VNI} (24 bits)"),
                );
            }
        }
        match t.str(ctx, "interface", "interface = \"ovl0\"") {
            Some(ifname) => match check_ifname(ifname.v) {
                Ok(()) => o.interface = Some(At { v: ifname.v.to_string(), span: ifname.span }),
                Err(problem) => ctx.err(
                    &ifname.span,
                    t.key("interface"),
                    problem,
                    "use 1-15 characters without '/', ':' or spaces, e.g. interface = \"ovl0\"",
                ),
            },
            None if t.raw("interface").is_none() => {
                if let Some(n) = &o.name {
                    match check_ifname(&n.v) {
                        Ok(()) => {
                            o.interface = Some(n.clone());
                            o.interface_key = t.key("name");
                        }
                        Err(_) if check_name(&n.v).is_ok() => ctx.err(
                            &n.span,
                            t.key("name"),
                            format!(
                                "\"{}\" is also the interface name, and Linux interface names are at most 15 bytes",
                                n.v
                            ),
                            "use a name of at most 15 characters, or set interface = \"...\" to a shorter one",
                        ),
                        Err(_) => {} // the bad name is reported already
                    }
                }
            }
            None => {} // wrong type, reported
        }
        if let Some(v) = t.raw("mtu") {
            let fix = format!(
                "write mtu = \"auto\" or a number from {MIN_OVERLAY_MTU} to {MAX_OVERLAY_MTU}, e.g. mtu = 1400"
            );
            match v.get_ref() {
                DeValue::String(s) if s == "auto" => o.mtu = OverlayMtu::Auto,
                DeValue::String(s) => ctx.err(
                    &v.span(),
                    t.key("mtu"),
                    format!("\"{}\" is neither \"auto\" nor a number", s.escape_default()),
                    fix,
                ),
                DeValue::Integer(_) => match integer(v.get_ref()).flatten() {
                    Some(n) if (i128::from(MIN_OVERLAY_MTU)..=i128::from(MAX_OVERLAY_MTU)).contains(&n) => {
                        o.mtu = OverlayMtu::Fixed(n as u16)
                    }
                    Some(n) => ctx.err(&v.span(), t.key("mtu"), format!("MTU {n} is out of range"), fix),
                    None => ctx.err(&v.span(), t.key("mtu"), "the MTU is far too large", fix),
                },
                other => ctx.err(
                    &v.span(),
                    t.key("mtu"),
                    format!("expected \"auto\" or an integer, found {}", type_name(other)),
                    fix,
                ),
            }
        }
        if let Some(addrs) =
            t.table(ctx, "address", "[overlay.address]", "[overlay.address] followed by n1 = \"10.244.0.1/24\"")
        {
            for (k, v) in addrs.t.iter() {
                let node = At { v: k.get_ref().to_string(), span: k.span() };
                let key = addrs.key(&node.v);
                let addr = match v.get_ref() {
                    DeValue::String(s) => match s.parse::<IfaceAddress>() {
                        Ok(a) if a.addr.is_unspecified() || a.addr.is_multicast() || a.addr.is_loopback() => {
                            ctx.err(
                                &v.span(),
                                key,
                                format!("{} is not a usable host address", a.addr),
                                "write a unicast host address with its prefix length, e.g. n1 = \"10.244.0.1/24\"",
                            );
                            None
                        }
                        Ok(a) => Some(At { v: a, span: v.span() }),
                        Err(problem) => {
                            ctx.err(
                                &v.span(),
                                key,
                                format!("{problem}, so it is not an interface address"),
                                "write ADDRESS/PREFIX-LENGTH, e.g. n1 = \"10.244.0.1/24\"",
                            );
                            None
                        }
                    },
                    other => {
                        ctx.err(
                            &v.span(),
                            key,
                            format!("expected a string, found {}", type_name(other)),
                            "write ADDRESS/PREFIX-LENGTH in quotes, e.g. n1 = \"10.244.0.1/24\"",
                        );
                        None
                    }
                };
                o.addresses.push((node, addr));
            }
        }
        o.static_macs = parse_static_macs(ctx, &t);
        overlays.push(o);
    }
    overlays
}

/// `static_macs = [{ mac = "02:00:00:00:00:01", node = "n2" }]`; entries with a problem are
/// reported and left out.
fn parse_static_macs(ctx: &mut Ctx<'_>, overlay: &Tab<'_, '_>) -> Vec<(At<[u8; 6]>, At<String>)> {
    let example = "static_macs = [{ mac = \"02:00:00:00:00:01\", node = \"n2\" }]";
    let Some(items) = overlay.array_of_tables(ctx, "static_macs", example) else {
        return Vec::new();
    };
    if items.len() > MAX_STATIC_MACS {
        if let Some(v) = overlay.raw("static_macs") {
            ctx.err(
                &v.span(),
                overlay.key("static_macs"),
                format!("{} static MACs, more than the {MAX_STATIC_MACS} an overlay may pin", items.len()),
                "pin only the MACs that must never move (gateways, routers), and let the others be learned",
            );
        }
        return Vec::new();
    }
    let mut entries = Vec::new();
    for (idx, item, table) in items {
        let t = Tab {
            t: table,
            path: format!("{}[{idx}]", overlay.key("static_macs")),
            span: item.span(),
            header: "a static_macs entry".into(),
        };
        t.check_keys(ctx, STATIC_MAC_KEYS);
        let mac = t.req_str(ctx, "mac", "mac = \"02:00:00:00:00:01\"");
        let node = t.req_str(ctx, "node", "node = \"n2\"");
        let mac = mac.and_then(|mac| match parse_unicast_mac(mac.v) {
            Ok(bytes) => Some(At { v: bytes, span: mac.span }),
            Err(problem) => {
                ctx.err(&mac.span, t.key("mac"), problem, "write a unicast MAC like mac = \"02:00:00:00:00:01\"");
                None
            }
        });
        if let (Some(mac), Some(node)) = (mac, node) {
            entries.push((mac, At { v: node.v.to_string(), span: node.span }));
        }
    }
    entries
}

fn parse_manual_sas(ctx: &mut Ctx<'_>, root: &Tab<'_, '_>) -> Vec<ManualSaP> {
    let example = "[[manual_sa]] then from, to, spi, cipher and key";
    let Some(items) = root.array_of_tables(ctx, "manual_sa", example) else {
        return Vec::new();
    };
    let mut sas = Vec::new();
    for (idx, item, table) in items {
        let t = Tab { t: table, path: format!("manual_sa[{idx}]"), span: item.span(), header: "[[manual_sa]]".into() };
        t.check_keys(ctx, MANUAL_SA_KEYS);
        let mut sa = ManualSaP {
            line: ctx.line(&t.span),
            prefix: t.path.clone(),
            from: None,
            to: None,
            spi: None,
            cipher: None,
            key: None,
        };
        sa.from = t.req_str(ctx, "from", "from = \"n1\"").map(|s| At { v: s.v.to_string(), span: s.span });
        sa.to = t.req_str(ctx, "to", "to = \"n2\"").map(|s| At { v: s.v.to_string(), span: s.span });

        let spi_fix = format!(
            "write the SPI as hex or decimal, from {MIN_MANUAL_SPI} (0x100) to 4294967295 (0xffffffff), e.g. spi = \"0x00001001\""
        );
        if t.raw("spi").is_none() {
            t.missing(ctx, "spi", "spi = \"0x00001001\"");
        } else if let Some(v) = t.raw("spi") {
            let parsed: Option<i128> = match v.get_ref() {
                DeValue::Integer(_) => integer(v.get_ref()).flatten().or(Some(-1)),
                DeValue::String(s) => {
                    let s: &str = s;
                    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                            Some(i128::from_str_radix(hex, 16).unwrap_or(i128::MAX))
                        }
                        Some(_) => None,
                        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                            Some(s.parse::<i128>().unwrap_or(i128::MAX))
                        }
                        None => None,
                    };
                    if n.is_none() {
                        ctx.err(
                            &v.span(),
                            t.key("spi"),
                            format!("\"{}\" is not a hex (0x...) or decimal number", s.escape_default()),
                            spi_fix.clone(),
                        );
                    }
                    n
                }
                other => {
                    ctx.err(
                        &v.span(),
                        t.key("spi"),
                        format!("expected a string or an integer, found {}", type_name(other)),
                        spi_fix.clone(),
                    );
                    None
                }
            };
            match parsed {
                Some(n) if (i128::from(MIN_MANUAL_SPI)..=i128::from(u32::MAX)).contains(&n) => {
                    sa.spi = Some(At { v: n as u32, span: v.span() })
                }
                Some(n) if (0..i128::from(MIN_MANUAL_SPI)).contains(&n) => ctx.err(
                    &v.span(),
                    t.key("spi"),
                    format!("SPI {n} is reserved (0 is invalid and 1-255 are reserved by IANA)"),
                    spi_fix,
                ),
                Some(_) => ctx.err(&v.span(), t.key("spi"), "the SPI does not fit in 32 bits", spi_fix),
                None => {}
            }
        }
        if t.raw("cipher").is_none() {
            t.missing(ctx, "cipher", "cipher = \"aes256gcm16\"");
        }
        sa.cipher = choice::<Cipher>(
            ctx,
            &t,
            "cipher",
            "cipher = \"aes256gcm16\"",
            &format!("use one of {}", Cipher::choices()),
        );
        // Never echo the key: not in type errors either.
        let key_fix = "write 72 hex digits (a 32-byte key followed by a 4-byte salt), e.g. generated with `head -c 36 /dev/urandom | od -An -tx1 | tr -d ' \\n'`";
        match t.raw("key") {
            None => t.missing(ctx, "key", "key = \"<72 hex digits>\""),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => match KeyBytes::from_hex(s) {
                    Ok(k) => sa.key = Some(k),
                    Err(problem) => ctx.err(&v.span(), t.key("key"), problem, key_fix),
                },
                other => {
                    ctx.err(&v.span(), t.key("key"), format!("expected a string, found {}", type_name(other)), key_fix)
                }
            },
        }
        sas.push(sa);
    }
    sas
}
