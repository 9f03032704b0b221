//! The scheduling policy of the calling thread.

use std::io;

/// Puts the calling thread under `SCHED_BATCH`: it keeps its fair share of the CPU, but waking
/// it up never preempts the thread that woke it, nor any other running thread; it runs when a
/// CPU comes free or at the next tick. For a thread that works behind others' answers.
pub fn batch_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the call reads `param`, which lives across it; pid 0 is the calling thread.
    let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_put_under_batch_is_and_others_are_not() {
        let policy = || {
            // SAFETY: pid 0 is the calling thread; the call reads nothing of ours.
            unsafe { libc::sched_getscheduler(0) }
        };
        let before = policy();
        let batched = std::thread::spawn(move || {
            batch_this_thread().unwrap();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(batched, libc::SCHED_BATCH);
        assert_eq!(policy(), before, "only the calling thread changed");
    }
}
