//! sink: what each backend's wire format must provide; the shared machinery in `sink.rs` batches,
//! compresses, sends, retries and acknowledges for all of them.

use std::time::Duration;

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
        reason: String,
    },
}

/// Reads a `Retry-After` header given in seconds (the HTTP-date form is rare from log backends
/// and is treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
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
