//! Tuning of glibc's allocator for drctl's memory shape: a few buffers of
//! megabytes (upload parts, zstd's job buffers) that come and go on
//! different threads, beside many small allocations. Elsewhere than on
//! glibc these do nothing.

/// Blocks this large and larger get mappings of their own.
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;

/// glibc raises its mmap threshold to the size of each large block freed
/// (up to 32 MiB), so after the first 6 MiB upload part is freed the next
/// ones come from the threads' arenas, and what is freed there stays
/// resident: a backup of random rows to S3 peaked at 62–68 MiB, against
/// 44 MiB of live heap. A fixed threshold keeps upload parts and zstd's
/// buffers in mappings returned to the system when freed (55–60 MiB for
/// the same backup); smaller blocks are not affected, so there are no
/// more system calls on the hot paths.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
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
