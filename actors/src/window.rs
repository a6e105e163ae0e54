//! When a leader notifies one follower: a pure state machine, no I/O, time injected.
//!
//! Leading edge + trailing edge, clocked by the follower's answers:
//! - the first commit after a quiet period (no notification outstanding) is announced **at
//!   once**;
//! - commits made while a notification is outstanding are merged into **one** pending range,
//!   announced as soon as the follower answers the outstanding one — and at the latest `window`
//!   (100 ms by default) after the first of them, even if the follower has not answered yet (then
//!   at most two notifications are outstanding).
//!
//! A burst therefore costs at most one notification per round trip (and never more than one
//! per commit), a lone commit costs no delay at all, and a steady stream is announced with one
//! round trip of delay rather than up to a whole window. (A fixed trailing window — announcing
//! the commits of a window only when it closes — delayed every commit of a steady stream by half
//! a window on average: 50 ms at any rate above ten commits a second. See docs/performance.md.)

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

/// Notifications outstanding at most: one, plus one more sent at a window's end.
const MAX_OUTSTANDING: u8 = 2;

/// The notification state of one follower.
#[derive(Debug, Clone)]
pub struct NotifyWindow {
    window: Duration,
    outstanding: u8,
    pending: Option<(Announce, Instant)>,
}

impl NotifyWindow {
    /// Nothing outstanding; a pending range waits at most `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, outstanding: 0, pending: None }
    }

    fn send(&mut self, a: Announce) -> Option<Announce> {
        self.outstanding += 1;
        Some(a)
    }

    /// A commit happened at `now`: returns the announcement to send at once, if any.
    pub fn on_commit(&mut self, now: Instant, range: Announce) -> Option<Announce> {
        if self.outstanding == 0 && self.pending.is_none() {
            return self.send(range);
        }
        self.pending = Some(match self.pending {
            Some((p, since)) => (p.merge(range), since),
            None => (range, now),
        });
        // a late deadline (the timer fired after this commit) must not hold it longer
        self.on_deadline(now)
    }

    /// The follower answered (or failed to answer) an outstanding announcement: returns the
    /// pending announcement to send now, if any.
    pub fn on_answer(&mut self, _now: Instant) -> Option<Announce> {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.outstanding == 0 {
            if let Some((p, _)) = self.pending.take() {
                return self.send(p);
            }
        }
        None
    }

    /// Time passed: returns the pending announcement if it waited a whole window.
    pub fn on_deadline(&mut self, now: Instant) -> Option<Announce> {
        match self.pending {
            Some((p, since))
                if now >= since + self.window && self.outstanding < MAX_OUTSTANDING =>
            {
                self.pending = None;
                self.send(p)
            }
            _ => None,
        }
    }

    /// When `on_deadline` must be called next, if at all.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|(_, since)| since + self.window)
    }

    /// Notifications sent and not answered yet.
    pub fn outstanding(&self) -> u8 {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(from: u64, to: u64) -> Announce {
        Announce { from_sequence: from, to_sequence: to, term: 1 }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_commit_is_announced_at_once() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(ms(100));
        assert_eq!(w.on_commit(t0, a(1, 1)), Some(a(1, 1)));
        assert_eq!(w.outstanding(), 1);
        assert_eq!(w.deadline(), None, "nothing waits");
    }

    #[test]
    fn commits_while_one_is_outstanding_become_one_announcement_at_the_answer() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(ms(100));
        assert!(w.on_commit(t0, a(1, 1)).is_some());
        for i in 2..=50 {
            assert_eq!(w.on_commit(t0 + ms(i), a(i, i)), None);
        }
        assert_eq!(w.deadline(), Some(t0 + ms(2) + ms(100)));
        // the follower answers after 30 ms: the burst goes out at once, as one announcement
        assert_eq!(w.on_answer(t0 + ms(30)), Some(a(2, 50)));
        assert_eq!(w.on_answer(t0 + ms(31)), None);
        assert_eq!(w.outstanding(), 0);
        // quiet again: the next commit is announced at once
        assert_eq!(w.on_commit(t0 + ms(40), a(51, 51)), Some(a(51, 51)));
    }

    #[test]
    fn a_slow_follower_still_hears_within_one_window() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(ms(100));
        w.on_commit(t0, a(1, 1));
        assert_eq!(w.on_commit(t0 + ms(10), a(2, 3)), None);
        assert_eq!(w.on_deadline(t0 + ms(109)), None, "not a whole window yet");
        assert_eq!(w.on_deadline(t0 + ms(110)), Some(a(2, 3)), "sent although unanswered");
        assert_eq!(w.outstanding(), 2);
        // at most two outstanding: further commits wait for an answer or the next window
        assert_eq!(w.on_commit(t0 + ms(120), a(4, 4)), None);
        assert_eq!(w.on_deadline(t0 + ms(250)), None, "two are outstanding");
        assert_eq!(w.on_answer(t0 + ms(260)), None, "one still outstanding");
        assert_eq!(w.on_deadline(t0 + ms(261)), Some(a(4, 4)));
    }

    #[test]
    fn a_late_timer_loses_nothing() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(ms(100));
        w.on_commit(t0, a(1, 1));
        w.on_commit(t0 + ms(10), a(2, 3));
        // the deadline timer fired late, after another commit past the window
        assert_eq!(w.on_commit(t0 + ms(150), a(4, 4)), Some(a(2, 4)));
    }

    #[test]
    fn a_steady_stream_announces_every_sequence_once_and_in_order() {
        // commits every millisecond; the follower answers each announcement 3 ms later
        let t0 = Instant::now();
        let mut w = NotifyWindow::new(ms(100));
        let mut sent: Vec<(u64, Announce)> = Vec::new();
        let mut answers: Vec<u64> = Vec::new();
        for t in 0..1_000u64 {
            let now = t0 + ms(t);
            while answers.first().is_some_and(|&at| at <= t) {
                answers.remove(0);
                if let Some(an) = w.on_answer(now) {
                    sent.push((t, an));
                    answers.push(t + 3);
                }
            }
            if let Some(an) = w.on_commit(now, a(t + 1, t + 1)) {
                sent.push((t, an));
                answers.push(t + 3);
            }
        }
        let mut expect = 1;
        for (_, an) in &sent {
            assert_eq!(an.from_sequence, expect);
            expect = an.to_sequence + 1;
        }
        // coalesced: about one announcement per round trip, not one per commit
        assert!(sent.len() < 400, "{} announcements", sent.len());
        // and no commit waited more than a round trip and a bit for its announcement
        let mut worst = 0;
        for (t, an) in &sent {
            worst = worst.max(t + 1 - an.from_sequence);
        }
        assert!(worst <= 4, "a commit waited {worst} ms");
    }
}
