//! The leader's notification window: a pure state machine, no I/O, time injected.
//!
//! Leading edge + trailing edge: the first commit after a quiet period is announced at once
//! and opens a window; commits inside the window are merged into one pending range that is
//! announced when the window closes (which opens the next window). A steady stream of commits
//! therefore costs one notification per window, and a lone commit costs no delay at all.

use std::time::{Duration, Instant};

/// A range of new sequences to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// First new sequence.
    pub from_sequence: u64,
    /// Last new sequence.
    pub to_sequence: u64,
    /// The term the entries were committed in.
    pub term: u64,
}

impl Announce {
    /// How many entries the range covers.
    pub fn entry_count(&self) -> u64 {
        self.to_sequence.saturating_sub(self.from_sequence) + 1
    }

    fn merge(self, other: Announce) -> Announce {
        Announce {
            from_sequence: self.from_sequence.min(other.from_sequence),
            to_sequence: self.to_sequence.max(other.to_sequence),
            term: self.term.max(other.term),
        }
    }
}

/// The window state machine.
#[derive(Debug, Clone)]
pub struct NotifyWindow {
    window: Duration,
    open_until: Option<Instant>,
    pending: Option<Announce>,
}

impl NotifyWindow {
    /// A closed window of the given length.
    pub fn new(window: Duration) -> Self {
        Self { window, open_until: None, pending: None }
    }

    /// A commit happened at `now`: returns the announcement to send at once, if any.
    pub fn on_commit(&mut self, now: Instant, range: Announce) -> Option<Announce> {
        match self.open_until {
            Some(until) if now < until => {
                self.pending = Some(match self.pending {
                    Some(p) => p.merge(range),
                    None => range,
                });
                None
            }
            _ => {
                // Quiet period (or an expired window whose deadline was not processed yet):
                // announce whatever is pending together with this commit, at once.
                let announce = match self.pending.take() {
                    Some(p) => p.merge(range),
                    None => range,
                };
                self.open_until = Some(now + self.window);
                Some(announce)
            }
        }
    }

    /// The window's deadline passed: returns the trailing announcement, if any.
    pub fn on_deadline(&mut self, now: Instant) -> Option<Announce> {
        match self.open_until {
            Some(until) if now >= until => match self.pending.take() {
                Some(p) => {
                    self.open_until = Some(now + self.window);
                    Some(p)
                }
                None => {
                    self.open_until = None;
                    None
                }
            },
            _ => None,
        }
    }

    /// When `on_deadline` must be called next, if at all.
    pub fn deadline(&self) -> Option<Instant> {
        self.open_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(from: u64, to: u64) -> Announce {
        Announce { from_sequence: from, to_sequence: to, term: 1 }
    }

    #[test]
    fn first_commit_is_announced_at_once() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(Duration::from_millis(100));
        assert_eq!(w.on_commit(t0, a(1, 1)), Some(a(1, 1)));
        assert_eq!(w.deadline(), Some(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn burst_in_window_becomes_one_trailing_announcement() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = NotifyWindow::new(ms(100));
        assert!(w.on_commit(t0, a(1, 1)).is_some());
        for i in 2..=50 {
            assert_eq!(w.on_commit(t0 + ms(i), a(i, i)), None);
        }
        assert_eq!(w.on_deadline(t0 + ms(99)), None, "deadline not reached yet");
        assert_eq!(w.on_deadline(t0 + ms(100)), Some(a(2, 50)));
        // the trailing announcement opened a new window; nothing more pending closes it
        assert_eq!(w.on_deadline(t0 + ms(200)), None);
        assert_eq!(w.deadline(), None);
        // a commit after the quiet period is announced at once again
        assert_eq!(w.on_commit(t0 + ms(300), a(51, 51)), Some(a(51, 51)));
    }

    #[test]
    fn late_deadline_processing_loses_nothing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = NotifyWindow::new(ms(100));
        w.on_commit(t0, a(1, 1));
        w.on_commit(t0 + ms(10), a(2, 3));
        // the deadline timer fired late, after another commit arrived past the window
        assert_eq!(w.on_commit(t0 + ms(150), a(4, 4)), Some(a(2, 4)));
    }

    #[test]
    fn sustained_stream_costs_one_announcement_per_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = NotifyWindow::new(ms(100));
        let mut announced = Vec::new();
        let mut next_deadline = None;
        for i in 0..1000u64 {
            let now = t0 + ms(i);
            if let Some(d) = next_deadline {
                if now >= d {
                    announced.extend(w.on_deadline(now));
                }
            }
            announced.extend(w.on_commit(now, a(i + 1, i + 1)));
            next_deadline = w.deadline();
        }
        announced.extend(w.on_deadline(t0 + ms(2000)));
        assert!(announced.len() <= 11, "{} announcements", announced.len());
        // every sequence announced exactly once, in order
        let mut expect = 1;
        for an in &announced {
            assert_eq!(an.from_sequence, expect);
            expect = an.to_sequence + 1;
        }
        assert_eq!(expect, 1001);
    }
}
