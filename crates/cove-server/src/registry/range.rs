//! `Range` requests on blobs (RFC 9110 section 14), so an interrupted pull resumes where it
//! stopped. Only one byte range is served: a request for several is answered with the whole
//! blob (200), which RFC 9110 allows and every pulling client handles.

/// What a blob `GET` answers, given its `Range` header and the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRange {
    /// The whole blob (200): no `Range`, one that is not a single byte range, or one whose
    /// syntax is invalid (RFC 9110 says to ignore those).
    Whole,
    /// Bytes `start..=end` (206 with `Content-Range: bytes start-end/size`).
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive, below the size).
        end: u64,
    },
    /// A valid range that no byte of the blob satisfies (416 with `Content-Range: bytes */size`).
    Unsatisfiable,
}

impl BlobRange {
    /// The answer to `header` (the `Range` value, if any) for a blob of `size` bytes.
    pub fn of(header: Option<&str>, size: u64) -> Self {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Self::Whole };
        // Several ranges: served whole (a multipart/byteranges answer is optional).
        if spec.contains(',') {
            return Self::Whole;
        }
        let Some((first, last)) = spec.trim().split_once('-') else { return Self::Whole };
        let num = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
        match (first.trim(), last.trim()) {
            // `bytes=-n`: the last n bytes.
            ("", n) => match num(n) {
                None => Self::Whole,
                Some(0) => Self::Unsatisfiable,
                Some(_) if size == 0 => Self::Unsatisfiable,
                Some(n) => Self::Part { start: size.saturating_sub(n), end: size - 1 },
            },
            (a, b) => {
                let Some(start) = num(a) else { return Self::Whole };
                let end = if b.is_empty() { None } else { num(b) };
                match (end, b.is_empty()) {
                    (None, false) => Self::Whole,
                    (Some(end), _) if end < start => Self::Whole,
                    _ if start >= size => Self::Unsatisfiable,
                    (end, _) => Self::Part { start, end: end.map_or(size - 1, |e| e.min(size - 1)) },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BlobRange::{self, *};

    fn of(h: &str, size: u64) -> BlobRange {
        BlobRange::of(Some(h), size)
    }

    #[test]
    fn a_closed_range_is_served_as_asked_and_cut_at_the_end_of_the_blob() {
        assert_eq!(of("bytes=0-0", 10), Part { start: 0, end: 0 });
        assert_eq!(of("bytes=2-5", 10), Part { start: 2, end: 5 });
        assert_eq!(of("bytes=2-500", 10), Part { start: 2, end: 9 });
        assert_eq!(of(" bytes=3 - 4 ", 10), Part { start: 3, end: 4 });
    }

    #[test]
    fn an_open_range_runs_to_the_end_and_a_suffix_range_takes_the_last_bytes() {
        assert_eq!(of("bytes=7-", 10), Part { start: 7, end: 9 });
        assert_eq!(of("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(of("bytes=-30", 10), Part { start: 0, end: 9 });
    }

    #[test]
    fn a_range_starting_past_the_end_or_an_empty_suffix_is_unsatisfiable() {
        assert_eq!(of("bytes=10-", 10), Unsatisfiable);
        assert_eq!(of("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(of("bytes=-0", 10), Unsatisfiable);
        assert_eq!(of("bytes=0-", 0), Unsatisfiable);
        assert_eq!(of("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn no_range_several_ranges_other_units_and_bad_syntax_get_the_whole_blob() {
        assert_eq!(BlobRange::of(None, 10), Whole);
        assert_eq!(of("bytes=0-1,4-5", 10), Whole);
        assert_eq!(of("items=0-1", 10), Whole);
        assert_eq!(of("bytes=5-2", 10), Whole);
        assert_eq!(of("bytes=a-b", 10), Whole);
        assert_eq!(of("bytes=+1-2", 10), Whole);
        assert_eq!(of("bytes=-", 10), Whole);
        assert_eq!(of("bytes=3", 10), Whole);
        assert_eq!(of("bytes=99999999999999999999999-", 10), Whole);
    }
}
