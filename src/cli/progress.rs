//! Progress bars of followers catching up or reconciling: entries applied of target, rate and
//! ETA. On a terminal they are indicatif bars on stderr, drawn only while a catch-up runs;
//! elsewhere (a log file, a service manager) a plain line every few seconds.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

/// A catch-up smaller than this (and shorter than [`SHOW_AFTER`]) is the ordinary flow of new
/// entries; no bar is drawn for it.
const SHOW_MIN_TARGET: u64 = 1_000;
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// Interval of the plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// One library's catch-up, as read from its status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatchUp {
    pub applied: u64,
    pub target: u64,
    pub elapsed_ms: u64,
    /// A full reconciliation rather than an ordinary catch-up.
    pub reconciling: bool,
    /// Entries per second: from `elapsed_ms` if the node times the run, else as observed
    /// by a [`RateTracker`] between polls.
    pub rate: Option<f64>,
}

impl CatchUp {
    /// From a follower's applier state and progress; `None` unless a catch-up worth showing
    /// is running.
    pub fn from_status(state: &str, progress: Option<(u64, u64, u64)>) -> Option<CatchUp> {
        let reconciling = state == "reconciling";
        if state != "fetching" && !reconciling {
            return None;
        }
        let (applied, target, elapsed_ms) = progress?;
        let worth = target >= SHOW_MIN_TARGET || Duration::from_millis(elapsed_ms) >= SHOW_AFTER;
        let rate = (elapsed_ms > 0).then(|| applied as f64 * 1000.0 / elapsed_ms as f64);
        (applied < target && worth).then_some(CatchUp {
            applied,
            target,
            elapsed_ms,
            reconciling,
            rate,
        })
    }

    /// Time left at the rate so far.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64((self.target - self.applied) as f64 / rate))
    }

    /// `12000/100000 entries · 6100/s · ETA 13s` (rate and ETA once known).
    pub fn summary(&self) -> String {
        let mut s = format!("{}/{} entries", self.applied, self.target);
        if let Some(rate) = self.rate {
            s.push_str(&format!(" · {rate:.0}/s"));
        }
        if let Some(eta) = self.eta() {
            s.push_str(&format!(" · ETA {}s", eta.as_secs()));
        }
        s
    }
}

/// Measures the apply rate between polls, for catch-ups the node does not time itself.
#[derive(Debug, Default)]
pub struct RateTracker {
    first: HashMap<Uuid, (Instant, u64)>,
}

impl RateTracker {
    /// Fills in the rate of `catch_up` from what was seen of `library_id` before.
    pub fn observe(&mut self, library_id: Uuid, catch_up: Option<CatchUp>) -> Option<CatchUp> {
        let Some(mut c) = catch_up else {
            self.first.remove(&library_id);
            return None;
        };
        let (t0, a0) = *self.first.entry(library_id).or_insert((Instant::now(), c.applied));
        if c.rate.is_none() && c.applied > a0 {
            let secs = t0.elapsed().as_secs_f64();
            if secs > 0.0 {
                c.rate = Some((c.applied - a0) as f64 / secs);
            }
        }
        Some(c)
    }
}

/// The bars of every library on one output.
pub struct ProgressDisplay {
    multi: MultiProgress,
    bars: HashMap<Uuid, ProgressBar>,
    plain: bool,
    last_plain: HashMap<Uuid, Instant>,
    rates: RateTracker,
}

impl ProgressDisplay {
    /// Bars on stderr (plain lines if stderr is not a terminal).
    pub fn stderr() -> Self {
        let plain = !std::io::stderr().is_terminal();
        Self::with(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), plain)
    }

    /// Bars in an existing multi-bar display (always drawn as bars).
    pub fn with(multi: MultiProgress, plain: bool) -> Self {
        Self {
            multi,
            bars: HashMap::new(),
            plain,
            last_plain: HashMap::new(),
            rates: RateTracker::default(),
        }
    }

    /// Shows (or removes, with `None`) the catch-up of one library.
    pub fn update(&mut self, library_id: Uuid, catch_up: Option<CatchUp>) {
        let catch_up = self.rates.observe(library_id, catch_up);
        let short = &library_id.to_string()[..8];
        if self.plain {
            match catch_up {
                Some(c) => {
                    let due =
                        self.last_plain.get(&library_id).is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
                    if due {
                        self.last_plain.insert(library_id, Instant::now());
                        let what = if c.reconciling { "reconciling" } else { "catching up" };
                        eprintln!("library {short}: {what} {}", c.summary());
                    }
                }
                None => {
                    if self.last_plain.remove(&library_id).is_some() {
                        eprintln!("library {short}: caught up");
                    }
                }
            }
            return;
        }
        match catch_up {
            Some(c) => {
                let bar = self.bars.entry(library_id).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(c.target));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:40.cyan/blue}] {percent:>3}% {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar
                });
                let what = if c.reconciling { "reconciling" } else { "catching up" };
                bar.set_prefix(format!("library {short} {what}"));
                bar.set_length(c.target);
                bar.set_position(c.applied);
                bar.set_message(c.summary());
            }
            None => {
                if let Some(bar) = self.bars.remove(&library_id) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
        }
    }

    /// Removes every bar.
    pub fn clear(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_catch_ups_are_shown() {
        assert_eq!(CatchUp::from_status("caught_up", Some((10, 5000, 10))), None);
        assert_eq!(CatchUp::from_status("fetching", None), None);
        assert_eq!(CatchUp::from_status("fetching", Some((3, 5, 10))), None);
        assert_eq!(CatchUp::from_status("fetching", Some((5000, 5000, 3000))), None);
        let c = CatchUp::from_status("reconciling", Some((2_000, 10_000, 1_000))).unwrap();
        assert!(c.reconciling);
        assert_eq!(c.rate, Some(2_000.0));
        assert_eq!(c.eta(), Some(Duration::from_secs(4)));
        assert_eq!(c.summary(), "2000/10000 entries · 2000/s · ETA 4s");
        assert!(CatchUp::from_status("fetching", Some((3, 5, 1500))).is_some());
        let untimed = CatchUp::from_status("fetching", Some((100, 5000, 0))).unwrap();
        assert_eq!(untimed.summary(), "100/5000 entries");
    }

    #[test]
    fn rate_is_observed_when_the_node_does_not_time_the_run() {
        let id = Uuid::from_u128(1);
        let mut t = RateTracker::default();
        let at = |applied| CatchUp::from_status("fetching", Some((applied, 5000, 0)));
        assert_eq!(t.observe(id, at(100)).unwrap().rate, None);
        std::thread::sleep(Duration::from_millis(20));
        let c = t.observe(id, at(1100)).unwrap();
        assert!(c.rate.unwrap() > 0.0 && c.eta().is_some(), "{c:?}");
        assert_eq!(t.observe(id, None), None);
        assert_eq!(t.observe(id, at(1200)).unwrap().rate, None, "a new run starts over");
    }
}
