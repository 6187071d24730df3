//! sink: batching, encoding, compression, sending, retrying and acknowledging, one mechanism for
//! every backend; the backends' wire formats live beside it.

pub mod format;
pub mod json;
