//! Checks across entries (duplicates, references, address families) and the psk_file.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::config::{list, resolve_relative, MIN_PSK_LEN};
use crate::entries::{ManualSaP, NodeP, OverlayP};
use crate::reader::{At, Ctx};
use crate::secret::Psk;

pub(crate) fn nodes(ctx: &mut Ctx<'_>, nodes: &[NodeP]) {
    let mut by_name: BTreeMap<&str, &NodeP> = BTreeMap::new();
    let mut by_addr: BTreeMap<IpAddr, &NodeP> = BTreeMap::new();
    let mut first_family: Option<&NodeP> = None;
    for n in nodes {
        if let Some(name) = &n.name {
            match by_name.get(name.v.as_str()) {
                Some(prev) => ctx.err(
                    &name.span,
                    format!("node[{}].name", n.idx),
                    format!("\"{}\" is already the name of node[{}] (line {})", name.v, prev.idx, prev.line),
                    "give every node its own name",
                ),
                None => {
                    by_name.insert(&name.v, n);
                }
            }
        }
        let Some(addr) = &n.address else { continue };
        let key = format!("node[{}].address", n.idx);
        if let Some(prev) = by_addr.get(&addr.v) {
            let prev_line = prev.address.as_ref().map_or(prev.line, |a| ctx.line(&a.span));
            ctx.err(
                &addr.span,
                key,
                format!("{} is already the address of {} (line {prev_line})", addr.v, prev.label()),
                "give every node its own address",
            );
            continue;
        }
        by_addr.insert(addr.v, n);
        match first_family {
            None => first_family = Some(n),
            Some(first) => {
                let fa = first.address.as_ref().expect("has an address");
                if fa.v.is_ipv4() != addr.v.is_ipv4() {
                    let fam = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                    let first_line = ctx.line(&fa.span);
                    ctx.err(
                        &addr.span,
                        key,
                        format!(
                            "{} is an {} address but {} (line {first_line}) has the {} address {}",
                            addr.v,
                            fam(&addr.v),
                            first.label(),
                            fam(&fa.v),
                            fa.v
                        ),
                        "use one address family for every node: all IPv4 or all IPv6",
                    );
                }
            }
        }
    }
}

fn node_names(nodes: &[NodeP]) -> Vec<&str> {
    nodes.iter().filter_map(|n| n.name.as_ref().map(|a| a.v.as_str())).collect()
}

pub(crate) fn overlays(ctx: &mut Ctx<'_>, overlays: &[OverlayP], nodes: &[NodeP]) {
    let names = node_names(nodes);
    let mut by_name: BTreeMap<&str, &OverlayP> = BTreeMap::new();
    let mut by_vni: BTreeMap<u32, &OverlayP> = BTreeMap::new();
    let mut by_ifname: BTreeMap<&str, &OverlayP> = BTreeMap::new();
    for o in overlays {
        let mut name_taken = false;
        if let Some(name) = &o.name {
            if let Some(prev) = by_name.get(name.v.as_str()) {
                name_taken = true;
                ctx.err(
                    &name.span,
                    format!("{}.name", o.prefix),
                    format!("\"{}\" is already the name of the overlay at line {}", name.v, prev.line),
                    "give every overlay its own name",
                );
            } else {
                by_name.insert(&name.v, o);
            }
        }
        if let Some(vni) = &o.vni {
            if let Some(prev) = by_vni.get(&vni.v) {
                ctx.err(
                    &vni.span,
                    format!("{}.vni", o.prefix),
                    format!("VNI {} is already used by {} (line {})", vni.v, prev.label(), prev.line),
                    "give every overlay its own VNI",
                );
            } else {
                by_vni.insert(vni.v, o);
            }
        }
        // An interface named after a duplicate name is the same problem, reported once.
        let default_ifname = o.interface_key.ends_with(".name");
        if let Some(ifname) = o.interface.as_ref().filter(|_| !(name_taken && default_ifname)) {
            if let Some(prev) = by_ifname.get(ifname.v.as_str()) {
                ctx.err(
                    &ifname.span,
                    o.interface_key.clone(),
                    format!(
                        "interface \"{}\" is already the interface of {} (line {})",
                        ifname.v,
                        prev.label(),
                        prev.line
                    ),
                    "give every overlay its own interface name (set interface = \"...\")",
                );
            } else {
                by_ifname.insert(&ifname.v, o);
            }
        }
        static_macs(ctx, o, &names);
        let mut by_addr: BTreeMap<IpAddr, &At<String>> = BTreeMap::new();
        for (node, addr) in &o.addresses {
            let key = format!("{}.address.{}", o.prefix, node.v);
            if !names.contains(&node.v.as_str()) {
                ctx.err(
                    &node.span,
                    key.clone(),
                    format!("\"{}\" is not a node of this mesh", node.v),
                    format!("use one of the node names: {}", list(&names)),
                );
            }
            let Some(addr) = addr else { continue };
            if let Some(prev) = by_addr.get(&addr.v.addr) {
                let prev_line = ctx.line(&prev.span);
                ctx.err(
                    &addr.span,
                    key,
                    format!(
                        "{} is already the address of node \"{}\" on this overlay (line {prev_line})",
                        addr.v.addr, prev.v
                    ),
                    "give every node its own overlay address",
                );
            } else {
                by_addr.insert(addr.v.addr, node);
            }
        }
    }
}

/// Every static MAC names a node of the mesh, and appears once per overlay.
fn static_macs(ctx: &mut Ctx<'_>, overlay: &OverlayP, names: &[&str]) {
    let mut seen: BTreeMap<[u8; 6], usize> = BTreeMap::new();
    for (index, (mac, node)) in overlay.static_macs.iter().enumerate() {
        let key = format!("{}.static_macs[{index}]", overlay.prefix);
        if !names.contains(&node.v.as_str()) {
            ctx.err(
                &node.span,
                format!("{key}.node"),
                format!("\"{}\" is not a node of this mesh", node.v),
                format!("use one of the node names: {}", list(names)),
            );
        }
        if let Some(prev) = seen.get(&mac.v) {
            let prev_line = ctx.line(&overlay.static_macs[*prev].0.span);
            ctx.err(
                &mac.span,
                format!("{key}.mac"),
                format!("this MAC is already pinned on this overlay (line {prev_line})"),
                "pin every MAC once, behind the one node it lives on",
            );
        } else {
            seen.insert(mac.v, index);
        }
    }
}

pub(crate) fn manual_sas(ctx: &mut Ctx<'_>, sas: &[ManualSaP], nodes: &[NodeP]) {
    let names = node_names(nodes);
    let mut by_dir: BTreeMap<(&str, &str), &ManualSaP> = BTreeMap::new();
    let mut by_spi: BTreeMap<(&str, u32), &ManualSaP> = BTreeMap::new();
    for sa in sas {
        for (k, end) in [("from", &sa.from), ("to", &sa.to)] {
            if let Some(end) = end {
                if !names.contains(&end.v.as_str()) {
                    ctx.err(
                        &end.span,
                        format!("{}.{k}", sa.prefix),
                        format!("\"{}\" is not a node of this mesh", end.v),
                        format!("use one of the node names: {}", list(&names)),
                    );
                }
            }
        }
        let (Some(from), Some(to)) = (&sa.from, &sa.to) else {
            continue;
        };
        if from.v == to.v {
            ctx.err(
                &to.span,
                format!("{}.to", sa.prefix),
                format!("from and to are both \"{}\"", to.v),
                "a manual SA carries traffic from one node to another: name two different nodes",
            );
            continue;
        }
        if let Some(prev) = by_dir.get(&(from.v.as_str(), to.v.as_str())) {
            ctx.err_line(
                Some(sa.line),
                sa.prefix.clone(),
                format!("there is already a manual SA from \"{}\" to \"{}\" (line {})", from.v, to.v, prev.line),
                "keep one [[manual_sa]] per direction; the way back is its own entry with from and to swapped",
            );
        } else {
            by_dir.insert((&from.v, &to.v), sa);
        }
        let Some(spi) = &sa.spi else { continue };
        if let Some(prev) = by_spi.get(&(to.v.as_str(), spi.v)) {
            ctx.err(
                &spi.span,
                format!("{}.spi", sa.prefix),
                format!(
                    "SPI 0x{:08x} is already used by the manual SA from \"{}\" to \"{}\" (line {}); \"{}\" receives both",
                    spi.v,
                    prev.from.as_ref().map_or("?", |f| f.v.as_str()),
                    to.v,
                    prev.line,
                    to.v
                ),
                "give every SA that one node receives its own SPI",
            );
        } else {
            by_spi.insert((&to.v, spi.v), sa);
        }
    }
}

/// Checks and reads the psk_file. Problems are reported at the `psk_file` line; the key's
/// bytes never appear in a message.
pub(crate) fn read_psk(ctx: &mut Ctx<'_>, file: &At<PathBuf>) -> Option<Psk> {
    let path = resolve_relative(ctx.file, &file.v);
    let shown = path.display().to_string();
    let key = "mesh.psk_file";
    let create = format!(
        "create it (the same file on every node) with `head -c 32 /dev/urandom | base64 > {shown} && chmod 600 {shown}`, or correct psk_file (relative paths start at the mesh file's folder)"
    );
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ctx.err(&file.span, key, format!("the psk file {shown} does not exist"), create);
            return None;
        }
        Err(e) => {
            ctx.err(
                &file.span,
                key,
                format!("cannot read the psk file {shown}: {e}"),
                "check the path and that meshd (root) may read it",
            );
            return None;
        }
    };
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file" };
        ctx.err(
            &file.span,
            key,
            format!("the psk file {shown} is {what}"),
            "point psk_file at a regular file holding the pre-shared key",
        );
        return None;
    }
    let mode = meta.permissions().mode() & 0o7777;
    let mut ok = true;
    if mode & 0o077 != 0 {
        ctx.err(
            &file.span,
            key,
            format!("the psk file {shown} has mode {mode:04o}: group or others may read or write it"),
            format!("run `chmod 600 {shown}`"),
        );
        ok = false;
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    if let Err(e) = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        ctx.err(
            &file.span,
            key,
            format!("cannot read the psk file {shown}: {e}"),
            "check that meshd (root) may read it",
        );
        return None;
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.len() < MIN_PSK_LEN {
        ctx.err(
            &file.span,
            key,
            format!(
                "the psk file {shown} holds {} bytes (not counting a final newline); a pre-shared key needs at least {MIN_PSK_LEN}",
                bytes.len()
            ),
            format!("write at least {MIN_PSK_LEN} random bytes into it, e.g. `head -c 32 /dev/urandom | base64 > {shown}`, on every node"),
        );
        ok = false;
    }
    ok.then(|| Psk::new(std::mem::take(&mut *bytes)))
}
