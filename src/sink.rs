//! sink: batching, encoding, compression, sending, retrying and acknowledging, one mechanism for
//! every backend; the backends' wire formats live beside it.

pub mod elasticsearch;
pub mod encode;
pub mod format;
pub mod json;
pub mod loki;
pub mod otlp;
pub mod splunk_hec;
