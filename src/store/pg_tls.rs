//! TLS to PostgreSQL: what the URL's `sslmode` and `store.postgres.ca_file` ask for, the rustls
//! client (ring provider) that does it, and one-line explanations of the handshakes that fail.
//!
//! The modes mean what they mean to libpq, so the URL a provider hands out (or that works in
//! `psql`) behaves the same here:
//! - `disable`: plain TCP.
//! - `prefer` (the default): TLS when the server offers it, plain otherwise.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, and the server's certificate must chain to a trusted root.
//! - `verify-full`: `verify-ca`, and the certificate must name the host in the URL.
//!
//! Under `prefer` and `require` the certificate is only checked when `ca_file` is set (libpq
//! does the same with its root certificate file); the verify modes trust `ca_file`, or the
//! system's roots without one. tokio-postgres knows only the first three names, so the verify
//! modes are read here and handed to it as `require` plus a verifier.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The URL's `sslmode`, with libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.name() == value)
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encrypted, but anyone's certificate is accepted (libpq's `require` without roots).
    Nothing,
    /// It chains to a trusted root.
    Chain,
    /// It chains to a trusted root and names the host connected to.
    ChainAndHost,
}

/// Where the trusted roots come from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    None,
    System,
    File(PathBuf),
}

impl Roots {
    fn describe(&self) -> String {
        match self {
            Roots::None => "no roots".into(),
            Roots::System => "the system's root certificates (set store.postgres.ca_file to the \
                              CA that signed the server's certificate)"
                .into(),
            Roots::File(p) => format!("store.postgres.ca_file {}", p.display()),
        }
    }
}

/// How the connections of one `store.url` are secured, ready to connect with.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    check: Check,
    roots: Roots,
    connector: MakeRustlsConnect,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("check", &self.check)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// The URL's `sslmode` (`prefer` when absent) and the URL as tokio-postgres takes it: a verify
/// mode becomes `require` (the verifier does the rest). `sslrootcert` is refused with where its
/// setting lives, rather than tokio-postgres's "unknown option".
pub fn split_sslmode(url: &str) -> Result<(SslMode, String), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((SslMode::Prefer, url.to_string()));
    };
    let mut mode = SslMode::Prefer;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode={value} is not one of disable, prefer, require, verify-ca, \
                         verify-full"
                    )
                })?;
                let driver = match mode {
                    SslMode::VerifyCa | SslMode::VerifyFull => "require",
                    m => m.name(),
                };
                kept.push(format!("sslmode={driver}"));
            }
            "sslrootcert" | "sslcert" | "sslkey" | "sslcrl" | "sslpassword" => {
                return Err(format!(
                    "{key} in the URL is not read by intentd: the CA to trust is \
                     store.postgres.ca_file (client certificates are not supported)"
                ))
            }
            _ => kept.push(pair.to_string()),
        }
    }
    Ok((mode, format!("{base}?{}", kept.join("&"))))
}

impl PgTls {
    /// Reads the roots the mode needs (`ca_file`, else the system's) and builds the client.
    /// The error names the file or the setting and the reason.
    pub fn new(mode: SslMode, ca_file: Option<&Path>) -> Result<PgTls, String> {
        let check = match (mode, ca_file) {
            (SslMode::VerifyFull, _) => Check::ChainAndHost,
            (SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
            (SslMode::Prefer | SslMode::Require, Some(_)) => Check::Chain,
        };
        let (roots, store) = match (check, ca_file) {
            (Check::Nothing, _) => (Roots::None, RootCertStore::empty()),
            (_, Some(path)) => (Roots::File(path.to_path_buf()), read_ca_file(path)?),
            (_, None) => (Roots::System, system_roots(mode)?),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(AnyCertificate(provider.clone())),
            Check::Chain | Check::ChainAndHost => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|e| format!("{}: {e}", roots.describe()))?;
                Arc::new(ChainVerifier {
                    webpki,
                    check_host: check == Check::ChainAndHost,
                })
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What PostgreSQL 17+ expects under sslnegotiation=direct; ignored by older servers.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PgTls {
            mode,
            check,
            roots,
            connector: MakeRustlsConnect::new(config),
        })
    }

    /// The TLS half of tokio-postgres's `connect`.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// The mode tokio-postgres is given (the verify modes are `require` plus the verifier).
    pub fn driver_mode(&self) -> DriverSslMode {
        match self.mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        }
    }

    /// TLS is used but nobody's certificate is checked: worth one warning at start.
    pub fn unverified_require(&self) -> bool {
        self.mode == SslMode::Require && self.check == Check::Nothing
    }

    /// A connect that failed over TLS, as one line; None when TLS is not why. Such a failure
    /// is final: a refused or unverifiable handshake fails the same way until someone changes
    /// the server or the config, so retrying does not help.
    pub fn explain(&self, e: &tokio_postgres::Error) -> Option<String> {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.to_string() == "server does not support TLS" {
                return Some(format!(
                    "TLS is required (sslmode={}) but the server refused it: it does not offer \
                     TLS (PostgreSQL's `ssl` setting is off)",
                    self.mode.name()
                ));
            }
            let rustls_err = s
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .or_else(|| s.downcast_ref::<rustls::Error>());
            if let Some(tls) = rustls_err {
                return Some(self.explain_tls(tls));
            }
            source = s.source();
        }
        None
    }

    fn explain_tls(&self, e: &rustls::Error) -> String {
        match e {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's TLS certificate does not name the host in store.url \
                 (sslmode=verify-full checks it; connect by a name the certificate lists, or use \
                 sslmode=verify-ca): {e}"
            ),
            rustls::Error::InvalidCertificate(_) => format!(
                "the server's TLS certificate could not be verified against {}: {e}",
                self.roots.describe()
            ),
            _ => format!("TLS handshake with the server failed: {e}"),
        }
    }
}

/// The PEM certificates of `ca_file`, each a trusted root.
fn read_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let key = "store.postgres.ca_file";
    let bytes = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let mut store = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "{key} {}: certificate {} is not valid PEM: {e}",
                path.display(),
                i + 1
            )
        })?;
        store.add(cert).map_err(|e| {
            format!(
                "{key} {}: certificate {} cannot be a root: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    if store.is_empty() {
        return Err(format!(
            "{key} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(store)
}

/// The operating system's trusted roots (what `SSL_CERT_FILE` / `SSL_CERT_DIR` or the
/// distribution's bundle holds).
fn system_roots(mode: SslMode) -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "sslmode={} needs trusted roots: the system has none{why}; install the \
             ca-certificates package or set store.postgres.ca_file",
            mode.name()
        ));
    }
    Ok(store)
}

/// The chain check, with the host name part optional (`verify-ca`).
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_host: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any certificate (`prefer` / `require` without `ca_file`, as libpq does), but still
/// checks the handshake's signatures against it, so the session key is the certificate's.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
    fn verify_modes_reach_the_driver_as_require_and_other_options_stay() {
        let (m, u) =
            split_sslmode("postgres://a:pw@h/db?sslmode=verify-full&connect_timeout=3").unwrap();
        assert_eq!(m, SslMode::VerifyFull);
        assert_eq!(u, "postgres://a:pw@h/db?sslmode=require&connect_timeout=3");
        let (m, u) = split_sslmode("postgres://h/db?application_name=x&sslmode=verify-ca").unwrap();
        assert_eq!(m, SslMode::VerifyCa);
        assert_eq!(u, "postgres://h/db?application_name=x&sslmode=require");
        let (m, u) = split_sslmode("postgres://h/db").unwrap();
        assert_eq!((m, u.as_str()), (SslMode::Prefer, "postgres://h/db"));
        let (m, _) = split_sslmode("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(m, SslMode::Disable);
    }

    #[test]
    fn an_unknown_sslmode_or_a_url_root_file_is_named() {
        let e = split_sslmode("postgres://h/db?sslmode=allow-ish").unwrap_err();
        assert!(
            e.contains("sslmode=allow-ish") && e.contains("verify-full"),
            "{e}"
        );
        let e = split_sslmode("postgres://h/db?sslrootcert=/x.pem").unwrap_err();
        assert!(e.contains("sslrootcert") && e.contains("ca_file"), "{e}");
    }

    #[test]
    fn ca_file_problems_name_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = PgTls::new(SslMode::VerifyFull, Some(&missing)).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("No such file"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = PgTls::new(SslMode::Require, Some(&empty)).unwrap_err();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn disable_and_prefer_need_no_roots() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            let tls = PgTls::new(mode, None).unwrap();
            assert_eq!(tls.check, Check::Nothing);
        }
        let require = PgTls::new(SslMode::Require, None).unwrap();
        assert!(require.unverified_require());
        assert_eq!(require.driver_mode(), DriverSslMode::Require);
        let prefer = PgTls::new(SslMode::Prefer, None).unwrap();
        assert!(!prefer.unverified_require());
        assert_eq!(prefer.driver_mode(), DriverSslMode::Prefer);
    }
}
