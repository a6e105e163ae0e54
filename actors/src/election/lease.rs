//! The leader lease: a pure state machine (no I/O, no async, the clock injected) that tells a
//! leader of three or more voters whether it may answer a write as committed now, and the
//! clocks it reads time from. The election actor (election/actor.rs) holds one next to its
//! [`super::Election`], feeds it the heartbeat rounds it sends and the answers its link actors
//! report, and asks it before every write is answered (docs/architecture.md, "The leader
//! lease").
//!
//! ```text
//!        election actor (I/O)                     Lease (pure)
//!  after every election step ───────────► follow(leading term, transferring, now):
//!                                           lead / stop / hold_back / release
//!  configuration changed ────────────────► set_voters (and the previous voters)
//!  heartbeat round sent (stamp) ─────────► round_sent(stamp)
//!  a follower answered that round ───────► on_answer(from, term, stamp)
//!  a write asks (after its commit) ──────► state(now, asked_at), wants_round(now, asked_at)
//! ```
//!
//! # Rules
//! - **Who has a lease**: a leader of a configuration with three or more voters. With one or
//!   two voters there is none ([`LeaseState::NotNeeded`]): the two-device rule lets either
//!   device lead alone, so no majority could ever vouch for it, and it answers as before.
//! - **Held**: a majority of the voters (this device counts as answering every round if it is
//!   a voter) answered heartbeat rounds of this term sent at or after some time `s`, and
//!   `now < s + duration`. The lease is timed from when the round was **sent**, never from when
//!   its answers arrived: a voter that answered heard this leader after `s`, and refuses any
//!   other candidate's vote for an election timeout after that (leader stickiness,
//!   election/mod.rs), so no other device can win a term before `s + election timeout`.
//! - **Duration** ([`lease_duration`]): the election timeout minus a fifth of it. The margin
//!   covers the rate difference between this device's clock and the voters' (a few hundred
//!   parts per million at worst, NTP slews at most 500 ppm) and the moment between the check
//!   and the answer leaving; a fifth is far more than either and keeps the lease longer than
//!   a heartbeat interval in every sane configuration, so a steady leader holds it all along.
//! - **Only rounds of this leadership count**: answers of another term, from non-voters, or to
//!   rounds sent before this device became leader (or before a leadership transfer ended) are
//!   ignored. While a transfer runs ([`Lease::hold_back`]) the lease is not held: its target
//!   campaigns with `transfer: true`, which voters grant despite hearing a leader.
//! - **Clock**: time comes from a [`LeaseClock`]. One that counts while the process is stopped
//!   or the machine sleeps (Linux/Android `CLOCK_BOOTTIME`, macOS `mach_continuous_time`,
//!   Windows `QueryInterruptTimePrecise`: election/clock.rs) makes a suspend of any length end
//!   the lease at once: the first reading after the wake is past it. Without one ([`LeaseClock::counts_suspend`] false) no time-based lease is trusted: a
//!   write is confirmed only by a round sent after it asked (`s >= asked_at`).
//! - **Rounds for waiting writes** ([`Lease::wants_round`]): a write that finds the lease
//!   expired waits for a round; one is sent unless the last round sent can still confirm it
//!   (not yet answered by a majority and, with a suspend-aware clock, younger than the lease;
//!   without one, sent after the write asked).
//!
//! Nothing here panics on any input; time arithmetic saturates.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use uuid::Uuid;

pub use super::clock::{LeaseClock, SystemClock};

/// The lease of a leader whose election timeout is `election_timeout`: four fifths of it (see
/// the module documentation, "Duration").
pub fn lease_duration(election_timeout: Duration) -> Duration {
    election_timeout.saturating_sub(election_timeout / 5)
}

/// What the lease says about answering a write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// This device does not lead: the write cannot be confirmed.
    NotLeading,
    /// One or two voters: no lease, answer as before.
    NotNeeded,
    /// Held: answer the write.
    Held,
    /// Not held (expired, never confirmed, or held back by a transfer): wait for a round.
    Expired,
}

/// The lease of one device (see the module documentation).
#[derive(Debug, Clone)]
pub struct Lease {
    me: Uuid,
    duration: Duration,
    counts_suspend: bool,
    voters: BTreeSet<Uuid>,
    /// The voters before the last voter change, while it is not known committed.
    previous: Option<BTreeSet<Uuid>>,
    /// The term this device leads, if it does.
    leading: Option<u64>,
    /// A leadership transfer runs.
    held_back: bool,
    /// Rounds sent before it do not count (the leadership began, or a transfer ended).
    since: Duration,
    /// The newest round of this leadership each other voter answered (its send stamp).
    answered: BTreeMap<Uuid, Duration>,
    /// The stamp of the last round sent.
    last_round: Option<Duration>,
}

impl Lease {
    /// The lease of device `me`, `duration` long ([`lease_duration`]), read from a clock that
    /// counts suspend or not; not leading, no voters.
    pub fn new(me: Uuid, duration: Duration, counts_suspend: bool) -> Self {
        Self {
            me,
            duration,
            counts_suspend,
            voters: BTreeSet::new(),
            previous: None,
            leading: None,
            held_back: false,
            since: Duration::ZERO,
            answered: BTreeMap::new(),
            last_round: None,
        }
    }

    /// The term this device leads, if it does.
    pub fn leading(&self) -> Option<u64> {
        self.leading
    }

    /// The voters of the latest configuration, and `previous`: the voters before the last voter
    /// change while this device does not know it committed (`ElectionMembership::
    /// previous_voters`). While there are previous voters, a majority of them must answer too:
    /// until the change commits, they can still elect a leader by themselves (a previous pair
    /// by the two-device rule), so a majority of the latest voters alone does not show that no
    /// other device won a later term (simulator seed 218). When the voters change, the last
    /// round sent no longer holds back a waiting write's round: it went to the devices that
    /// were members then, and the answers of devices that were not voters yet were ignored, so
    /// it may never gather a majority of the new voters (a write would wait for the next
    /// periodic heartbeat).
    pub fn set_voters(&mut self, voters: BTreeSet<Uuid>, previous: Option<BTreeSet<Uuid>>) {
        if voters != self.voters || previous != self.previous {
            self.last_round = None;
        }
        let counts =
            |v: &Uuid| voters.contains(v) || previous.as_ref().is_some_and(|p| p.contains(v));
        self.answered.retain(|v, _| counts(v));
        self.voters = voters;
        self.previous = previous;
    }

    /// This device leads `term` from `now` on: nothing it heard before counts.
    pub fn lead(&mut self, term: u64, now: Duration) {
        self.leading = Some(term);
        self.held_back = false;
        self.since = now;
        self.answered.clear();
        self.last_round = None;
    }

    /// This device no longer leads.
    pub fn stop(&mut self) {
        self.leading = None;
        self.held_back = false;
        self.answered.clear();
        self.last_round = None;
    }

    /// A leadership transfer started: the lease is not held until it ends.
    pub fn hold_back(&mut self) {
        self.held_back = true;
    }

    /// The transfer ended with this device still leading (aborted): only rounds sent from
    /// `now` on count.
    pub fn release(&mut self, now: Duration) {
        if !self.held_back {
            return;
        }
        self.held_back = false;
        self.since = now;
        self.answered.clear();
        self.last_round = None;
    }

    /// Brings the lease in line with the election at `now`: `leading` is the term this device
    /// leads, if it does, and `transferring` whether a leadership transfer runs. It leads that
    /// term (from now on, if it did not already), is held back while a transfer runs and
    /// released when one ends with this device still leading, and stops when it does not lead.
    /// What the election actor does after every election step (and the simulator's devices).
    pub fn follow(&mut self, leading: Option<u64>, transferring: bool, now: Duration) {
        match leading {
            Some(term) => {
                if self.leading != Some(term) {
                    self.lead(term, now);
                }
                if transferring {
                    self.hold_back();
                } else {
                    self.release(now);
                }
            }
            None if self.leading.is_some() => self.stop(),
            None => {}
        }
    }

    /// A heartbeat round stamped `stamp` (read before it was sent) goes to every follower.
    pub fn round_sent(&mut self, stamp: Duration) {
        if self.leading.is_some() {
            self.last_round = Some(self.last_round.map_or(stamp, |r| r.max(stamp)));
        }
    }

    /// Voter `from` answered, in `term`, the round stamped `sent_at`. Returns whether it was
    /// recorded (an answer of this leadership's term, from another voter, to a round of this
    /// leadership).
    pub fn on_answer(&mut self, from: Uuid, term: u64, sent_at: Duration) -> bool {
        if self.leading != Some(term)
            || from == self.me
            || !(self.voters.contains(&from)
                || self.previous.as_ref().is_some_and(|p| p.contains(&from)))
            || sent_at < self.since
        {
            return false;
        }
        let newest = self.answered.entry(from).or_insert(sent_at);
        *newest = (*newest).max(sent_at);
        true
    }

    /// The newest `s` such that a majority of the voters — and of the previous voters, while
    /// there are some — answered rounds sent at or after `s` (this device, if a voter,
    /// answering every round); `None` if no majority did.
    pub fn confirmed_since(&self) -> Option<Duration> {
        let latest = self.confirmed_by(&self.voters)?;
        match &self.previous {
            Some(p) => self.confirmed_by(p).map(|s| s.min(latest)),
            None => Some(latest),
        }
    }

    /// [`Self::confirmed_since`] for one set of voters.
    fn confirmed_by(&self, voters: &BTreeSet<Uuid>) -> Option<Duration> {
        let mut stamps: Vec<Duration> = voters
            .iter()
            .filter_map(|v| {
                if *v == self.me {
                    Some(Duration::MAX)
                } else {
                    self.answered.get(v).copied()
                }
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if stamps.len() < majority {
            return None;
        }
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        stamps.get(majority - 1).copied()
    }

    /// Until when the lease is held, with a suspend-aware clock (`None`: not held, no lease
    /// needed, or no such clock).
    pub fn held_until(&self) -> Option<Duration> {
        if self.leading.is_none() || self.voters.len() < 3 || self.held_back || !self.counts_suspend
        {
            return None;
        }
        self.confirmed_since().map(|s| s.saturating_add(self.duration))
    }

    /// Whether a write that asked at `asked_at` may be answered at `now`.
    pub fn state(&self, now: Duration, asked_at: Duration) -> LeaseState {
        if self.leading.is_none() {
            return LeaseState::NotLeading;
        }
        if self.voters.len() < 3 {
            return LeaseState::NotNeeded;
        }
        if self.held_back {
            return LeaseState::Expired;
        }
        let held = match self.confirmed_since() {
            Some(s) if self.counts_suspend => now < s.saturating_add(self.duration),
            Some(s) => s >= asked_at,
            None => false,
        };
        if held {
            LeaseState::Held
        } else {
            LeaseState::Expired
        }
    }

    /// Whether a write that asked at `asked_at` and waits needs a new round sent at `now`:
    /// not when the last round sent can still confirm it (see the module documentation).
    pub fn wants_round(&self, now: Duration, asked_at: Duration) -> bool {
        if self.state(now, asked_at) != LeaseState::Expired || self.held_back {
            return false;
        }
        let Some(last) = self.last_round else { return true };
        let unanswered = self.confirmed_since().is_none_or(|s| s < last);
        let can_confirm = if self.counts_suspend {
            now < last.saturating_add(self.duration)
        } else {
            last >= asked_at
        };
        !(unanswered && can_confirm)
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::FakeClock;
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Device 1 leading term 3 of voters `1..=n` since 0 ms, with a suspend-aware clock.
    fn leader(n: u128) -> Lease {
        let mut l = Lease::new(id(1), LEASE, true);
        l.set_voters((1..=n).map(id).collect(), None);
        l.lead(3, ms(0));
        l
    }

    #[test]
    fn the_lease_is_four_fifths_of_the_election_timeout() {
        assert_eq!(lease_duration(ms(1000)), ms(800));
        assert_eq!(lease_duration(Duration::from_secs(60)), Duration::from_secs(48));
    }

    #[test]
    fn held_after_a_majority_answers_a_round() {
        let mut l = leader(3);
        l.round_sent(ms(100));
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Expired, "no answer yet");
        assert!(l.on_answer(id(2), 3, ms(100)));
        assert_eq!(l.state(ms(120), ms(120)), LeaseState::Held);
        assert_eq!(l.held_until(), Some(ms(900)));
    }

    #[test]
    fn the_lease_is_timed_from_the_send_not_from_the_answer() {
        let mut l = leader(3);
        l.round_sent(ms(100));
        // answered late: 600 ms after the round went out
        assert!(l.on_answer(id(2), 3, ms(100)));
        assert_eq!(l.state(ms(899), ms(899)), LeaseState::Held);
        assert_eq!(
            l.state(ms(900), ms(900)),
            LeaseState::Expired,
            "send + lease, not answer + lease"
        );
    }

    #[test]
    fn not_held_with_only_a_minority() {
        let mut l = leader(5);
        l.round_sent(ms(100));
        assert!(l.on_answer(id(2), 3, ms(100)));
        // itself and one of four others: two of five
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Expired);
        assert!(l.on_answer(id(3), 3, ms(100)));
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Held, "three of five");
    }

    #[test]
    fn following_the_election_leads_holds_back_releases_and_stops() {
        let mut l = Lease::new(id(1), LEASE, true);
        l.set_voters((1..=3).map(id).collect(), None);
        l.follow(Some(3), false, ms(0));
        assert_eq!(l.leading(), Some(3));
        l.round_sent(ms(100));
        assert!(l.on_answer(id(2), 3, ms(100)));
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Held);
        l.follow(Some(3), true, ms(120));
        assert_eq!(l.state(ms(130), ms(130)), LeaseState::Expired, "held back by a transfer");
        l.follow(Some(3), false, ms(140));
        assert!(!l.on_answer(id(2), 3, ms(100)), "a round from before the release");
        assert_eq!(l.state(ms(150), ms(150)), LeaseState::Expired);
        l.follow(None, false, ms(160));
        assert_eq!((l.leading(), l.state(ms(170), ms(170))), (None, LeaseState::NotLeading));
    }

    /// Voters {1, 2} became {1, 2, 3}, not known committed: 2 may still lead alone by the
    /// two-device rule (simulator seed 218), so 3's answer is not enough — 2 must answer too.
    #[test]
    fn while_a_voter_change_is_uncommitted_a_majority_of_the_previous_voters_must_answer() {
        let mut l = Lease::new(id(1), LEASE, true);
        l.set_voters((1..=3).map(id).collect(), Some([id(1), id(2)].into()));
        l.lead(3, ms(0));
        l.round_sent(ms(100));
        assert!(l.on_answer(id(3), 3, ms(100)));
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Expired, "two of three, one of two");
        assert!(l.on_answer(id(2), 3, ms(100)), "a previous voter's answer counts");
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Held);
        // once the change is known committed, the latest voters alone decide
        let mut l = Lease::new(id(1), LEASE, true);
        l.set_voters((1..=3).map(id).collect(), None);
        l.lead(3, ms(0));
        l.round_sent(ms(100));
        assert!(l.on_answer(id(3), 3, ms(100)));
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Held);
    }

    #[test]
    fn a_clock_jump_past_the_lease_ends_it_at_once() {
        let clock = FakeClock::new(ms(1_000), true);
        let mut l = Lease::new(id(1), LEASE, clock.counts_suspend());
        l.set_voters((1..=3).map(id).collect(), None);
        l.lead(3, clock.now());
        let sent = clock.now();
        l.round_sent(sent);
        assert!(l.on_answer(id(3), 3, sent));
        clock.jump(ms(10));
        assert_eq!(l.state(clock.now(), clock.now()), LeaseState::Held);
        // the lid closes: the machine sleeps for an hour; the boot clock counts it
        clock.jump(Duration::from_secs(3600));
        let woke = clock.now();
        assert_eq!(l.state(woke, woke), LeaseState::Expired, "the leader stops committing at once");
        assert!(l.wants_round(woke, woke), "it asks the voters again");
    }

    #[test]
    fn two_voters_have_no_lease() {
        let mut l = leader(2);
        assert_eq!(l.state(ms(5_000), ms(5_000)), LeaseState::NotNeeded);
        assert_eq!(l.held_until(), None);
        l.set_voters([id(1)].into(), None);
        assert_eq!(l.state(ms(5_000), ms(5_000)), LeaseState::NotNeeded, "nor has a sole voter");
    }

    #[test]
    fn a_device_that_does_not_lead_holds_nothing() {
        let mut l = leader(3);
        l.round_sent(ms(100));
        l.on_answer(id(2), 3, ms(100));
        l.stop();
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::NotLeading);
    }

    #[test]
    fn answers_of_another_term_or_from_a_non_voter_do_not_count() {
        let mut l = leader(3);
        l.round_sent(ms(100));
        assert!(!l.on_answer(id(2), 2, ms(100)), "an older term");
        assert!(!l.on_answer(id(9), 3, ms(100)), "not a voter");
        assert!(!l.on_answer(id(1), 3, ms(100)), "itself");
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Expired);
    }

    #[test]
    fn rounds_sent_before_the_leadership_began_do_not_count() {
        let mut l = leader(3);
        l.lead(5, ms(500));
        assert!(!l.on_answer(id(2), 5, ms(400)));
        assert_eq!(l.state(ms(510), ms(510)), LeaseState::Expired);
    }

    #[test]
    fn a_transfer_holds_the_lease_back_and_only_later_rounds_count_after_it() {
        let mut l = leader(3);
        l.round_sent(ms(100));
        l.on_answer(id(2), 3, ms(100));
        l.hold_back();
        assert_eq!(l.state(ms(110), ms(110)), LeaseState::Expired, "held back");
        l.release(ms(200));
        assert_eq!(l.state(ms(210), ms(210)), LeaseState::Expired, "the earlier round is void");
        assert!(!l.on_answer(id(3), 3, ms(150)));
        l.round_sent(ms(220));
        assert!(l.on_answer(id(3), 3, ms(220)));
        assert_eq!(l.state(ms(230), ms(230)), LeaseState::Held);
    }

    #[test]
    fn without_a_suspend_aware_clock_only_a_round_sent_after_the_ask_confirms() {
        let mut l = Lease::new(id(1), LEASE, false);
        l.set_voters((1..=3).map(id).collect(), None);
        l.lead(3, ms(0));
        l.round_sent(ms(100));
        l.on_answer(id(2), 3, ms(100));
        assert_eq!(l.state(ms(101), ms(100)), LeaseState::Held, "asked before the round went");
        assert_eq!(l.state(ms(101), ms(101)), LeaseState::Expired, "asked after it");
        assert_eq!(l.held_until(), None);
    }

    #[test]
    fn a_waiting_write_sends_a_round_unless_one_in_flight_can_confirm_it() {
        let mut l = leader(3);
        assert!(l.wants_round(ms(10), ms(10)), "no round sent yet");
        l.round_sent(ms(10));
        assert!(!l.wants_round(ms(20), ms(20)), "the round in flight can still confirm it");
        assert!(l.wants_round(ms(810), ms(810)), "that round is older than the lease");
        l.on_answer(id(2), 3, ms(10));
        assert!(!l.wants_round(ms(20), ms(20)), "held: nothing to wait for");
        assert!(l.wants_round(ms(900), ms(900)), "expired, the last round already counted");
    }

    /// Found by `lsync-bench majority`: the first write after three devices joined waited
    /// 29.4 s, for the next periodic heartbeat — the round in flight had been sent before they
    /// were voters, and their answers to it were ignored.
    #[test]
    fn a_change_of_voters_lets_a_waiting_write_send_a_fresh_round() {
        let mut l = leader(2);
        l.round_sent(ms(10));
        l.on_answer(id(2), 3, ms(10));
        l.set_voters((1..=4).map(id).collect(), None);
        assert_eq!(l.state(ms(20), ms(20)), LeaseState::Expired, "two of four voters");
        assert!(l.wants_round(ms(20), ms(20)), "the round before the change cannot be counted on");
        l.round_sent(ms(20));
        assert!(!l.wants_round(ms(30), ms(30)), "the fresh round in flight can confirm it");
        l.set_voters((1..=4).map(id).collect(), None);
        assert!(!l.wants_round(ms(30), ms(30)), "the same voters again change nothing");
    }

    #[test]
    fn without_a_suspend_aware_clock_a_write_waits_for_a_round_sent_after_it() {
        let mut l = Lease::new(id(1), LEASE, false);
        l.set_voters((1..=3).map(id).collect(), None);
        l.lead(3, ms(0));
        l.round_sent(ms(10));
        assert!(!l.wants_round(ms(10), ms(10)), "sent when it asked");
        assert!(l.wants_round(ms(11), ms(11)), "sent before it asked");
    }
}
