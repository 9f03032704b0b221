//! Timing points of a launch: how long each of its steps took, so that a slow start can be
//! told apart (the benchmark prints them, and a debug log line carries them).

use std::time::{Duration, Instant};

/// The target of the engine's timing events (debug level): `RUST_LOG=info,imageapi_timing=debug`
/// shows them alone.
pub const TARGET: &str = "imageapi_timing";

/// How long each step of one [`super::launch()`] took, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchTimes {
    /// The checks of the configuration and of the command inside the image, the console (for
    /// systemd) and the spec memfd.
    pub prepare: Duration,
    /// The init program: its sealed copy, made by the first launch only.
    pub program: Duration,
    /// The detached copy of the image's mount tree (`open_tree`).
    pub image: Duration,
    /// Making the container's cgroups and opening its cgroup2 directory.
    pub cgroup: Duration,
    /// The `clone3` itself, on the launcher thread.
    pub clone: Duration,
    /// Handing the job to the launcher thread and its answer back (the clone aside).
    pub hop: Duration,
    /// Reading the child's start time, the id maps and the v1 cgroups.
    pub place: Duration,
    /// From the go to the end of file on the report pipe: the child's exec of the init
    /// program, the init's setup of the root and its exec of the payload.
    pub setup: Duration,
}

impl LaunchTimes {
    /// The whole launch.
    pub fn total(&self) -> Duration {
        self.prepare
            + self.program
            + self.image
            + self.cgroup
            + self.clone
            + self.hop
            + self.place
            + self.setup
    }

    /// Logs the times at debug level, in microseconds, for container `id`.
    pub(crate) fn log(&self, id: i64) {
        let us = |d: Duration| d.as_micros() as u64;
        tracing::debug!(
            target: TARGET,
            id,
            prepare_us = us(self.prepare),
            program_us = us(self.program),
            image_us = us(self.image),
            cgroup_us = us(self.cgroup),
            clone_us = us(self.clone),
            hop_us = us(self.hop),
            place_us = us(self.place),
            setup_us = us(self.setup),
            total_us = us(self.total()),
            "launch timing"
        );
    }
}

/// Measures consecutive steps: each [`Lap::lap`] answers the time since the previous one.
pub(crate) struct Lap(Instant);

impl Lap {
    pub(crate) fn start() -> Lap {
        Lap(Instant::now())
    }

    pub(crate) fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now - self.0;
        self.0 = now;
        elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_sum_of_the_steps() {
        let ms = Duration::from_millis;
        let times = LaunchTimes {
            prepare: ms(1),
            program: ms(2),
            image: ms(3),
            cgroup: ms(4),
            clone: ms(5),
            hop: ms(6),
            place: ms(7),
            setup: ms(8),
        };
        assert_eq!(times.total(), ms(36));
    }
}
