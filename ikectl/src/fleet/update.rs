//! `ikectl fleet update`: the driver of [`Rollout`] over ssh, for a mesh file or for binaries.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::binary::{self, Binaries};
use super::plan::{self, Action, Change, Failure, Fetched, Outcome, Rollout, Step, UpdateKind};
use super::remote::Node;
use super::{Fleet, FleetOptions};
use crate::render::{finish, table};

pub struct UpdateOptions {
    pub dry_run: bool,
    pub batch: usize,
    pub health_timeout: Duration,
    pub json: bool,
    /// Roll these binaries out instead of the mesh file.
    pub binaries: Option<BinaryOptions>,
}

/// `--meshd` and `--ikectl` of a binary rollout.
pub struct BinaryOptions {
    pub meshd: Option<std::path::PathBuf>,
    pub ikectl: Option<std::path::PathBuf>,
}

/// What a rollout puts on the nodes.
enum Artifact {
    /// The text of the new mesh file.
    Config(String),
    Binaries(Binaries),
}

/// How often a node's peers are asked while waiting for its SAs.
const HEALTH_POLL: Duration = Duration::from_secs(1);

/// Plans, then rolls out; `Ok(true)` when every node ends on the new config (or binaries).
pub async fn update(options: &FleetOptions, update: &UpdateOptions) -> Result<bool, String> {
    let artifact = match &update.binaries {
        Some(b) => Artifact::Binaries(Binaries::read(b.meshd.as_ref(), b.ikectl.as_ref())?),
        None => Artifact::Config(
            std::fs::read_to_string(&options.config)
                .map_err(|e| format!("cannot read {}: {e}", options.config.display()))?,
        ),
    };
    let fleet = Fleet::connect(options, &[]).await?;
    let names = fleet.names();
    let all: Vec<usize> = (0..names.len()).collect();
    let artifact = &artifact;
    let changes: Vec<Change> = fleet
        .on_each(&all, |i, node| {
            let name = &names[i];
            async move {
                match (artifact, node) {
                    (Artifact::Config(text), Ok(node)) => plan::change(name, node.fetch_config().await, text),
                    (Artifact::Config(text), Err(unreachable)) => {
                        plan::change(name, Fetched::Failed(unreachable), text)
                    }
                    (Artifact::Binaries(binaries), Ok(node)) => binaries.change(binaries.fetch(&node).await),
                    (Artifact::Binaries(_), Err(unreachable)) => Change::Unreachable(unreachable),
                }
            }
        })
        .await
        .into_iter()
        .map(|(_, change)| change)
        .collect();
    let mut rollout = Rollout::new(names.clone(), &changes, update.batch);
    if !update.json {
        print!("{}", render_plan(&names, &changes, rollout.batches()));
    }
    if update.dry_run {
        fleet.close().await;
        let outcomes: Vec<Outcome> = changes
            .iter()
            .map(|c| match c {
                Change::Unchanged => Outcome::Unchanged,
                Change::Update { .. } => Outcome::Skipped("dry run".into()),
                Change::Unreachable(reason) => Outcome::Unreachable(reason.clone()),
            })
            .collect();
        if update.json {
            println!("{}", outcomes_json(&names, &outcomes, Some(&changes)));
        }
        return Ok(!changes.iter().any(|c| matches!(c, Change::Unreachable(_))));
    }

    // A node is expected to reach every peer that answered the plan.
    let reachable: Vec<bool> = changes.iter().map(|c| !matches!(c, Change::Unreachable(_))).collect();
    // The version each node's new meshd printed, to check that the restart runs it.
    let mut new_versions: Vec<Option<String>> = vec![None; names.len()];
    let progress = progress_bar(rollout.batches().iter().map(Vec::len).sum());
    loop {
        match rollout.next_action().clone() {
            Action::Apply(batch) => {
                progress.set_message(format!("applying on {}", list(&names, &batch)));
                let results = fleet
                    .on_each(&batch, |_, node| async move {
                        match (artifact, node) {
                            (Artifact::Config(text), node) => {
                                let (result, installed) = apply(node, text).await;
                                (result, installed, None)
                            }
                            (Artifact::Binaries(binaries), Ok(node)) => binaries.apply(&node).await,
                            (Artifact::Binaries(_), Err(reason)) => {
                                (Err(Failure { step: Step::Upload, reason }), false, None)
                            }
                        }
                    })
                    .await;
                let installed = results.iter().filter(|(_, (_, installed, _))| *installed).map(|(i, _)| *i).collect();
                for (i, (_, _, version)) in &results {
                    new_versions[*i] = version.clone();
                }
                rollout.applied(results.into_iter().map(|(i, (result, _, _))| (i, result)).collect(), installed);
            }
            Action::CheckHealth(batch) => {
                progress.set_message(format!("waiting for SAs on {}", list(&names, &batch)));
                let (names, reachable, new_versions) = (&names, &reachable, &new_versions);
                let results = fleet
                    .on_each(&batch, |i, node| async move {
                        let peers: Vec<&str> =
                            (0..names.len()).filter(|&p| p != i && reachable[p]).map(|p| names[p].as_str()).collect();
                        let node = node.map_err(|reason| Failure { step: Step::Health, reason })?;
                        healthy(&node, &peers, update.health_timeout).await?;
                        match &new_versions[i] {
                            Some(version) => binary::runs_version(&node, version).await,
                            None => Ok(()),
                        }
                    })
                    .await;
                let passed = results.iter().filter(|(_, r)| r.is_ok()).count();
                rollout.health_checked(results);
                if matches!(rollout.next_action(), Action::Apply(_) | Action::Done) {
                    progress.inc(passed as u64);
                }
            }
            Action::Restore(nodes) => {
                progress.set_message(format!("restoring {}", list(&names, &nodes)));
                let results = fleet
                    .on_each(&nodes, |_, node| async move {
                        match (artifact, node) {
                            (Artifact::Config(_), Ok(node)) => node.restore().await,
                            (Artifact::Binaries(binaries), Ok(node)) => binaries.restore(&node).await,
                            (_, Err(unreachable)) => Err(unreachable),
                        }
                    })
                    .await;
                rollout.restored(results);
            }
            Action::Done => break,
        }
    }
    progress.finish_and_clear();
    fleet.close().await;
    let outcomes = rollout.outcomes();
    if update.json {
        println!("{}", outcomes_json(&names, &outcomes, None));
    } else {
        print!("{}", render_outcomes(&names, &outcomes));
    }
    Ok(outcomes.iter().all(Outcome::is_success))
}

/// Upload and check, install, reload: the result, and whether the live config was replaced.
async fn apply(node: Result<Node<'_>, String>, text: &str) -> (Result<(), Failure>, bool) {
    let node = match node {
        Ok(node) => node,
        Err(reason) => return (Err(Failure { step: Step::Upload, reason }), false),
    };
    if let Err(failure) = node.stage(text).await {
        return (Err(failure), false);
    }
    if let Err(failure) = node.install().await {
        // A failure after the rename (the folder's fsync, a dropped connection) leaves the new
        // file live: it is restored with the batch like one whose reload failed.
        let renamed = matches!(node.still_staged().await, Ok(false));
        return (Err(failure), renamed);
    }
    (node.reload().await, true)
}

/// Waits until the node has an SA both ways with each of `peers`.
async fn healthy(node: &Node<'_>, peers: &[&str], timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<&str> = match node.peers().await {
            Ok(views) => peers
                .iter()
                .copied()
                .filter(|p| {
                    !views.iter().any(|v| v.name == *p && v.outbound_spi.is_some() && !v.inbound_spis.is_empty())
                })
                .collect(),
            Err(_) if Instant::now() < deadline => peers.to_vec(),
            Err(reason) => return Err(Failure { step: Step::Health, reason }),
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure {
                step: Step::Health,
                reason: format!(
                    "no SAs both ways with {} after {} s (ikectl peers on {} says why)",
                    missing.join(", "),
                    timeout.as_secs(),
                    node.name
                ),
            });
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

fn progress_bar(nodes: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(nodes as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} nodes updated: {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn list(names: &[String], nodes: &[usize]) -> String {
    nodes.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>().join(", ")
}

fn render_plan(names: &[String], changes: &[Change], batches: &[Vec<usize>]) -> String {
    let mut out = String::from("plan:\n");
    for (name, change) in names.iter().zip(changes) {
        match change {
            Change::Unchanged => out.push_str(&format!("  {name}: unchanged\n")),
            Change::Unreachable(reason) => out.push_str(&format!("  {name}: UNREACHABLE: {reason}\n")),
            Change::Update { diff, kind } => {
                let what = match kind {
                    UpdateKind::Changed => "update",
                    UpdateKind::New => "new config (the node has none yet)",
                    UpdateKind::ReloadPending => {
                        "reload: the new file is in place, but an interrupted run never saw meshd reload it"
                    }
                    UpdateKind::Binary => "new binary",
                };
                out.push_str(&format!("  {name}: {what}\n"));
                for line in diff.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
    }
    if let Some((canary, rest)) = batches.split_first() {
        let mut order = format!("order: {} (canary)", list(names, canary));
        for batch in rest {
            order.push_str(&format!(", then [{}]", list(names, batch)));
        }
        out.push_str(&order);
        out.push('\n');
    }
    out
}

fn render_outcomes(names: &[String], outcomes: &[Outcome]) -> String {
    let mut grid = table(&["node", "result", "reason"]);
    for (name, outcome) in names.iter().zip(outcomes) {
        grid.add_row(vec![name.clone(), outcome.label().to_string(), outcome.reason().to_string()]);
    }
    finish(grid)
}

fn outcomes_json(names: &[String], outcomes: &[Outcome], changes: Option<&[Change]>) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = names
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (name, outcome))| {
            let diff = changes.and_then(|c| match &c[i] {
                Change::Update { diff, .. } => Some(diff.clone()),
                _ => None,
            });
            serde_json::json!({"node": name, "result": outcome.label(), "reason": outcome.reason(), "diff": diff})
        })
        .collect();
    serde_json::Value::Array(rows)
}
