//! `ikectl fleet status`: the N x N health matrix of the mesh, from every node's own view of
//! its peers (`ikectl --json peers` on each node). Pure: the ssh side collects the views.

use serde::{Deserialize, Serialize};

use mesh_config::control::Spi;

/// The part of a node's `ikectl --json peers` entry the matrix needs. Kept apart from the
/// control protocol's `PeerInfo` so a node running another ikectl still shows in the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub outbound_spi: Option<Spi>,
    #[serde(default)]
    pub inbound_spis: Vec<Spi>,
    /// The path MTU towards the peer, on daemons that measure it.
    #[serde(default)]
    pub path_mtu: Option<u32>,
}

/// The state of one ordered pair, seen from both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Cell {
    /// The diagonal.
    This,
    /// Each side's outbound SA is one of the other side's inbound SAs.
    Established { path_mtu: Option<u32> },
    /// Neither side has an SA for the other.
    Missing,
    /// Only one direction works, or one side has SAs the other does not know.
    OneSided { detail: String },
    /// The row's node does not list the column's node as a peer (their mesh files differ).
    NotPeered,
    /// The two nodes share no overlay, so they never peer (and neither lists the other).
    NoSharedOverlay,
    /// The row's or the column's node could not be asked.
    Unknown { detail: String },
}

impl Cell {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Cell::This | Cell::Established { .. } | Cell::NoSharedOverlay)
    }

    pub fn text(&self) -> String {
        match self {
            Cell::This => "-".into(),
            Cell::Established { path_mtu: Some(mtu) } => format!("established (path MTU {mtu})"),
            Cell::Established { path_mtu: None } => "established".into(),
            Cell::Missing => "MISSING".into(),
            Cell::OneSided { detail } => format!("ONE-SIDED: {detail}"),
            Cell::NotPeered => "NOT PEERED (mesh files differ)".into(),
            Cell::NoSharedOverlay => "not peered (no shared overlay)".into(),
            Cell::Unknown { detail } => format!("? {detail}"),
        }
    }
}

/// One node's answer: its peers, or why it could not be asked.
pub type View = Result<Vec<PeerView>, String>;

/// `cells[row][column]`: the pair (row, column) as row sees it, checked against column's view.
/// `share_overlay` says which pairs the mesh file peers (`MeshConfig::share_overlay`).
pub fn matrix(names: &[String], views: &[View], share_overlay: impl Fn(&str, &str) -> bool) -> Vec<Vec<Cell>> {
    (0..names.len())
        .map(|row| (0..names.len()).map(|column| cell(names, views, &share_overlay, row, column)).collect())
        .collect()
}

fn cell(
    names: &[String],
    views: &[View],
    share_overlay: &impl Fn(&str, &str) -> bool,
    row: usize,
    column: usize,
) -> Cell {
    if row == column {
        return Cell::This;
    }
    let (a, b) = (&names[row], &names[column]);
    let listed = |view: &View, name: &str| view.as_ref().is_ok_and(|peers| peers.iter().any(|p| p.name == name));
    // Apart by the file and apart in fact; a node that still lists the other falls through.
    if !share_overlay(a, b) && !listed(&views[row], b) && !listed(&views[column], a) {
        return Cell::NoSharedOverlay;
    }
    let a_view = match &views[row] {
        Ok(peers) => peers,
        Err(_) => return Cell::Unknown { detail: format!("{a} unreachable") },
    };
    let Some(a_to_b) = a_view.iter().find(|p| &p.name == b) else {
        return Cell::NotPeered;
    };
    let a_has_sas = a_to_b.outbound_spi.is_some() || !a_to_b.inbound_spis.is_empty();
    let b_to_a = match &views[column] {
        Ok(peers) => peers.iter().find(|p| &p.name == a),
        Err(_) => {
            let own = if a_has_sas { "has SAs" } else { "has no SA" };
            return Cell::Unknown { detail: format!("{b} unreachable; {a} {own}") };
        }
    };
    let Some(b_to_a) = b_to_a else {
        return if a_has_sas {
            Cell::OneSided { detail: format!("{a} has SAs, {b} does not peer with {a}") }
        } else {
            Cell::NotPeered
        };
    };
    let b_has_sas = b_to_a.outbound_spi.is_some() || !b_to_a.inbound_spis.is_empty();
    let forward = a_to_b.outbound_spi.is_some_and(|spi| b_to_a.inbound_spis.contains(&spi));
    let backward = b_to_a.outbound_spi.is_some_and(|spi| a_to_b.inbound_spis.contains(&spi));
    match (forward, backward) {
        (true, true) => Cell::Established { path_mtu: a_to_b.path_mtu },
        _ if !a_has_sas && !b_has_sas => Cell::Missing,
        (true, false) => Cell::OneSided { detail: format!("{a}->{b} works, {b}->{a} does not") },
        (false, true) => Cell::OneSided { detail: format!("{b}->{a} works, {a}->{b} does not") },
        (false, false) => {
            let side = |name: &str, has: bool| format!("{name} {}", if has { "has SAs" } else { "has none" });
            Cell::OneSided { detail: format!("no SA agrees: {}, {}", side(a, a_has_sas), side(b, b_has_sas)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, out: Option<u32>, inbound: &[u32]) -> PeerView {
        PeerView {
            name: name.into(),
            outbound_spi: out.map(Spi),
            inbound_spis: inbound.iter().copied().map(Spi).collect(),
            path_mtu: None,
        }
    }

    fn names() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    #[test]
    fn established_missing_and_one_sided() {
        let views = vec![
            Ok(vec![peer("n2", Some(0x12), &[0x21]), peer("n3", Some(0x13), &[])]),
            Ok(vec![peer("n1", Some(0x21), &[0x12]), peer("n3", None, &[])]),
            Ok(vec![peer("n1", None, &[]), peer("n2", None, &[])]),
        ];
        let m = matrix(&names(), &views, |_, _| true);
        assert_eq!(m[0][0], Cell::This);
        assert_eq!(m[0][1], Cell::Established { path_mtu: None });
        assert_eq!(m[1][0], Cell::Established { path_mtu: None });
        assert_eq!(m[1][2], Cell::Missing);
        assert_eq!(m[2][1], Cell::Missing);
        assert!(
            matches!(&m[0][2], Cell::OneSided { detail } if detail.contains("no SA agrees") && detail.contains("n3 has none"))
        );
        assert!(matches!(&m[2][0], Cell::OneSided { .. }));
        assert!(m[0][1].is_healthy() && !m[1][2].is_healthy() && !m[0][2].is_healthy());
    }

    #[test]
    fn one_direction_only() {
        // n1's outbound SA is known to n2, but n2 sends with an SPI n1 has not got.
        let views = vec![Ok(vec![peer("n2", Some(0x12), &[])]), Ok(vec![peer("n1", Some(0x21), &[0x12])])];
        let m = matrix(&names()[..2], &views, |_, _| true);
        assert_eq!(m[0][1], Cell::OneSided { detail: "n1->n2 works, n2->n1 does not".into() });
        assert_eq!(m[1][0], Cell::OneSided { detail: "n1->n2 works, n2->n1 does not".into() });
    }

    #[test]
    fn unreachable_and_not_peered() {
        let views = vec![Ok(vec![peer("n2", Some(1), &[2])]), Err("connection refused".into()), Ok(vec![])];
        let m = matrix(&names(), &views, |_, _| true);
        assert_eq!(m[0][1], Cell::Unknown { detail: "n2 unreachable; n1 has SAs".into() });
        assert_eq!(m[1][0], Cell::Unknown { detail: "n2 unreachable".into() });
        assert_eq!(m[0][2], Cell::NotPeered);
        assert_eq!(m[2][0], Cell::NotPeered);
    }

    #[test]
    fn pairs_that_share_no_overlay_are_not_peered_and_healthy() {
        // n1 and n3 share no overlay; n2 shares one with each.
        let apart = |a: &str, b: &str| [a, b].contains(&"n2");
        let views = vec![
            Ok(vec![peer("n2", Some(0x12), &[0x21])]),
            Ok(vec![peer("n1", Some(0x21), &[0x12]), peer("n3", Some(0x23), &[0x32])]),
            Ok(vec![peer("n2", Some(0x32), &[0x23])]),
        ];
        let m = matrix(&names(), &views, apart);
        assert_eq!((&m[0][2], &m[2][0]), (&Cell::NoSharedOverlay, &Cell::NoSharedOverlay));
        assert_eq!(m[0][2].text(), "not peered (no shared overlay)");
        assert!(m.iter().flatten().all(Cell::is_healthy));
        // A node that peers where the file says it should not: its mesh file differs.
        let stale =
            vec![Ok(vec![peer("n2", Some(0x12), &[0x21]), peer("n3", None, &[])]), views[1].clone(), views[2].clone()];
        assert_eq!(matrix(&names(), &stale, apart)[0][2], Cell::NotPeered);
    }

    #[test]
    fn path_mtu_shows_when_reported() {
        let mut a = peer("n2", Some(1), &[2]);
        a.path_mtu = Some(1500);
        let views = vec![Ok(vec![a]), Ok(vec![peer("n1", Some(2), &[1])])];
        let m = matrix(&names()[..2], &views, |_, _| true);
        assert_eq!(m[0][1].text(), "established (path MTU 1500)");
    }

    #[test]
    fn reads_ikectl_peers_json() {
        let json = r#"[{"name":"n2","address":"198.18.0.2","outbound_spi":"0x00001102","inbound_spis":["0x00001201"],"keying":"manual"}]"#;
        let peers: Vec<PeerView> = serde_json::from_str(json).unwrap();
        assert_eq!(peers[0], peer("n2", Some(0x1102), &[0x1201]));
    }
}
