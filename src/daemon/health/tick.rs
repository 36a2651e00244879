//! The probe thread's clock: probes start, and half-open answers are read, on a grid of
//! [`TICK`]s instead of each at its own instant.
//!
//! Why: 10k targets every 2 s are 5,000 probes a second, and with a timer each the probe
//! thread woke up for nearly every one of them — and again for nearly every answer. `perf`
//! on the benchmark (benches/health_checker.sh, a 2-core VM) put a fifth of the checker's
//! CPU in those wake-ups: context switches, and a timer reprogrammed each time (a write to
//! the TSC deadline register, an exit to the hypervisor on a VM). On the grid the thread
//! wakes a few hundred times a second and does what is due in one go. The price: a probe's
//! latency is known to one tick, and schedules move by less than one.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

pub const TICK: Duration = Duration::from_millis(10);

/// The first instant of the grid at or after `t` (the grid starts at the first call).
pub fn on_tick(t: Instant) -> Instant {
    on_grid(t, TICK)
}

/// The first instant at or after `t` of a grid of `period`s (a multiple of [`TICK`], so its
/// points are ticks too), from the same origin.
pub fn on_grid(t: Instant, period: Duration) -> Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now));
    let since = t.saturating_duration_since(origin);
    let period = period.as_nanos().max(1);
    let grid = since.as_nanos().div_ceil(period) * period;
    // u64 nanoseconds last 584 years; past them, `t` itself (never an instant before it,
    // which would make every sleep on the grid return at once).
    u64::try_from(grid)
        .ok()
        .and_then(|n| origin.checked_add(Duration::from_nanos(n)))
        .map_or(t, |g| g.max(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_up_to_the_grid_and_grid_points_stay() {
        let a = on_tick(Instant::now());
        for offset_ms in [0u64, 1, 9, 10, 11, 25, 1999] {
            let t = a + Duration::from_millis(offset_ms);
            let g = on_tick(t);
            assert!(g >= t && g - t < TICK, "{offset_ms} ms: {g:?} vs {t:?}");
            assert_eq!(
                (g - a).as_nanos() % TICK.as_nanos(),
                0,
                "{offset_ms} ms: off the grid"
            );
            assert_eq!(on_tick(g), g, "a grid point is its own tick");
        }
    }

    #[test]
    fn a_daemon_up_for_years_still_sleeps() {
        // 2^32 ticks of 10 ms are 497 days: the grid must not stop there.
        let t = Instant::now() + Duration::from_secs(2 * 365 * 86_400);
        let g = on_tick(t);
        assert!(g >= t && g - t < TICK, "{g:?} vs {t:?}");
    }
}
