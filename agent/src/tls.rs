//! HTTPS for sgpath's two servers (`sgpath agent`, `sgpath hub`) and their clients.
//!
//! A server presents either the certificate and key of `--tls-cert`/`--tls-key` (PEM files,
//! e.g. a `kubernetes.io/tls` Secret mounted read-only) or a self-signed ECDSA P-256
//! certificate made at start (rcgen) for `localhost` and the listening address. Plain HTTP
//! (`--no-tls`) is only served on a loopback address: the only clients that can reach it are
//! on the same host (tests, a sidecar).
//!
//! Clients of a self-signed server cannot verify it: [`client_config`] without a CA accepts
//! any certificate, as the kubelet's HTTPS probes and the API server's proxy do. What makes
//! that acceptable is the token the client sends: bound to the `sgpath` audience (the API
//! server itself refuses it) and living at most 15 minutes (see [`crate::auth`]). Given the CA
//! of `--tls-cert`, the client verifies the server.
//!
//! Side effects: reads the certificate files; none when self-signed.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    },
};

/// Why the server cannot serve HTTPS; each names the flag or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {}: no PEM certificate could be read", path.display())]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-key {}: no PEM private key could be read", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-cert and --tls-key do not make a usable certificate")]
    Pair(#[source] rustls::Error),
    #[error("cannot make a self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    #[error("--tls-ca {}: no PEM certificate could be read", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "--no-tls serves plain HTTP, which only a loopback --listen may do (--listen {listen}); \
         drop --no-tls to serve HTTPS"
    )]
    PlainNotLoopback { listen: SocketAddr },
}

/// Where a server's certificate comes from (`--tls-cert`, `--tls-key`, `--no-tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Made at start, for `localhost` and the listening address.
    SelfSigned,
    /// PEM files (a chain, leaf first; a PKCS#8, PKCS#1 or SEC1 key).
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, on a loopback address only.
    Plain,
}

/// How a server's connections are wrapped.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

/// The ring provider kube and hyper-rustls are built with (no aws-lc-rs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Transport {
    /// The transport for a server listening on `listen`.
    ///
    /// # Errors
    /// [`TlsError`]: unreadable or mismatched files, or plain HTTP on an address that is not
    /// loopback.
    pub fn new(source: &Source, listen: SocketAddr) -> Result<Transport, TlsError> {
        let (chain, key) = match source {
            Source::Plain if listen.ip().is_loopback() => return Ok(Transport::Plain),
            Source::Plain => return Err(TlsError::PlainNotLoopback { listen }),
            Source::Files { cert, key } => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .and_then(|c| {
                        if c.is_empty() {
                            Err(rustls::pki_types::pem::Error::NoItemsFound)
                        } else {
                            Ok(c)
                        }
                    })
                    .map_err(|source| TlsError::Cert {
                        path: cert.clone(),
                        source,
                    })?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
                    path: key.clone(),
                    source,
                })?;
                (chain, key)
            }
            Source::SelfSigned => {
                let mut names = vec!["localhost".to_owned()];
                if !listen.ip().is_unspecified() {
                    names.push(listen.ip().to_string());
                }
                let made =
                    rcgen::generate_simple_self_signed(names).map_err(TlsError::SelfSigned)?;
                let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
                (vec![made.cert.der().clone()], key)
            }
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Pair)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Pair)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Transport::Tls(TlsAcceptor::from(Arc::new(config))))
    }

    /// `https` or `http`, for log lines and URLs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }

    /// Wraps an accepted connection (the TLS handshake; the caller bounds its time).
    ///
    /// # Errors
    /// The handshake's.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<Stream> {
        match self {
            Transport::Plain => Ok(Stream::Plain(stream)),
            Transport::Tls(acceptor) => Ok(Stream::Tls(Box::new(acceptor.accept(stream).await?))),
        }
    }
}

/// An accepted connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A client's TLS settings for sgpath's servers: verified against `ca` (the CA of their
/// `--tls-cert`), or, without one, any certificate accepted (the servers' own self-signed
/// ones; see the module's doc for why the token still holds).
///
/// # Errors
/// [`TlsError::Ca`] when `ca` holds no certificate.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let mut config = match ca {
        Some(path) => {
            let err = |source| TlsError::Ca {
                path: path.to_owned(),
                source,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(err)? {
                // A certificate rustls cannot parse is the file's fault too.
                roots
                    .add(cert.map_err(err)?)
                    .map_err(|_| err(rustls::pki_types::pem::Error::NoItemsFound))?;
            }
            if roots.is_empty() {
                return Err(err(rustls::pki_types::pem::Error::NoItemsFound));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate, still checking that the handshake is signed by its key.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let lo: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert!(matches!(
            Transport::new(&Source::Plain, lo),
            Ok(Transport::Plain)
        ));
        let e = Transport::new(&Source::Plain, any).err().unwrap();
        assert!(e.to_string().contains("--no-tls") && e.to_string().contains("0.0.0.0:9464"));
        assert!(matches!(
            Transport::new(&Source::SelfSigned, any),
            Ok(Transport::Tls(_))
        ));
        let missing = Source::Files {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
        };
        let e = Transport::new(&missing, any).err().unwrap();
        assert!(
            e.to_string().contains("--tls-cert /nonexistent/tls.crt"),
            "{e}"
        );
    }

    /// A self-signed server and a client without a CA complete a handshake; a client given
    /// an unrelated CA refuses it.
    #[tokio::test]
    async fn a_self_signed_server_is_reached_without_a_ca_and_refused_with_another() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Transport::new(&Source::SelfSigned, addr).unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                if let Ok(mut s) = server.accept(s).await {
                    let _ = s.write_all(b"hello").await;
                    let _ = s.shutdown().await;
                }
            }
        });
        let connect = |config: ClientConfig| async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
        };
        let mut s = connect(client_config(None).unwrap()).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        // Another self-signed certificate as the CA: the handshake fails.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let ca = std::env::temp_dir().join(format!("sgpath-tls-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, other.cert.pem()).unwrap();
        let refused = connect(client_config(Some(&ca)).unwrap()).await;
        let _ = std::fs::remove_file(&ca);
        assert!(refused.is_err(), "a certificate of another CA was accepted");
    }
}
