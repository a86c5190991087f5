//! Tuning of glibc's allocator for drctl's memory shape: a few buffers of
//! megabytes (upload parts, zstd's job buffers) that come and go on
//! different threads, beside many small allocations. Elsewhere than on
//! glibc these do nothing.

/// Blocks this large and larger get mappings of their own; free memory
/// up to this much stays at the top of a heap instead of being returned.
const THRESHOLD: i32 = 4 * 1024 * 1024;

/// glibc raises its mmap threshold to the size of each large block freed
/// (up to 32 MiB), so after the first 6 MiB upload part is freed the next
/// ones come from the threads' arenas, and what is freed there stays
/// resident: a backup of random rows to S3 peaked at 61–71 MiB, against
/// 42 MiB of live heap. A fixed threshold keeps upload parts and zstd's
/// buffers in mappings returned to the system when freed (54–59 MiB for
/// the same backup, with LTO). Fixing it also stops glibc from raising the trim
/// threshold, which then trims every 128 KiB freed at the top of a heap:
/// 2,073 `madvise` calls and half as much system time again on a 246 MiB
/// backup, so the trim threshold is fixed at the same size (14 calls).
pub fn fix_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

/// A long-running process on glibc: by default every thread that allocates
/// may get an arena of its own (8 per core), and memory freed there stays
/// mapped, so the RSS of an idle daemon depended on which threads happened
/// to run the start-up backups (26–47 MiB measured for the same work).
/// Two arenas keep it steady; the jobs' hot paths allocate little.
/// Call before any thread is started.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
