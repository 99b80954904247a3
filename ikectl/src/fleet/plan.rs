//! The rollout of `ikectl fleet update` as pure code: what changes where, in which batches, and
//! what each node ends up as. The ssh driver (`update.rs`) feeds it what happened and does what
//! it says; nothing here touches the network or the clock.

use std::fmt;

use similar::TextDiff;

/// What the plan found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The node's config is byte-for-byte the new one.
    Unchanged,
    /// The node gets the new config; `diff` is a unified diff from its current one (the whole
    /// file as added lines when it had none).
    Update { diff: String, kind: UpdateKind },
    /// ssh could not reach the node, or could not read its config.
    Unreachable(String),
}

/// Why a node is in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// Its file differs from the new one.
    Changed,
    /// It has no file yet.
    New,
    /// It has the new file, but an interrupted run installed it and never saw meshd reload it.
    ReloadPending,
    /// Its meshd or ikectl binary differs from the one rolled out.
    Binary,
}

/// What fetching a node's current config gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `reload_pending`: a run installed this file and did not see meshd reload it.
    Config {
        text: String,
        reload_pending: bool,
    },
    /// No file at the config path (a node being added).
    Missing,
    Failed(String),
}

/// The change on one node, from its current config to `new`.
pub fn change(node: &str, fetched: Fetched, new: &str) -> Change {
    match fetched {
        Fetched::Config { text, reload_pending: false } if text == new => Change::Unchanged,
        Fetched::Config { text, reload_pending: true } if text == new => {
            Change::Update { diff: String::new(), kind: UpdateKind::ReloadPending }
        }
        Fetched::Config { text, .. } => {
            Change::Update { diff: unified_diff(node, &text, new), kind: UpdateKind::Changed }
        }
        Fetched::Missing => Change::Update { diff: unified_diff(node, "", new), kind: UpdateKind::New },
        Fetched::Failed(reason) => Change::Unreachable(reason),
    }
}

/// The diff with `[[manual_sa]]` keys redacted: it is printed and put in JSON.
fn unified_diff(node: &str, current: &str, new: &str) -> String {
    let diff = TextDiff::from_lines(current, new)
        .unified_diff()
        .context_radius(2)
        .header(&format!("{node}: current"), &format!("{node}: new"))
        .to_string();
    super::sanitize::redact_keys(&diff)
}

/// The canary (the first node to update, alone), then batches of `batch` nodes, in the order
/// given. `batch` 0 is taken as 1.
pub fn batches(to_update: &[usize], batch: usize) -> Vec<Vec<usize>> {
    let Some((canary, rest)) = to_update.split_first() else {
        return Vec::new();
    };
    let mut batches = vec![vec![*canary]];
    batches.extend(rest.chunks(batch.max(1)).map(<[usize]>::to_vec));
    batches
}

/// How one node ends the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Updated,
    /// Its batch failed; the node is on its previous config again.
    RolledBack(String),
    Unreachable(String),
    /// Not tried: the rollout stopped before its batch.
    Skipped(String),
    /// Its batch failed and restoring its previous config failed too: the operator must look.
    Failed(String),
}

impl Outcome {
    /// Whether the node runs the new config (the fleet command succeeds only when all do).
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::Updated)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Updated => "updated",
            Outcome::RolledBack(_) => "rolled back",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "FAILED",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Unchanged | Outcome::Updated => "",
            Outcome::RolledBack(r) | Outcome::Unreachable(r) | Outcome::Skipped(r) | Outcome::Failed(r) => r,
        }
    }
}

/// The step of the per-node apply sequence that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Upload,
    Check,
    Install,
    Reload,
    /// Restarting meshd after its binary was replaced.
    Restart,
    Health,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Upload => "upload",
            Step::Check => "meshd check",
            Step::Install => "install",
            Step::Reload => "reload",
            Step::Restart => "restart",
            Step::Health => "health check",
        })
    }
}

/// One node's failure in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub reason: String,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Upload, check, install and reload the new config (or restart on the new binary) on these
    /// nodes.
    Apply(Vec<usize>),
    /// Wait until these nodes have SAs both ways with their peers.
    CheckHealth(Vec<usize>),
    /// Put the previous config (or binary) back on these nodes and reload (restart) them.
    Restore(Vec<usize>),
    Done,
}

/// The rollout state machine: canary, then batches; on any failure the batch is restored and
/// the rollout stops.
#[derive(Debug)]
pub struct Rollout {
    names: Vec<String>,
    outcomes: Vec<Option<Outcome>>,
    batches: Vec<Vec<usize>>,
    current: usize,
    /// Nodes of the current batch whose live config was replaced (they need restoring on failure).
    installed: Vec<usize>,
    /// Why the current batch is being restored.
    stop_reason: Option<String>,
    next: Action,
}

impl Rollout {
    /// `changes[i]` is node `names[i]`'s change; `batch` nodes per batch after the canary.
    pub fn new(names: Vec<String>, changes: &[Change], batch: usize) -> Rollout {
        let outcomes: Vec<Option<Outcome>> = changes
            .iter()
            .map(|change| match change {
                Change::Unchanged => Some(Outcome::Unchanged),
                Change::Unreachable(reason) => Some(Outcome::Unreachable(reason.clone())),
                Change::Update { .. } => None,
            })
            .collect();
        let to_update: Vec<usize> = (0..changes.len()).filter(|&i| outcomes[i].is_none()).collect();
        let batches = batches(&to_update, batch);
        let next = batches.first().map_or(Action::Done, |first| Action::Apply(first.clone()));
        Rollout { names, outcomes, batches, current: 0, installed: Vec::new(), stop_reason: None, next }
    }

    /// What to do now.
    pub fn next_action(&self) -> &Action {
        &self.next
    }

    /// The batches, canary first.
    pub fn batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    /// The apply step of the current batch finished: per node, `Ok` or where it failed.
    /// `installed` names the nodes whose live config was replaced (even if a later step failed).
    pub fn applied(&mut self, results: Vec<(usize, Result<(), Failure>)>, installed: Vec<usize>) {
        self.installed = installed;
        let batch = self.batch_nodes();
        match self.failures(results) {
            None => self.next = Action::CheckHealth(batch),
            Some(reason) => self.fail_batch(reason),
        }
    }

    /// The health check of the current batch finished.
    pub fn health_checked(&mut self, results: Vec<(usize, Result<(), Failure>)>) {
        if let Some(reason) = self.failures(results) {
            self.fail_batch(reason);
        } else {
            for node in self.batch_nodes() {
                self.outcomes[node] = Some(Outcome::Updated);
            }
            self.installed.clear();
            self.current += 1;
            self.next = self.batches.get(self.current).map_or(Action::Done, |b| Action::Apply(b.clone()));
        }
    }

    /// Restoring the current batch finished: per restored node, `Ok` or why not.
    pub fn restored(&mut self, results: Vec<(usize, Result<(), String>)>) {
        let reason = self.stop_reason.clone().unwrap_or_default();
        for node in self.batch_nodes() {
            self.outcomes[node] = Some(Outcome::RolledBack(reason.clone()));
        }
        for (node, result) in results {
            if let Err(error) = result {
                self.outcomes[node] = Some(Outcome::Failed(format!(
                    "{reason}; restoring the previous version failed too: {error} (log in and put the .fleet-previous file back)"
                )));
            }
        }
        let skipped = format!("not tried: the rollout stopped at batch {} ({reason})", self.current + 1);
        for later in self.batches.iter().skip(self.current + 1).flatten() {
            self.outcomes[*later] = Some(Outcome::Skipped(skipped.clone()));
        }
        self.next = Action::Done;
    }

    /// Every node's outcome, once [`Action::Done`]; nodes never reached (cannot happen once
    /// done) show as skipped.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.iter().map(|o| o.clone().unwrap_or_else(|| Outcome::Skipped("not reached".into()))).collect()
    }

    fn batch_nodes(&self) -> Vec<usize> {
        self.batches.get(self.current).cloned().unwrap_or_default()
    }

    /// "n3: meshd check failed: ...; n4: ..." for the nodes that failed, `None` when none did.
    fn failures(&self, results: Vec<(usize, Result<(), Failure>)>) -> Option<String> {
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(node, result)| {
                result.err().map(|f| format!("{}: {} failed: {}", self.names[node], f.step, f.reason))
            })
            .collect();
        (!failures.is_empty()).then(|| failures.join("; "))
    }

    fn fail_batch(&mut self, reason: String) {
        self.stop_reason = Some(reason);
        self.next = Action::Restore(std::mem::take(&mut self.installed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn update() -> Change {
        Change::Update { diff: String::new(), kind: UpdateKind::Changed }
    }

    fn broken(step: Step) -> Result<(), Failure> {
        Err(Failure { step, reason: "boom".into() })
    }

    #[test]
    fn change_per_node() {
        let config = |text: &str, reload_pending| Fetched::Config { text: text.into(), reload_pending };
        assert_eq!(change("n1", config("a\n", false), "a\n"), Change::Unchanged);
        assert_eq!(
            change("n1", config("a\n", true), "a\n"),
            Change::Update { diff: String::new(), kind: UpdateKind::ReloadPending }
        );
        let Change::Update { diff, kind: UpdateKind::Changed } = change("n1", config("a\nb\n", false), "a\nc\n") else {
            panic!("an update")
        };
        assert!(diff.contains("-b\n") && diff.contains("+c\n") && diff.contains("n1: new"), "{diff}");
        let Change::Update { diff, kind: UpdateKind::New } = change("n4", Fetched::Missing, "x\n") else { panic!() };
        assert!(diff.contains("+x\n"), "{diff}");
        assert_eq!(change("n1", Fetched::Failed("no route".into()), "a"), Change::Unreachable("no route".into()));
    }

    #[test]
    fn diffs_never_show_manual_keys() {
        let (old_key, new_key) = ("00".repeat(36), "ff".repeat(36));
        let current = format!("[[manual_sa]]\nspi = \"0x1102\"\nkey = \"{old_key}\"\n");
        let new = format!("[[manual_sa]]\nspi = \"0x1102\"\nkey = \"{new_key}\"\n");
        let fetched = Fetched::Config { text: current, reload_pending: false };
        let Change::Update { diff, .. } = change("n1", fetched, &new) else { panic!("an update") };
        assert!(!diff.contains(&old_key) && !diff.contains(&new_key), "{diff}");
        assert!(diff.contains("-key = \"<redacted>\"\n+key = \"<redacted>\""), "the change still shows: {diff}");
        let Change::Update { diff, .. } = change("n4", Fetched::Missing, &new) else { panic!("an update") };
        assert!(!diff.contains(&new_key), "{diff}");
    }

    #[test]
    fn canary_then_batches() {
        assert_eq!(batches(&[0, 1, 2, 3, 4], 2), vec![vec![0], vec![1, 2], vec![3, 4]]);
        assert_eq!(batches(&[3, 5], 10), vec![vec![3], vec![5]]);
        assert_eq!(batches(&[7], 0), vec![vec![7]]);
        assert!(batches(&[], 3).is_empty());
    }

    #[test]
    fn a_clean_rollout_updates_every_changed_node() {
        let changes = [update(), Change::Unchanged, update(), update()];
        let mut rollout = Rollout::new(names(4), &changes, 2);
        assert_eq!(rollout.next_action(), &Action::Apply(vec![0]));
        rollout.applied(vec![(0, Ok(()))], vec![0]);
        assert_eq!(rollout.next_action(), &Action::CheckHealth(vec![0]));
        rollout.health_checked(vec![(0, Ok(()))]);
        assert_eq!(rollout.next_action(), &Action::Apply(vec![2, 3]));
        rollout.applied(vec![(2, Ok(())), (3, Ok(()))], vec![2, 3]);
        rollout.health_checked(vec![(2, Ok(())), (3, Ok(()))]);
        assert_eq!(rollout.next_action(), &Action::Done);
        assert_eq!(rollout.outcomes(), vec![Outcome::Updated, Outcome::Unchanged, Outcome::Updated, Outcome::Updated]);
    }

    #[test]
    fn a_failed_check_restores_the_batch_and_stops() {
        let changes = [update(), update(), update(), update(), update()];
        let mut rollout = Rollout::new(names(5), &changes, 2);
        rollout.applied(vec![(0, Ok(()))], vec![0]);
        rollout.health_checked(vec![(0, Ok(()))]);
        // n3 refuses the config before it is installed; n2 was already installed.
        rollout.applied(vec![(1, Ok(())), (2, broken(Step::Check))], vec![1]);
        assert_eq!(rollout.next_action(), &Action::Restore(vec![1]));
        rollout.restored(vec![(1, Ok(()))]);
        assert_eq!(rollout.next_action(), &Action::Done);
        let outcomes = rollout.outcomes();
        assert_eq!(outcomes[0], Outcome::Updated);
        assert!(matches!(&outcomes[1], Outcome::RolledBack(r) if r.contains("n3: meshd check failed: boom")));
        assert!(matches!(&outcomes[2], Outcome::RolledBack(_)));
        assert!(matches!(&outcomes[3], Outcome::Skipped(r) if r.contains("batch 2")));
        assert!(matches!(&outcomes[4], Outcome::Skipped(_)));
        assert!(!outcomes[1].is_success());
    }

    #[test]
    fn an_unhealthy_canary_is_restored() {
        let mut rollout = Rollout::new(names(2), &[update(), update()], 1);
        rollout.applied(vec![(0, Ok(()))], vec![0]);
        rollout.health_checked(vec![(0, broken(Step::Health))]);
        assert_eq!(rollout.next_action(), &Action::Restore(vec![0]));
        rollout.restored(vec![(0, Err("disk full".into()))]);
        let outcomes = rollout.outcomes();
        assert!(matches!(&outcomes[0], Outcome::Failed(r) if r.contains("disk full") && r.contains("health check")));
        assert!(matches!(&outcomes[1], Outcome::Skipped(_)));
    }

    #[test]
    fn unreachable_nodes_are_reported_and_the_rest_rolls_out() {
        let changes = [Change::Unreachable("timeout".into()), update()];
        let mut rollout = Rollout::new(names(2), &changes, 1);
        assert_eq!(rollout.next_action(), &Action::Apply(vec![1]));
        rollout.applied(vec![(1, Ok(()))], vec![1]);
        rollout.health_checked(vec![(1, Ok(()))]);
        let outcomes = rollout.outcomes();
        assert_eq!(outcomes[0], Outcome::Unreachable("timeout".into()));
        assert!(!outcomes[0].is_success());
        assert_eq!(outcomes[1], Outcome::Updated);
    }

    #[test]
    fn nothing_to_do() {
        let rollout = Rollout::new(names(1), &[Change::Unchanged], 1);
        assert_eq!(rollout.next_action(), &Action::Done);
        assert_eq!(rollout.outcomes(), vec![Outcome::Unchanged]);
    }
}
