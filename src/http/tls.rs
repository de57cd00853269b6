//! The server's TLS configuration from PEM files (rustls, ring provider).

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

pub fn server_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not fit together")?;
    // HTTP/1.1 only: actix-web is built without HTTP/2, whose state would
    // make every connection's task, WebSocket ones included, about 1.4 KiB
    // larger (docs/BENCHMARKS.md, WebSocket memory).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
