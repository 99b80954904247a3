//! `ikectl fleet status`: every node's peers, collected in parallel, as the N x N matrix.

use super::matrix::{matrix, Cell, View};
use super::{Fleet, FleetOptions};
use crate::render::table;

/// Prints the matrix; `Ok(true)` when every pair is established and every node answered.
pub async fn status(options: &FleetOptions, json: bool) -> Result<bool, String> {
    let fleet = Fleet::connect(options, &[]).await?;
    let names = fleet.names();
    let indexes: Vec<usize> = (0..names.len()).collect();
    let views: Vec<View> = fleet
        .on_each(&indexes, |_, node| async move {
            match node {
                Ok(node) => node.peers().await,
                Err(unreachable) => Err(unreachable),
            }
        })
        .await
        .into_iter()
        .map(|(_, view)| view)
        .collect();
    let cells = matrix(&names, &views, |a, b| fleet.config.share_overlay(a, b));
    fleet.close().await;
    let healthy = views.iter().all(Result::is_ok) && cells.iter().flatten().all(Cell::is_healthy);
    if json {
        let value = serde_json::json!({
            "nodes": names,
            "errors": views.iter().map(|v| v.as_ref().err()).collect::<Vec<_>>(),
            "matrix": cells,
        });
        println!("{value:#}");
        return Ok(healthy);
    }
    let mut header = vec!["from \\ to"];
    header.extend(names.iter().map(String::as_str));
    let mut grid = table(&header);
    for (name, row) in names.iter().zip(&cells) {
        let mut line = vec![name.clone()];
        line.extend(row.iter().map(Cell::text));
        grid.add_row(line);
    }
    print!("{}", crate::render::finish(grid));
    for (name, view) in names.iter().zip(&views) {
        if let Err(error) = view {
            println!("{name}: {error}");
        }
    }
    println!(
        "{}",
        if healthy {
            "every pair is established"
        } else {
            "some pairs are not established: ikectl peers / ikectl sa list on the nodes named, docs/troubleshooting.md"
        }
    );
    Ok(healthy)
}
