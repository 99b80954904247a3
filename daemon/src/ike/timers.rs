//! The endpoint's timers: one deadline per key, ordered, so that finding the next deadline and
//! the due keys costs a logarithm of their number instead of a walk over every IKE SA.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

pub(super) struct Timers<K> {
    deadlines: HashMap<K, Instant>,
    order: BTreeSet<(Instant, K)>,
}

impl<K: Copy + Ord + Hash> Timers<K> {
    pub(super) fn new() -> Self {
        Timers { deadlines: HashMap::new(), order: BTreeSet::new() }
    }

    /// Sets (or, with `None`, clears) the deadline of `key`, replacing the one it had.
    pub(super) fn set(&mut self, key: K, deadline: Option<Instant>) {
        let previous = match deadline {
            Some(at) => self.deadlines.insert(key, at),
            None => self.deadlines.remove(&key),
        };
        if let Some(previous) = previous {
            self.order.remove(&(previous, key));
        }
        if let Some(at) = deadline {
            self.order.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Takes out the key with the earliest deadline if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self.next()? > now {
            return None;
        }
        let (_, key) = self.order.pop_first()?;
        self.deadlines.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keys_come_out_in_deadline_order_once_due() {
        let now = Instant::now();
        let mut timers = Timers::new();
        timers.set(1u64, Some(now + Duration::from_secs(3)));
        timers.set(2, Some(now + Duration::from_secs(1)));
        timers.set(3, Some(now + Duration::from_secs(2)));
        assert_eq!(timers.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(now), None, "nothing is due yet");
        let later = now + Duration::from_secs(2);
        assert_eq!(timers.pop_due(later), Some(2));
        assert_eq!(timers.pop_due(later), Some(3));
        assert_eq!(timers.pop_due(later), None);
        assert_eq!(timers.next(), Some(now + Duration::from_secs(3)));
    }

    #[test]
    fn a_new_deadline_replaces_the_old_one_and_none_clears_it() {
        let now = Instant::now();
        let mut timers = Timers::new();
        timers.set(1u64, Some(now));
        timers.set(1, Some(now + Duration::from_secs(5)));
        assert_eq!(timers.pop_due(now), None, "the old deadline is gone");
        assert_eq!(timers.next(), Some(now + Duration::from_secs(5)));
        timers.set(1, None);
        assert_eq!(timers.next(), None);
        assert!(timers.deadlines.is_empty() && timers.order.is_empty());
    }

    #[test]
    fn equal_deadlines_keep_every_key() {
        let now = Instant::now();
        let mut timers = Timers::new();
        for key in 0..1000u64 {
            timers.set(key, Some(now));
        }
        let due: Vec<u64> = std::iter::from_fn(|| timers.pop_due(now)).collect();
        assert_eq!(due, (0..1000).collect::<Vec<_>>());
    }
}
