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
