//! sink: how request bodies leave loglet: an HTTP client (TLS with a custom CA and client
//! certificate, basic or bearer auth with a token file re-read when it changes, extra headers,
//! compression) or loglet's own stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::{AuthConfig, Compression, SinkConfig, TlsConfig};
use crate::pool::BufferPool;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("failed to read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} in {path}: {message}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("failed to build the HTTP client: {0}")]
    Client(String),
    #[error("invalid header {0}")]
    Header(String),
}

/// A failed attempt that never got an answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Other(String),
    #[error("failed to write to stdout")]
    Stdout(#[source] std::io::Error),
}

impl SendError {
    /// The `status` label of `loglet_sink_errors_total` for this error.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Connect(_) => "connect",
            SendError::Other(_) => "request",
            SendError::Stdout(_) => "stdout",
        }
    }
}

/// The answer of a backend.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub enum Transport {
    Http(Box<HttpTransport>),
    Stdout,
}

pub struct HttpTransport {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    auth: Option<Auth>,
}

enum Auth {
    /// A fixed `Authorization` value.
    Fixed(HeaderValue),
    /// `Bearer <token>` from a file, re-read when its modification time changes.
    TokenFile {
        path: PathBuf,
        cached: Mutex<Option<(SystemTime, HeaderValue)>>,
    },
}

impl Auth {
    fn from_config(auth: &AuthConfig) -> Result<Auth, TransportError> {
        let value = match auth {
            AuthConfig::Basic {
                user,
                password,
                password_file,
            } => {
                let password = match (password, password_file) {
                    (Some(p), _) => p.clone(),
                    (None, Some(path)) => read_secret(path, "password file")?,
                    (None, None) => String::new(),
                };
                use base64_lite::encode;
                format!("Basic {}", encode(format!("{user}:{password}").as_bytes()))
            }
            AuthConfig::Bearer { token: Some(t), .. } => format!("Bearer {t}"),
            AuthConfig::Bearer {
                token_file: Some(path),
                ..
            } => {
                return Ok(Auth::TokenFile {
                    path: path.clone(),
                    cached: Mutex::new(None),
                });
            }
            AuthConfig::Bearer { .. } => {
                return Err(TransportError::Header("bearer auth without a token".into()));
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            TransportError::Header("authorization (invalid characters in the credentials)".into())
        })?;
        v.set_sensitive(true);
        Ok(Auth::Fixed(v))
    }

    fn value(&self) -> Option<HeaderValue> {
        match self {
            Auth::Fixed(v) => Some(v.clone()),
            Auth::TokenFile { path, cached } => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let mut cached = cached.lock().unwrap_or_else(|e| e.into_inner());
                if let (Some((at, v)), Some(m)) = (cached.as_ref(), mtime)
                    && *at == m
                {
                    return Some(v.clone());
                }
                match read_secret(path, "token file") {
                    Ok(token) => {
                        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
                        v.set_sensitive(true);
                        *cached = mtime.map(|m| (m, v.clone()));
                        Some(v)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to read the bearer token; sending the last one read");
                        cached.as_ref().map(|(_, v)| v.clone())
                    }
                }
            }
        }
    }
}

fn read_secret(path: &PathBuf, what: &'static str) -> Result<String, TransportError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| TransportError::ReadFile {
            what,
            path: path.clone(),
            source,
        })
}

fn read_pem(path: &PathBuf, what: &'static str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::ReadFile {
        what,
        path: path.clone(),
        source,
    })
}

/// The certificates of the PEM text `pem`, read from `path`, each checked as rustls will take
/// it: text that is not PEM, holds no certificate or a certificate that does not parse fails
/// here, at start, naming the file, rather than as an opaque error of the client builder.
fn certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bad = |message: String| TransportError::BadPem {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(c.clone())
            .map_err(|e| bad(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// The client certificate chain and its key, checked to parse and to belong together.
fn identity(cert: &PathBuf, key: &PathBuf) -> Result<reqwest::Identity, TransportError> {
    let mut pem = read_pem(cert, "client certificate")?;
    let chain = certificates(&pem, cert, "client certificate")?;
    let key_pem = read_pem(key, "client key")?;
    let bad_key = |message: String| TransportError::BadPem {
        what: "client key",
        path: key.clone(),
        message,
    };
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(e.to_string()))?;
    CertifiedKey::from_der(chain, der, &rustls::crypto::ring::default_provider())
        .map_err(|e| bad_key(format!("{e} (is it the key of {}?)", cert.display())))?;
    pem.push(b'\n');
    pem.extend(key_pem);
    reqwest::Identity::from_pem(&pem).map_err(|e| TransportError::BadPem {
        what: "client certificate or key",
        path: cert.clone(),
        message: format!("{e:#}"),
    })
}

fn client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client, TransportError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("loglet/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca_file {
        let pem = read_pem(ca, "CA file")?;
        for c in certificates(&pem, ca, "CA certificates")? {
            let cert = reqwest::Certificate::from_der(&c)
                .map_err(|e| TransportError::Client(format!("{e:#}")))?;
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        b = b.identity(identity(cert, key)?);
    }
    if tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is off for a sink (tls.insecure_skip_verify)");
        b = b.danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| TransportError::Client(format!("{e:#}")))
}

impl Transport {
    /// Builds the transport of a sink whose format adds `format_headers` and may fix the path.
    pub fn new(
        cfg: &SinkConfig,
        format_headers: HeaderMap,
        path: Option<&str>,
    ) -> Result<Transport, TransportError> {
        let Some(url) = cfg.url.as_deref() else {
            return Ok(Transport::Stdout);
        };
        // The format's path may carry a query (`/_bulk?filter_path=…`).
        let full = match path {
            Some(path) => format!("{}{path}", url.trim_end_matches('/')),
            None => url.to_string(),
        };
        let url = Url::parse(&full).map_err(|e| TransportError::Client(format!("url: {e}")))?;
        let mut headers = format_headers;
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| TransportError::Header(k.clone()))?;
            let value = HeaderValue::from_str(v).map_err(|_| TransportError::Header(k.clone()))?;
            headers.insert(name, value);
        }
        let auth = cfg.auth.as_ref().map(Auth::from_config).transpose()?;
        Ok(Transport::Http(Box::new(HttpTransport {
            client: client(&cfg.tls, cfg.request.timeout.0)?,
            url,
            headers,
            auth,
        })))
    }

    /// Sends one body; `content_encoding` names its compression.
    pub async fn send(
        &self,
        content_type: &str,
        content_encoding: Option<&str>,
        extra: Option<&(header::HeaderName, header::HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, SendError> {
        match self {
            Transport::Stdout => {
                // Blocking writes to a pipe belong off the async workers.
                tokio::task::spawn_blocking(move || {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&body)?;
                    out.flush()
                })
                .await
                .map_err(|e| SendError::Other(e.to_string()))?
                .map_err(SendError::Stdout)?;
                Ok(Answer {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                })
            }
            Transport::Http(h) => {
                let mut req = h
                    .client
                    .post(h.url.clone())
                    .headers(h.headers.clone())
                    .header(header::CONTENT_TYPE, content_type);
                if let Some((name, value)) = extra {
                    req = req.header(name.clone(), value.clone());
                }
                if let Some(enc) = content_encoding {
                    req = req.header(header::CONTENT_ENCODING, enc);
                }
                if let Some(v) = h.auth.as_ref().and_then(Auth::value) {
                    req = req.header(header::AUTHORIZATION, v);
                }
                let resp = req.body(body).send().await.map_err(classify)?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.map_err(classify)?;
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
        }
    }
}

fn classify(e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::Timeout
    } else if e.is_connect() {
        SendError::Connect(format!("{e:#}"))
    } else {
        SendError::Other(format!("{e:#}"))
    }
}

/// Compresses `body` into a buffer from `pool` (giving `body` back to it); returns what to send
/// with its `Content-Encoding` (none for snappy, whose only user, Loki's protobuf push, expects a
/// bare snappy block). Should compression fail (it cannot short of a bug), the body goes
/// uncompressed rather than being lost.
pub fn compress(
    c: Compression,
    body: Vec<u8>,
    pool: &BufferPool,
) -> (Vec<u8>, Option<&'static str>) {
    if c == Compression::None {
        return (body, None);
    }
    let out = pool.take(body.len() / 4);
    match compress_into(c, &body, out) {
        Ok((out, encoding)) => {
            pool.give(body);
            (out, encoding)
        }
        Err(e) => {
            tracing::error!(error = %e, "failed to compress a request; sending it uncompressed");
            (body, None)
        }
    }
}

fn compress_into(
    c: Compression,
    body: &[u8],
    mut out: Vec<u8>,
) -> std::io::Result<(Vec<u8>, Option<&'static str>)> {
    match c {
        Compression::None => {
            out.extend_from_slice(body);
            Ok((out, None))
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(body)?;
            Ok((enc.finish()?, Some("gzip")))
        }
        Compression::Zstd => {
            out.reserve(zstd::zstd_safe::compress_bound(body.len()));
            zstd::bulk::Compressor::new(zstd::DEFAULT_COMPRESSION_LEVEL)?
                .compress_to_buffer(body, &mut out)?;
            Ok((out, Some("zstd")))
        }
        Compression::Snappy => {
            out.resize(snap::raw::max_compress_len(body.len()), 0);
            let n = snap::raw::Encoder::new()
                .compress(body, &mut out)
                .map_err(std::io::Error::other)?;
            out.truncate(n);
            Ok((out, None))
        }
    }
}

/// RFC 4648 base64, for basic auth only (not worth a dependency).
mod base64_lite {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    #[test]
    fn encodes_like_rfc_4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(encode(i.as_bytes()), o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn compression_round_trips_and_names_its_encoding() {
        let body = b"{\"message\":\"hello\"}\n".repeat(100);
        let pool = BufferPool::new(4, 1 << 20);
        let compress = |c, b| compress(c, b, &pool);
        let (gz, enc) = compress(Compression::Gzip, body.clone());
        assert_eq!(enc, Some("gzip"));
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        let (zs, enc) = compress(Compression::Zstd, body.clone());
        assert_eq!(enc, Some("zstd"));
        assert_eq!(zstd::bulk::decompress(&zs, body.len()).unwrap(), body);
        let (sn, enc) = compress(Compression::Snappy, body.clone());
        assert_eq!(enc, None);
        assert_eq!(snap::raw::Decoder::new().decompress_vec(&sn).unwrap(), body);
        let (plain, enc) = compress(Compression::None, body.clone());
        assert_eq!((plain, enc), (body, None));
    }

    #[test]
    fn token_files_are_read_again_when_they_change() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("token");
        std::fs::write(&p, "one\n").unwrap();
        let auth = Auth::from_config(&AuthConfig::Bearer {
            token: None,
            token_file: Some(p.clone()),
        })
        .unwrap();
        assert_eq!(auth.value().unwrap(), "Bearer one");
        std::fs::write(&p, "two").unwrap();
        // Make sure the modification time differs even on coarse-grained filesystems.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(auth.value().unwrap(), "Bearer two");
    }
}
