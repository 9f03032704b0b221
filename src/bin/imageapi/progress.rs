//! A progress line on stderr while the CLI waits on something long (a boot, a download, a
//! slow server), drawn only when stderr is a terminal so that scripts and logs stay clean.

use std::io::{self, IsTerminal, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a request may take before [`during`] shows that it is waiting.
const QUIET: Duration = Duration::from_millis(700);

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];

/// A spinner the caller ticks (`wait`, which knows the current state).
pub struct Spinner {
    what: String,
    started: Instant,
    frame: usize,
    shown: bool,
}

impl Spinner {
    pub fn new(what: String) -> Spinner {
        Spinner {
            what,
            started: Instant::now(),
            frame: 0,
            shown: io::stderr().is_terminal(),
        }
    }

    pub fn tick(&mut self, detail: &str) {
        if !self.shown {
            return;
        }
        self.frame = (self.frame + 1) % FRAMES.len();
        eprint!(
            "\r\x1b[2K{} {} ({detail}, {}s)",
            FRAMES[self.frame],
            self.what,
            self.started.elapsed().as_secs()
        );
        let _ = io::stderr().flush();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            let _ = io::stderr().flush();
        }
    }
}

/// Runs `work`; if it takes longer than [`QUIET`] on a terminal, a thread spins meanwhile.
pub fn during<T>(what: &str, work: impl FnOnce() -> T) -> T {
    if !io::stderr().is_terminal() {
        return work();
    }
    let (done, finished) = mpsc::channel::<()>();
    let what = what.to_string();
    let spinner = thread::spawn(move || {
        if finished.recv_timeout(QUIET) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        let mut spinner = Spinner::new(what);
        while finished.recv_timeout(Duration::from_millis(150))
            == Err(mpsc::RecvTimeoutError::Timeout)
        {
            spinner.tick("waiting for the service");
        }
    });
    let result = work();
    drop(done);
    let _ = spinner.join();
    result
}
