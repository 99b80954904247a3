//! `ikectl fleet status`: every node's peers, collected in parallel, as the N x N matrix, and
//! the meshd version each node runs.

use super::binary::{running_version, Running};
use super::matrix::{matrix, Cell, View};
use super::{Fleet, FleetOptions};
use crate::render::table;

/// Prints the matrix; `Ok(true)` when every pair is established and every node answered.
pub async fn status(options: &FleetOptions, json: bool) -> Result<bool, String> {
    let fleet = Fleet::connect(options, &[]).await?;
    let names = fleet.names();
    let indexes: Vec<usize> = (0..names.len()).collect();
    let (views, versions): (Vec<View>, Vec<Result<Running, String>>) = fleet
        .on_each(&indexes, |_, node| async move {
            match node {
                Ok(node) => (node.peers().await, running_version(&node).await),
                Err(unreachable) => (Err(unreachable.clone()), Err(unreachable)),
            }
        })
        .await
        .into_iter()
        .map(|(_, view_and_version)| view_and_version)
        .unzip();
    fleet.close().await;
    let cells = matrix(&names, &views);
    let healthy = views.iter().all(Result::is_ok) && cells.iter().flatten().all(Cell::is_healthy);
    if json {
        let value = serde_json::json!({
            "nodes": names,
            "errors": views.iter().map(|v| v.as_ref().err()).collect::<Vec<_>>(),
            "matrix": cells,
            "versions": versions
                .iter()
                .map(|v| v.as_ref().ok().map(|r| serde_json::json!({"meshd": r.version, "uptime_secs": r.uptime_secs})))
                .collect::<Vec<_>>(),
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
    let mut running = table(&["node", "meshd", "up"]);
    for (name, version) in names.iter().zip(&versions) {
        let (meshd, up) = match version {
            Ok(running) => (running.version.clone(), format!("{} s", running.uptime_secs)),
            Err(_) => ("?".to_string(), "?".to_string()),
        };
        running.add_row(vec![name.clone(), meshd, up]);
    }
    print!("{}", crate::render::finish(running));
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
