//! Times as the audit API takes and shows them: unix milliseconds inside,
//! RFC 3339 (`2024-05-01T09:00:00Z`) outside.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    ms_of(SystemTime::now())
}

pub fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2024-05-01T09:00:00.000Z`.
pub fn format(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    portcullis_telemetry::record::Rfc3339(t).to_string()
}

/// Accepts RFC 3339 (`2024-05-01T09:00:00Z`, `...T09:00:00.5+02:00`, a
/// bare date `2024-05-01`), unix seconds or milliseconds (numbers above
/// 10^11 are milliseconds), `now`, and `-15m`, `-1h`, `-2d`, `-30s`
/// (relative to now).
pub fn parse(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!("invalid time \"{s}\": use RFC 3339 (2024-05-01T09:00:00Z), unix seconds, or -1h")
    };
    if s == "now" {
        return Ok(now_ms());
    }
    if let Some(rel) = s.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            _ => return Err(bad()),
        };
        return Ok(now_ms() - (secs * 1000.0) as i64);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        let n: i64 = s.parse().map_err(|_| bad())?;
        return Ok(if n > 100_000_000_000 { n } else { n * 1000 });
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    if b.len() == 10 {
        return Ok(days * 86_400_000);
    }
    if b.len() < 19
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
        frac_ms = padded.parse().map_err(|_| bad())?;
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" | "" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh: i64 = tz[1..3].parse().map_err(|_| bad())?;
            let om: i64 = tz[4..6].parse().map_err(|_| bad())?;
            let v = oh * 3600 + om * 60;
            if tz.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    Ok((days * 86_400 + h * 3600 + mi * 60 + se - offset_secs) * 1000 + frac_ms)
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let ms = parse("2024-05-01T12:00:00.123Z").unwrap();
        assert_eq!(ms, 1_714_564_800_123);
        assert_eq!(format(ms), "2024-05-01T12:00:00.123Z");
        assert_eq!(
            parse("2024-05-01T14:00:00+02:00").unwrap(),
            1_714_564_800_000
        );
        assert_eq!(parse("2024-05-01").unwrap(), 1_714_521_600_000);
        assert_eq!(parse("1714564800").unwrap(), 1_714_564_800_000);
        assert_eq!(parse("1714564800123").unwrap(), 1_714_564_800_123);
        assert!(parse("yesterday").is_err());
        assert!(parse("2024-13-01").is_err());
        let rel = parse("-1h").unwrap();
        assert!((now_ms() - rel - 3_600_000).abs() < 1000);
    }
}
