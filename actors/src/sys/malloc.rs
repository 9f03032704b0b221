//! How the C allocator gives memory back to the kernel.

/// Where the allocator's thresholds are fixed: blocks of this size and more are mapped on
/// their own and unmapped when freed, and free memory this large at the top of a heap is
/// given back.
const THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's mmap and trim thresholds at their defaults (128 KiB), which glibc otherwise
/// raises (up to 32 MiB) each time a large mapped block is freed. Without this, the service's
/// largest transient buffers (a list of a thousand containers: a megabyte of views and a
/// megabyte of JSON) come from the heap after the first such list and stay resident for good,
/// several megabytes for a service that otherwise needs a few. Call once, at start.
pub fn return_large_frees() {
    for param in [libc::M_MMAP_THRESHOLD, libc::M_TRIM_THRESHOLD] {
        // SAFETY: mallopt takes two integers and changes only the allocator's own settings,
        // under its own lock; it reads or writes no memory of the caller's.
        let set = unsafe { libc::mallopt(param, THRESHOLD) };
        if set != 1 {
            tracing::warn!(param, "mallopt refused an allocator threshold");
        }
    }
}

/// The glibc tunables the service runs with: one malloc arena and no per-thread caches. The
/// kernel steps run on the threads of tokio's blocking pools, which come and go with the load
/// (an idle one exits after 10 s); with glibc's defaults every such thread leaves its cached
/// chunks spread over up to 8 arenas per core, and a service under a steady load of container
/// cycles kept growing (about 5 MB in 90 s of the bench's load run, 8 MB in 10 minutes). With
/// these it grows by about 1 MB in 90 s and gives most of it back once idle. The service is
/// not allocation-bound: the cycles went no slower.
pub const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0";

/// Executes this program again with [`TUNABLES`] in `GLIBC_TUNABLES`, which glibc reads only
/// at a program's start (its tcache has no `mallopt`). Returns only when it does not: when
/// `GLIBC_TUNABLES` is already set (by this re-execution, or by an operator, whose choice
/// stands) it returns `None`; when the exec fails, its error. Call first thing in `main`,
/// while the process has one thread; the pid, arguments and descriptors stay the same, so a
/// service manager sees nothing of it.
pub fn reexec_with_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;

    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    Some(
        std::process::Command::new("/proc/self/exe")
            .arg0(program)
            .args(args)
            .env("GLIBC_TUNABLES", TUNABLES)
            .exec(),
    )
}
