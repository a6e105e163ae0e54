//! Hybrid logical clock timestamps (docs/architecture.md, "Hybrid logical clock"): [`Hlc`], the
//! pure clock [`HybridClock`] (no I/O: the caller passes the physical time), and the local
//! table `hlc_state` that keeps the last timestamp this device issued, so that its timestamps
//! never go back, across restarts and wall-clock steps backwards included.
//!
//! Every change gets a timestamp where it is made (when queued in the outbox, or when the
//! leader commits a change of its own), and every device observes the timestamps of the
//! entries it applies, so that its next change is later than every one it has seen:
//! last-writer-wins compares them (docs/architecture.md, "Conflicts").

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use uuid::Uuid;

use crate::error::{to_i64, to_u64, Result, StorageError};
use crate::schema::hlc_state;

/// How far ahead of this device's physical clock a timestamp another device sent may be and
/// still be observed (60 s): a device whose clock runs further ahead (or a bad message) must
/// not drag every clock of the library into its future.
pub const MAX_DRIFT_MS: u64 = 60_000;

pub use lsync_protocol::Hlc;

/// The clock of one device: issues strictly increasing [`Hlc`]s and moves past the ones it
/// observes. Pure: every method takes the physical time, nothing is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HybridClock {
    /// The last timestamp issued or observed (with this device as `device`).
    last: Hlc,
}

/// What [`HybridClock::observe`] did with a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The clock is now at or past it: the next timestamp issued is later.
    Merged,
    /// It lies more than [`MAX_DRIFT_MS`] ahead of the physical time: ignored.
    TooFarAhead,
}

impl HybridClock {
    /// A clock of `device` that has issued nothing (or last issued `last`, read back from
    /// `hlc_state`).
    pub fn new(device: Uuid, last: Option<(u64, u32)>) -> Self {
        let (physical_ms, counter) = last.unwrap_or((0, 0));
        Self { last: Hlc { physical_ms, counter, device } }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The next timestamp at physical time `now_ms`: later than every one issued or observed
    /// before. The physical time of the clock is the larger of `now_ms` and its last one (a
    /// wall clock stepped back does not take it back); within one millisecond the counter
    /// counts; a counter at `u32::MAX` moves to the next millisecond.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let last = self.last;
        let next = if now_ms > last.physical_ms {
            Hlc { physical_ms: now_ms, counter: 0, device: last.device }
        } else if let Some(counter) = last.counter.checked_add(1) {
            Hlc { counter, ..last }
        } else {
            Hlc { physical_ms: last.physical_ms.saturating_add(1), counter: 0, ..last }
        };
        self.last = next;
        next
    }

    /// Takes in `remote`, a timestamp another device issued, at physical time `now_ms`: the
    /// clock moves to it if it is later (so every timestamp issued afterwards is later than
    /// it), unless it lies more than [`MAX_DRIFT_MS`] ahead of `now_ms`.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Observed {
        if remote.physical_ms > now_ms.saturating_add(MAX_DRIFT_MS) {
            return Observed::TooFarAhead;
        }
        if (remote.physical_ms, remote.counter) > (self.last.physical_ms, self.last.counter) {
            self.last = Hlc { device: self.last.device, ..remote };
        }
        Observed::Merged
    }
}

/// The last timestamp this device issued, as `hlc_state` keeps it: (`physical_ms`, `counter`).
pub(crate) fn load(conn: &mut SqliteConnection) -> Result<Option<(u64, u32)>> {
    let row = hlc_state::table
        .find(1)
        .select((hlc_state::physical_ms, hlc_state::counter))
        .get_result::<(i64, i64)>(conn)
        .optional()?;
    row.map(|(physical_ms, counter)| {
        let counter = u32::try_from(counter)
            .map_err(|_| StorageError::Corrupt(format!("hlc_state counter {counter}")))?;
        Ok((to_u64(physical_ms, "hlc_state physical_ms")?, counter))
    })
    .transpose()
}

/// This device's clock as `hlc_state` keeps it, read inside the caller's transaction.
///
/// # Errors
/// [`StorageError::NotInitialized`] before the sync state exists (a timestamp names the device).
pub(crate) fn clock(conn: &mut SqliteConnection) -> Result<HybridClock> {
    let device = crate::sync_state::load(conn)?.ok_or(StorageError::NotInitialized)?.device_id;
    Ok(HybridClock::new(device, load(conn)?))
}

thread_local! {
    /// This thread's physical clock for timestamps, if set ([`set_thread_clock`]).
    static THREAD_CLOCK: std::cell::RefCell<Option<Box<dyn Fn() -> u64>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes timestamps issued or observed on this thread read `clock` (milliseconds since the
/// Unix epoch) instead of the wall clock; `None` goes back to the wall clock. For a simulation
/// that runs a whole library on one thread in virtual time (the simulator, docs/testing.md):
/// last-writer-wins then decides the same way at every run of a seed.
pub fn set_thread_clock(clock: Option<Box<dyn Fn() -> u64>>) {
    THREAD_CLOCK.with(|c| *c.borrow_mut() = clock);
}

/// The physical time now, in milliseconds since the Unix epoch: this thread's clock if one is
/// set ([`set_thread_clock`]), else the wall clock.
pub(crate) fn now() -> u64 {
    THREAD_CLOCK
        .with(|c| c.borrow().as_ref().map(|clock| clock()))
        .unwrap_or_else(|| u64::try_from(crate::error::now_ms()).unwrap_or(0))
}

/// Observes `remote` (a timestamp another device issued) in the caller's transaction.
pub(crate) fn observe(conn: &mut SqliteConnection, remote: Hlc) -> Result<Observed> {
    let mut clock = clock(conn)?;
    let before = clock.last();
    let observed = clock.observe(remote, now());
    if clock.last() != before {
        store(conn, clock.last())?;
    }
    Ok(observed)
}

/// Keeps `hlc` as the last timestamp issued.
pub(crate) fn store(conn: &mut SqliteConnection, hlc: Hlc) -> Result<()> {
    let physical_ms = to_i64(hlc.physical_ms, "hlc physical_ms")?;
    diesel::replace_into(hlc_state::table)
        .values((
            hlc_state::id.eq(1),
            hlc_state::physical_ms.eq(physical_ms),
            hlc_state::counter.eq(i64::from(hlc.counter)),
        ))
        .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Uuid = Uuid::from_u128(7);

    fn hlc(physical_ms: u64, counter: u32) -> Hlc {
        Hlc { physical_ms, counter, device: D }
    }

    #[test]
    fn a_tick_takes_the_physical_time_when_it_is_ahead() {
        let mut clock = HybridClock::new(D, Some((100, 5)));
        assert_eq!(clock.tick(200), hlc(200, 0));
    }

    #[test]
    fn ticks_within_one_millisecond_count() {
        let mut clock = HybridClock::new(D, None);
        assert_eq!(
            [clock.tick(50), clock.tick(50), clock.tick(50)],
            [hlc(50, 0), hlc(50, 1), hlc(50, 2)]
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_take_the_timestamps_back() {
        let mut clock = HybridClock::new(D, Some((1_000, 3)));
        assert_eq!(clock.tick(10), hlc(1_000, 4));
    }

    #[test]
    fn a_full_counter_moves_to_the_next_millisecond() {
        let mut clock = HybridClock::new(D, Some((9, u32::MAX)));
        assert_eq!(clock.tick(9), hlc(10, 0));
    }

    #[test]
    fn after_observing_a_later_timestamp_the_next_tick_is_later_still() {
        let mut clock = HybridClock::new(D, Some((100, 0)));
        let remote = Hlc { physical_ms: 150, counter: 9, device: Uuid::from_u128(1) };
        assert_eq!(clock.observe(remote, 120), Observed::Merged);
        assert_eq!(clock.tick(120), hlc(150, 10));
    }

    #[test]
    fn an_earlier_observed_timestamp_changes_nothing() {
        let mut clock = HybridClock::new(D, Some((100, 4)));
        let remote = Hlc { physical_ms: 90, counter: 50, device: Uuid::from_u128(1) };
        assert_eq!(clock.observe(remote, 100), Observed::Merged);
        assert_eq!(clock.last(), hlc(100, 4));
    }

    #[test]
    fn a_timestamp_too_far_ahead_is_not_observed() {
        let mut clock = HybridClock::new(D, Some((100, 0)));
        let remote =
            Hlc { physical_ms: 1_000 + MAX_DRIFT_MS + 1, counter: 0, device: Uuid::from_u128(1) };
        assert_eq!(clock.observe(remote, 1_000), Observed::TooFarAhead);
        assert_eq!(clock.last(), hlc(100, 0));
    }

    #[test]
    fn timestamps_order_by_time_then_counter_then_device() {
        let a = Hlc { physical_ms: 5, counter: 1, device: Uuid::from_u128(9) };
        let b = Hlc { physical_ms: 5, counter: 2, device: Uuid::from_u128(1) };
        let c = Hlc { physical_ms: 5, counter: 2, device: Uuid::from_u128(2) };
        let d = Hlc { physical_ms: 6, counter: 0, device: Uuid::from_u128(0) };
        let mut all = [d, c, a, b];
        all.sort();
        assert_eq!(all, [a, b, c, d]);
    }
}
