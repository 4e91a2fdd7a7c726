//! Parsing one setting's text: sizes, durations, versions kept, trash retention.

use std::time::Duration;

use crate::retention::VersionsKeep;

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `all` or a whole number.
pub(super) fn parse_versions_keep(text: &str) -> Result<VersionsKeep, String> {
    match text.trim() {
        "all" => Ok(VersionsKeep::All),
        n => n
            .parse()
            .map(VersionsKeep::Newest)
            .map_err(|_| "expected a whole number of versions or \"all\"".to_string()),
    }
}

/// A duration, or `off` / `0`: no trash.
pub(super) fn parse_trash_retention(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "off" | "0" => Ok(None),
        t => parse_duration(t).map(Some),
    }
}

/// `16GiB`, `512 MiB`, `10MB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        "expected a whole number of bytes, optionally with a unit like MiB".to_string()
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// `10s`, `500ms`, `2m`, `1h`, `7d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 10s or 500ms".to_string())?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| "duration too large".to_string())
    };
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86_400)?,
        other => return Err(format!("unknown duration unit {other:?}")),
    };
    if d.is_zero() {
        return Err("must be positive".into());
    }
    Ok(d)
}
