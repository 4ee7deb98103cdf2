//! HTTP `Range` header parsing for file responses (RFC 9110 §14).
//!
//! One range is served as 206; a header with several ranges is answered with
//! the whole file (200), which RFC 9110 allows; a range starting past the end
//! is 416. iPXE's HTTP SAN uses single `bytes=a-b` ranges.

/// How to answer a request for a resource of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole body (no or ignorable Range header).
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Decides the answer for `header` (the Range value, if any) and `len`.
pub fn answer(header: Option<&[u8]>, len: u64) -> RangeAnswer {
    let Some(raw) = header else {
        return RangeAnswer::Full;
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return RangeAnswer::Full;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) if digits(last) => match last.parse::<u64>() {
            Ok(0) | Err(_) => RangeAnswer::Unsatisfiable,
            Ok(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Ok(n) => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        // bytes=A-
        (false, true) if digits(first) => match first.parse::<u64>() {
            Ok(start) if start < len => RangeAnswer::Partial {
                start,
                end: len - 1,
            },
            _ => RangeAnswer::Unsatisfiable,
        },
        // bytes=A-B
        (false, false) if digits(first) && digits(last) => {
            match (first.parse::<u64>(), last.parse::<u64>()) {
                (Ok(start), Ok(end)) if start <= end => {
                    if start >= len {
                        RangeAnswer::Unsatisfiable
                    } else {
                        RangeAnswer::Partial {
                            start,
                            end: end.min(len - 1),
                        }
                    }
                }
                // A > B is syntactically invalid: ignore the header.
                (Ok(_), Ok(_)) => RangeAnswer::Full,
                _ => RangeAnswer::Unsatisfiable,
            }
        }
        _ => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    fn a(h: &str, len: u64) -> RangeAnswer {
        answer(Some(h.as_bytes()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(answer(None, 10), Full);
        assert_eq!(a("bytes=0-0", 10), Partial { start: 0, end: 0 });
        assert_eq!(a("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(a("bytes=2-500", 10), Partial { start: 2, end: 9 });
        assert_eq!(a("bytes=7-", 10), Partial { start: 7, end: 9 });
        assert_eq!(a("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(a("bytes=-30", 10), Partial { start: 0, end: 9 });
        assert_eq!(a("bytes=10-", 10), Unsatisfiable);
        assert_eq!(a("bytes=10-12", 10), Unsatisfiable);
        assert_eq!(a("bytes=-0", 10), Unsatisfiable);
        assert_eq!(a("bytes=0-", 0), Unsatisfiable);
        assert_eq!(a("bytes=5-2", 10), Full);
        assert_eq!(a("bytes=0-1,4-5", 10), Full);
        assert_eq!(a("items=0-1", 10), Full);
        assert_eq!(a("bytes=x-1", 10), Full);
        assert_eq!(a("bytes=99999999999999999999999-", 10), Full);
        assert_eq!(
            a("bytes=18446744073709551615-18446744073709551615", 10),
            Unsatisfiable
        );
    }
}
