//! Running one VMM process and timing it from the outside.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// What one launch of a VMM process gave.
#[derive(Debug)]
pub struct Launch {
    /// From just before spawning to the first byte read from its stdout.
    pub first_byte: Duration,
    /// From just before spawning to `wait4` returning.
    pub exit: Duration,
    /// `ru_maxrss` of the child, in KiB.
    pub max_rss_kib: u64,
    /// Exit status (or 128 + signal).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Spawns `command` (stdin /dev/null, stdout and stderr piped) and times it.
///
/// The child is started with fork + exec rather than `posix_spawn`. With `posix_spawn` (vfork) the
/// child execs from this process's address space, and the kernel folds that address space's peak RSS
/// into the child's `ru_maxrss`; after a fork only the pages the child itself had count (the few
/// anonymous pages copied), so `ru_maxrss` is the VMM's own peak.
pub fn launch(mut command: Command) -> Result<Launch, Error> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the hook does nothing, so it cannot break the forked child; it is there only because
    // a pre_exec hook makes std use fork + exec instead of posix_spawn (see above).
    unsafe { command.pre_exec(|| Ok(())) };

    let start = Instant::now();
    let mut child = command.spawn().map_err(|e| Error::Io(format!("{command:?}"), e))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout_pipe = child.stdout.take().ok_or_else(|| Error::Bench("no stdout pipe".into()))?;
    let mut stderr_pipe = child.stderr.take().ok_or_else(|| Error::Bench("no stderr pipe".into()))?;

    let mut stdout = Vec::with_capacity(4096);
    let mut first = [0u8; 1];
    let first_byte = match stdout_pipe.read(&mut first) {
        Ok(1) => {
            let at = start.elapsed();
            stdout.push(first[0]);
            Some(at)
        }
        Ok(_) => None,
        Err(e) => return Err(Error::Io("reading the VMM's stdout".into(), e)),
    };
    stdout_pipe.read_to_end(&mut stdout).map_err(|e| Error::Io("reading the VMM's stdout".into(), e))?;
    let mut stderr = Vec::new();
    stderr_pipe.read_to_end(&mut stderr).map_err(|e| Error::Io("reading the VMM's stderr".into(), e))?;

    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 overwrites.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; `status` and `usage` are valid for writes.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    if reaped != pid {
        return Err(Error::Io("wait4".into(), std::io::Error::last_os_error()));
    }
    // `child` is reaped by hand above; dropping it neither waits nor kills.
    drop(child);

    let status =
        if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let first_byte = first_byte.ok_or_else(|| {
        Error::Bench(format!(
            "{command:?} wrote nothing on stdout (status {status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
    })?;
    Ok(Launch {
        first_byte,
        exit,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        status,
        stdout,
        stderr,
    })
}

/// A scratch directory in `$TMPDIR`, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> Result<ScratchDir, Error> {
        let path = std::env::temp_dir().join(format!("kestrel-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| Error::Io(path.display().to_string(), e))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Median, minimum and maximum of some samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Panics on no samples; the benchmark always has at least ten.
    pub fn of(samples: &[f64]) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Summary { median, min: sorted[0], max: sorted[n - 1] }
    }
}

/// The `p`th percentile (0 < p ≤ 100) of some samples, by nearest rank: the smallest sample with at
/// least p % of the samples at or below it. Panics on no samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 90.0), 9.0);
        assert_eq!(percentile(&samples, 99.0), 10.0);
        assert_eq!(percentile(&samples, 50.0), 5.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
    }
}
