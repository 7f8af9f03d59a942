//! How much memory this process may still take, for refusing a request
//! that could not fit before allocating for it.

/// Bytes the system can still hand out without swapping (`MemAvailable`
/// on Linux); None where that is unknown (then nothing is refused).
pub(crate) fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `n` in GB with two decimals, for messages.
pub(crate) fn gb(n: u64) -> String {
    format!("{:.2} GB", n as f64 / 1e9)
}
