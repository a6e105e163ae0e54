//! The clocks the leader lease reads time from (election/lease.rs, docs/architecture.md "The
//! leader lease"): the [`LeaseClock`] seam, which tests replace with a fake clock that jumps,
//! and [`SystemClock`], the platform's clock that keeps counting while the process is stopped
//! or the machine sleeps. The one module of this crate allowed unsafe code: the system calls
//! that read those clocks.
//!
//! | platform | clock | counts suspend |
//! |---|---|---|
//! | Linux, Android | `clock_gettime(CLOCK_BOOTTIME)` | yes |
//! | macOS, iOS | `mach_continuous_time` | yes |
//! | Windows 10 and later | `QueryInterruptTimePrecise` (100 ns units) | yes |
//! | any other | [`Instant`] | no: writes wait for a heartbeat round |
//!
//! On Windows the interrupt time counts sleep and hibernation (`QueryUnbiasedInterruptTime`
//! would not). The `Precise` variant reads the timer hardware; `QueryInterruptTime` returns
//! the value of the last clock interrupt (up to a tick, 15.6 ms by default, behind), which the
//! lease's margin would cover, but a reading that never lags is simpler to reason about. Both
//! live in the API set `api-ms-win-core-realtime-l1-1-1`, present from Windows 10 on — which
//! Rust's Windows targets require anyway; the functions are imported by name at load time
//! (`raw-dylib`), so no import library is needed.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Where the lease reads time from. Readings are durations since an origin fixed for the
/// clock's life; they never go back.
pub trait LeaseClock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> Duration;
    /// Whether the clock keeps counting while the process is stopped (SIGSTOP) or the machine
    /// sleeps. Without that, the lease trusts no elapsed time (see the module documentation).
    fn counts_suspend(&self) -> bool;
}

/// The system's clock that counts suspend where the platform has one (Linux and Android:
/// `CLOCK_BOOTTIME`; macOS and iOS: `mach_continuous_time`; Windows:
/// `QueryInterruptTimePrecise`), else the monotonic clock of
/// [`Instant`], which does not count a machine's sleep on every platform (then
/// [`LeaseClock::counts_suspend`] is false).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
    suspend_aware: bool,
}

impl SystemClock {
    /// The best clock this platform has.
    pub fn new() -> Self {
        Self { origin: Instant::now(), suspend_aware: suspend_aware_now().is_some() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseClock for SystemClock {
    fn now(&self) -> Duration {
        if self.suspend_aware {
            if let Some(now) = suspend_aware_now() {
                return now;
            }
        }
        self.origin.elapsed()
    }

    fn counts_suspend(&self) -> bool {
        self.suspend_aware
    }
}

/// `CLOCK_BOOTTIME`: monotonic, and counts the time the system was suspended.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn suspend_aware_now() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, 0).saturating_add(Duration::from_nanos(u64::from(nanos))))
}

/// `mach_continuous_time`: like `mach_absolute_time`, but it keeps counting while the machine
/// sleeps.
#[cfg(any(target_os = "macos", target_os = "ios"))]
fn suspend_aware_now() -> Option<Duration> {
    #[repr(C)]
    struct MachTimebaseInfo {
        numer: u32,
        denom: u32,
    }
    extern "C" {
        fn mach_continuous_time() -> u64;
        fn mach_timebase_info(info: *mut MachTimebaseInfo) -> i32;
    }
    let mut info = MachTimebaseInfo { numer: 0, denom: 0 };
    // SAFETY: both are plain libSystem calls; `info` is valid and writable.
    let (ticks, rc) = unsafe { (mach_continuous_time(), mach_timebase_info(&mut info)) };
    if rc != 0 || info.denom == 0 {
        return None;
    }
    let nanos = u128::from(ticks) * u128::from(info.numer) / u128::from(info.denom);
    Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
}

/// The interrupt time: 100 ns units since boot, counting the time the machine slept or
/// hibernated (see the module documentation).
#[cfg(windows)]
fn suspend_aware_now() -> Option<Duration> {
    #[cfg_attr(
        target_arch = "x86",
        link(
            name = "api-ms-win-core-realtime-l1-1-1.dll",
            kind = "raw-dylib",
            modifiers = "+verbatim",
            import_name_type = "undecorated"
        )
    )]
    #[cfg_attr(
        not(target_arch = "x86"),
        link(
            name = "api-ms-win-core-realtime-l1-1-1.dll",
            kind = "raw-dylib",
            modifiers = "+verbatim"
        )
    )]
    extern "system" {
        fn QueryInterruptTimePrecise(lp_interrupt_time_precise: *mut u64);
    }
    let mut units: u64 = 0;
    // SAFETY: `units` is a valid, writable u64; the function writes only into it and cannot
    // fail.
    unsafe { QueryInterruptTimePrecise(&mut units) };
    let secs = units / 10_000_000;
    let nanos = u32::try_from((units % 10_000_000) * 100).ok()?;
    Some(Duration::new(secs, nanos))
}

/// No suspend-aware clock known on this platform: writes wait for a fresh heartbeat round.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    windows
)))]
fn suspend_aware_now() -> Option<Duration> {
    None
}

/// A fake lease clock for tests: it reads what it was set to, moves only when told, and can
/// jump (a suspend or a SIGSTOP, as the boot clock sees one).
#[cfg(test)]
pub(crate) struct FakeClock {
    now: std::sync::Mutex<Duration>,
    counts_suspend: bool,
}

#[cfg(test)]
impl FakeClock {
    /// A clock reading `start`, counting suspend or not.
    pub(crate) fn new(start: Duration, counts_suspend: bool) -> Self {
        Self { now: std::sync::Mutex::new(start), counts_suspend }
    }

    /// Moves the clock forward by `by`.
    pub(crate) fn jump(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = now.saturating_add(by);
    }
}

#[cfg(test)]
impl LeaseClock for FakeClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counts_suspend(&self) -> bool {
        self.counts_suspend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        windows
    ))]
    #[test]
    fn linux_macos_and_windows_have_a_clock_that_counts_suspend() {
        assert!(SystemClock::new().counts_suspend());
    }

    #[test]
    fn the_system_clock_never_goes_back() {
        let clock = SystemClock::new();
        let mut last = clock.now();
        for _ in 0..1_000 {
            let now = clock.now();
            assert!(now >= last, "{now:?} < {last:?}");
            last = now;
        }
    }
}
