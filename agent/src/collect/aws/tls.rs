//! The roots HTTPS to AWS trusts: Mozilla's, compiled in (`webpki-roots`: the image has no
//! CA bundle, and a node's own bundle is not needed for AWS's public endpoints), plus every
//! certificate of the PEM bundle `SSL_CERT_FILE` names, for a private CA (a TLS-inspecting
//! proxy, an endpoint behind a company's CA, a test's throwaway CA).
//!
//! Side effects: reads `SSL_CERT_FILE` once, when the first `https://` call is made.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Why the roots could not be set up; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("SSL_CERT_FILE {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SSL_CERT_FILE {path}: not a PEM certificate bundle: {message}")]
    Pem { path: String, message: String },
    #[error("SSL_CERT_FILE {path}: no CERTIFICATE in it")]
    Empty { path: String },
    #[error(
        "SSL_CERT_FILE {path}: certificate {index} is not a CA certificate rustls accepts: {message}"
    )]
    Certificate {
        path: String,
        index: usize,
        message: String,
    },
    #[error("TLS settings: {0}")]
    Config(String),
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) trusting Mozilla's roots and the
/// certificates in `cert_file`.
///
/// # Errors
/// [`TlsError`] naming `cert_file` when it cannot be read or holds no certificate.
pub fn client_config(cert_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = cert_file {
        for (index, cert) in pem_certificates(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsError::Certificate {
                path: path.display().to_string(),
                index,
                message: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every `CERTIFICATE` block of the PEM file at `path` (other blocks are skipped, as
/// OpenSSL does with a bundle).
fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: name(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: name(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: name() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mozilla's roots are there without any file; a named file that is missing or holds
    /// no certificate is refused by name, never silently ignored.
    #[test]
    fn roots_compiled_in_and_a_bad_ssl_cert_file_named() {
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
        client_config(None).unwrap();
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SSL_CERT_FILE /nonexistent/ca.pem: "),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("sgpath-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("SSL_CERT_FILE {}: no CERTIFICATE in it", empty.display())
        );
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(Some(&garbage)).unwrap_err();
        assert!(e.to_string().contains("certificate 0"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
