//! CPU affinity for the out-of-process figures: the sink process on the last core,
//! every thread of the client process on the others. Without it, the scheduler
//! sometimes runs client and sink on the same core and sometimes not, and the c=1
//! figures jump between two regimes (measured here: 9,000/s and 39,000/s for the
//! same baseline) from one run to the next.

/// The CPUs this process may run on.
pub fn allowed() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; `sched_getaffinity` writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins every thread of this process (those running now) to `cpus`. Returns how
/// many threads were pinned; an empty `cpus` does nothing.
pub fn pin_process(cpus: &[usize]) -> Result<usize, String> {
    if cpus.is_empty() {
        return Ok(0);
    }
    // SAFETY: as above; CPU_SET only writes inside the set.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("cannot list this process's threads: {e}"))?;
    let mut pinned = 0;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: a thread id of this process and a valid set.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            pinned += 1;
        }
    }
    Ok(pinned)
}
