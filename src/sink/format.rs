//! sink: what each backend's wire format must provide; the shared machinery in `sink.rs` batches,
//! compresses, sends, retries and acknowledges for all of them.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::config::Compression;
use crate::record::Record;

/// A backend's wire format: how a request body is built and how an answer is read.
pub trait Format: Send + Sync + 'static {
    /// `Content-Type` of the encoded body.
    fn content_type(&self) -> &'static str;

    /// Headers this format adds to every request (besides auth and configured headers).
    fn headers(&self, _headers: &mut HeaderMap) {}

    /// The path appended to the sink's `url`, if the format has one
    /// (`/loki/api/v1/push`, `/_bulk?filter_path=…`, `/v1/logs`, `/services/collector/event`).
    /// It may carry a query string.
    fn path(&self) -> Option<&str> {
        None
    }

    /// The header that carries a route's tenant (Loki's `X-Scope-OrgID`), if the backend has
    /// tenants.
    fn tenant_header(&self) -> Option<reqwest::header::HeaderName> {
        None
    }

    /// The compression used when the sink's config does not choose one. Loki's protobuf body is
    /// always snappy (block format, `snap::raw`): Loki decodes it whatever `Content-Encoding` says.
    fn default_compression(&self) -> Compression {
        Compression::None
    }

    /// An encoder for one batching task. Encoders keep caches (per-Pod pre-encoded metadata),
    /// so there is one per task, not one per request.
    fn encoder(&self) -> Box<dyn Encoder>;

    /// What the answer means for the `records` records that were sent, in the order they were
    /// given to `Encoder::encode`.
    fn outcome(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        records: usize,
    ) -> Outcome;
}

/// Builds request bodies.
pub trait Encoder: Send {
    /// Append the encoding of `records` (one request's worth) to `out`.
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>);
}

/// What happened to a request, decided by the format from the backend's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every record was accepted.
    Delivered,
    /// Nothing was accepted, and trying again may work (429, 5xx, a timeout).
    Retry {
        /// The backend's `Retry-After`, if it gave one.
        after: Option<Duration>,
        reason: String,
    },
    /// Nothing was accepted, and trying again cannot work (400, 401, 413 ...): the records are
    /// dropped, counted and a sample logged.
    Rejected { reason: String },
    /// Some records were accepted; of the others, those at `retry` (indices into the records as
    /// sent) may be retried alone and `rejected` more were dropped for good.
    Partial {
        retry: Vec<usize>,
        rejected: usize,
        /// The answer's `Retry-After`, if it gave one: the retry of `retry` waits for it too.
        after: Option<Duration>,
        reason: String,
    },
}

/// Reads a `Retry-After` header (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date, which
/// counts from now. An unreadable value is treated as absent.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now())
}

/// A `Retry-After` value as a wait from `now`: `120`, or a date in any of the three forms
/// HTTP recipients must accept (`Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850 and
/// asctime forms). A date already past means no wait; a number too large for a `u64` the longest.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(v).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The usual reading of an HTTP status, for formats with nothing more to say: 2xx delivered;
/// 408, 429 and 5xx retried; any other status rejected.
pub fn outcome_from_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let reason = format!("{status}: {}", body_sample(body));
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Outcome::Retry {
            after: retry_after(headers),
            reason,
        }
    } else {
        Outcome::Rejected { reason }
    }
}

/// The start of a response body, printable, for logs and error messages.
pub fn body_sample(body: &[u8]) -> String {
    const MAX: usize = 256;
    let cut = &body[..body.len().min(MAX)];
    let mut s = String::from_utf8_lossy(cut)
        .trim()
        .replace(['\n', '\r'], " ");
    if body.len() > MAX {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example.
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let before = date - Duration::from_secs(90);
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", Some(Duration::from_secs(120))),
            (" 7 ", Some(Duration::from_secs(7))),
            ("0", Some(Duration::ZERO)),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            (
                "Sun, 06 Nov 1994 08:49:37 GMT",
                Some(Duration::from_secs(90)),
            ),
            (
                "Sunday, 06-Nov-94 08:49:37 GMT",
                Some(Duration::from_secs(90)),
            ),
            ("Sun Nov  6 08:49:37 1994", Some(Duration::from_secs(90))),
            ("", None),
            ("soon", None),
            ("-5", None),
            ("+5", None),
            ("1.5", None),
            ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, before), *want, "{value:?}");
        }
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                date + Duration::from_secs(5)
            ),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
    }

    #[test]
    fn retry_after_headers_in_either_form_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(3600);
        h.insert(
            reqwest::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&h).expect("a date an hour ahead");
        // The date has whole seconds, and the clock moves on before it is read back.
        assert!(
            wait > Duration::from_secs(60) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
    }
}
