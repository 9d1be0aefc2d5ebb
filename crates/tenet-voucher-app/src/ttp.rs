//! The TTP service (the appendix's T): the host's own entity `DOMAIN:0`
//! answers recovery requests with the decision logic of `tenet-voucher`,
//! keeping each decision in SQLite, once per exchange, forever.
//!
//! The decisions run on a thread of their own (a database write must not
//! hold up routing), which serves the requesters fairly:
//! - requests wait in their requester's domain's queue ([`FairQueue`]),
//!   bounded by `dispatch.per_destination` per domain, and the domains take
//!   turns, one request a turn. A request beyond its domain's bound is not
//!   kept: its sender gets a `refused` notice ("the TTP is busy"), and it
//!   is logged and counted ([`tenet_host::HostHandle::service_busy`]).
//! - each decision is counted by outcome for `tenet status` and `/metrics`
//!   (`service_events_total{service="TTP"}`, events `admission_resolve`,
//!   `admission_abort` and `refused`).
//! - each request first gets the checks that cost no cryptography (the
//!   sender is the party entitled to it, sizes, the agreement fits the
//!   offer), then the signature verifications and the decision.
//!
//! So a peer that floods the TTP, with requests in someone else's name or
//! with signatures that do not verify, delays an honest requester of
//! another domain by at most one of its requests, and a request it is not
//! entitled to make costs no signature verification.
//!
//! A decision is written in one immediate transaction: of concurrent
//! requests for one `h(n2)` (also from other processes sharing the
//! database) the first fixes the decision, and every later request gets
//! the same signed admission back, byte for byte.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, EntityId, Message, Mtype};
use tenet_voucher::crypto::{Crypto, KeyCrypto, VerifyError};
use tenet_voucher::msg::{self, Admission, ExchangeId, Kind, RecoveryRequest};
use tenet_voucher::ttp::{DecisionStore, FairQueue, Full, StoreError, handle_request};
use tracing::{info, warn};

use tenet_host::config::TtpSection;
use tenet_host::plugin::{EntityService, HostSender};

/// Decisions in a SQLite database.
pub struct SqliteDecisions {
    conn: Connection,
}

/// Why the SQLite decision store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SqliteOpenError {
    /// The database file cannot be created or opened.
    #[error("{}: {error}", path.display())]
    File {
        /// The database file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// SQLite cannot open the database or set up its table.
    #[error("{}: {error}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        error: rusqlite::Error,
    },
}

/// A database's own error as the store's.
fn database(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(Box::new(e))
}

impl SqliteDecisions {
    /// Opens (or creates) the database at `path`. A new database is
    /// owner-only (0600), whatever the umask; SQLite gives its journal
    /// files the database's mode.
    pub fn open(path: &Path) -> Result<Self, SqliteOpenError> {
        let sqlite = |error| SqliteOpenError::Sqlite {
            path: path.to_owned(),
            error,
        };
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|error| SqliteOpenError::File {
                    path: path.to_owned(),
                    error,
                })?;
        }
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS decisions (
                 exchange BLOB PRIMARY KEY,
                 kind INTEGER NOT NULL,
                 admission BLOB NOT NULL,
                 decided_at INTEGER NOT NULL
             );",
        )
        .map_err(sqlite)?;
        Ok(Self { conn })
    }

    /// Number of decisions kept.
    pub fn count(&self) -> Result<u64, rusqlite::Error> {
        self.conn
            .query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }
}

impl DecisionStore for SqliteDecisions {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(database)?;
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT admission FROM decisions WHERE exchange = ?1",
                [&id.0[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(database)?;
        if let Some(bytes) = existing {
            return Admission::decode(&bytes).map_err(StoreError::Unreadable);
        }
        let a = make();
        let kind = match a.kind {
            msg::Kind::Resolve => 1,
            msg::Kind::Abort => 2,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT INTO decisions (exchange, kind, admission, decided_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![&id.0[..], kind, a.to_bytes(), now],
        )
        .map_err(database)?;
        tx.commit().map_err(database)?;
        Ok(a)
    }
}

/// Decisions in PostgreSQL, for a TTP served by several processes.
///
/// The connection string is libpq's, as key/value pairs or as a URL, and
/// TLS follows libpq's `sslmode` and `sslrootcert` (module `pg_tls` below).
#[cfg(feature = "postgres")]
pub struct PgDecisions {
    client: postgres::Client,
}

#[cfg(feature = "postgres")]
impl PgDecisions {
    /// Connects and creates the table if needed.
    pub fn connect(conn: &str) -> Result<Self, PgError> {
        let mut client = pg_tls::Target::parse(conn)?.connect()?;
        // An advisory lock serializes table creation among TTP processes
        // starting at once (CREATE TABLE IF NOT EXISTS alone can race).
        client
            .batch_execute(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(73617765);
                 CREATE TABLE IF NOT EXISTS tenet_decisions (
                     exchange BYTEA PRIMARY KEY,
                     kind SMALLINT NOT NULL,
                     admission BYTEA NOT NULL,
                     decided_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 COMMIT;",
            )
            .map_err(PgError::Server)?;
        Ok(Self { client })
    }

    /// Number of decisions kept.
    pub fn count(&mut self) -> Result<u64, postgres::Error> {
        let row = self
            .client
            .query_one("SELECT COUNT(*) FROM tenet_decisions", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn stored(&mut self, key: &[u8]) -> Result<Option<Admission>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT admission FROM tenet_decisions WHERE exchange = $1",
                &[&key],
            )
            .map_err(database)?;
        rows.first()
            .map(|r| Admission::decode(r.get::<_, &[u8]>(0)).map_err(StoreError::Unreadable))
            .transpose()
    }
}

#[cfg(feature = "postgres")]
impl DecisionStore for PgDecisions {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, StoreError> {
        let key: &[u8] = &id.0;
        if let Some(a) = self.stored(key)? {
            return Ok(a);
        }
        let a = make();
        let kind: i16 = match a.kind {
            msg::Kind::Resolve => 1,
            msg::Kind::Abort => 2,
        };
        // The primary key makes the first insert win; a concurrent loser
        // reads the winner's admission.
        self.client
            .execute(
                "INSERT INTO tenet_decisions (exchange, kind, admission) VALUES ($1, $2, $3) \
                 ON CONFLICT (exchange) DO NOTHING",
                &[&key, &kind, &a.to_bytes()],
            )
            .map_err(database)?;
        self.stored(key)?.ok_or(StoreError::Vanished)
    }
}

/// Why the PostgreSQL decision store cannot be used: its connection string,
/// its TLS settings, or the server.
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A key/value connection string has `=` with no keyword before it.
    #[error("PostgreSQL connection string: `=` without a keyword before it")]
    NoKeyword,
    /// A keyword is not followed by `= value`.
    #[error("PostgreSQL connection string: `{0}` without `= value`")]
    NoEquals(String),
    /// A quoted value has no closing quote.
    #[error("PostgreSQL connection string: the value of `{0}` has no closing quote")]
    UnclosedQuote(String),
    /// A keyword's value is empty.
    #[error("PostgreSQL connection string: `{0}` without a value")]
    NoValue(String),
    /// A URL's query parameter has no `=`.
    #[error("PostgreSQL connection URL: parameter `{0}` without `=`")]
    UrlParameter(String),
    /// A URL's query parameter, percent-decoded, is not UTF-8.
    #[error("PostgreSQL connection URL: a parameter is not UTF-8")]
    UrlNotUtf8,
    /// The rest of the connection string, as tokio-postgres reads it, is
    /// malformed.
    #[error("PostgreSQL connection string: {0}")]
    Config(postgres::Error),
    /// `sslmode=allow`, which this client does not support.
    #[error(
        "PostgreSQL: sslmode=allow is not supported; \
         use prefer, require or (to check the server) verify-full"
    )]
    ModeAllow,
    /// An `sslmode` libpq does not know.
    #[error(
        "PostgreSQL: sslmode={0}: expected disable, prefer, require, \
         verify-ca or verify-full"
    )]
    UnknownMode(String),
    /// `sslrootcert=system`: there are no system roots here.
    #[error(
        "PostgreSQL: sslrootcert=system is not supported; \
         name the file of the root certificate (PEM)"
    )]
    SystemRoots,
    /// `verify-ca` or `verify-full` (the mode named) without `sslrootcert`.
    #[error(
        "PostgreSQL: sslmode={0} needs sslrootcert=FILE, the root certificate \
         (PEM) the server's certificate must chain to"
    )]
    NoRoots(&'static str),
    /// The `sslrootcert` file cannot be read.
    #[error("PostgreSQL: sslrootcert {}: {error}", path.display())]
    RootsRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The `sslrootcert` file is not PEM.
    #[error("PostgreSQL: sslrootcert {}: {error}", path.display())]
    RootsPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls::pki_types::pem::Error,
    },
    /// A certificate in the `sslrootcert` file cannot be a root.
    #[error(
        "PostgreSQL: sslrootcert {}: not a usable certificate ({})",
        path.display(),
        pg_tls::unusable(error)
    )]
    RootUnusable {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
    /// The `sslrootcert` file holds no certificate.
    #[error(
        "PostgreSQL: sslrootcert {}: no certificate in the file \
         (PEM, \"-----BEGIN CERTIFICATE-----\")",
        path.display()
    )]
    RootsEmpty {
        /// The file.
        path: PathBuf,
    },
    /// rustls cannot make the TLS configuration.
    #[error("PostgreSQL: TLS: {0}")]
    Tls(rustls::Error),
    /// The server's TLS certificate does not pass the check the mode asks
    /// for, against the `sslrootcert` file.
    #[error(
        "PostgreSQL: the server's TLS certificate is refused: {}: {cause}",
        pg_tls::refused_because(cause, root)
    )]
    CertificateRefused {
        /// The `sslrootcert` file.
        root: PathBuf,
        /// What was wrong with the certificate.
        cause: rustls::CertificateError,
    },
    /// The connection or the server failed; the server's message when it
    /// sent one.
    #[error("PostgreSQL: {}", pg_tls::server_text(.0))]
    Server(postgres::Error),
}

/// TLS on the link to PostgreSQL, with libpq's `sslmode` and `sslrootcert`,
/// through rustls (ring; no OpenSSL).
///
/// tokio-postgres reads `sslmode` `disable`, `prefer` and `require` only,
/// and no `sslrootcert`. This module takes both out of the connection
/// string, gives tokio-postgres the rest, and connects through a rustls
/// connector that checks what the mode asks for:
///
/// | `sslmode`          | TLS                   | the server's certificate                         |
/// |--------------------|-----------------------|--------------------------------------------------|
/// | `disable`          | never                 | -                                                |
/// | `prefer` (default) | if the server has it  | chains to `sslrootcert` if one is named          |
/// | `require`          | always                | chains to `sslrootcert` if one is named          |
/// | `verify-ca`        | always                | chains to `sslrootcert`, which must be named     |
/// | `verify-full`      | always                | the same, and names `host`                       |
///
/// As in libpq, `require` with a root certificate checks as `verify-ca`
/// does, `verify-full` checks `host` (a DNS name or an IP address, against
/// the certificate's subjectAltName) also when `hostaddr` gives the
/// address, and `sslmode` does not apply over a Unix socket. Without a root
/// certificate, `prefer` and `require` encrypt but do not authenticate the
/// server (a warning says so).
///
/// Where libpq is more lenient, this fails closed:
/// - `sslrootcert` has no default file (libpq reads `~/.postgresql/root.crt`),
///   and a named file that is missing, unreadable or holds no usable
///   certificate is an error in every mode; `sslrootcert=system` is refused
///   (no system roots here);
/// - `sslmode=allow` is refused;
/// - a handshake that fails under `prefer` is an error, never a retry
///   without TLS;
/// - TLS 1.3 only (any PostgreSQL from 12 on, built with OpenSSL 1.1.1 or
///   later).
///
/// The client offers the ALPN protocol `postgresql`, as libpq 17 does, so
/// `sslnegotiation=direct` works too.
#[cfg(feature = "postgres")]
mod pg_tls {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use postgres::config::{Host, SslMode};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tokio_postgres_rustls::MakeRustlsConnect;
    use tracing::warn;

    use super::PgError;

    /// libpq's `sslmode`, less `allow`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Mode {
        Disable,
        Prefer,
        Require,
        VerifyCa,
        VerifyFull,
    }

    impl Mode {
        fn parse(s: &str) -> Result<Self, PgError> {
            Ok(match s {
                "disable" => Self::Disable,
                "prefer" => Self::Prefer,
                "require" => Self::Require,
                "verify-ca" => Self::VerifyCa,
                "verify-full" => Self::VerifyFull,
                "allow" => return Err(PgError::ModeAllow),
                other => return Err(PgError::UnknownMode(other.to_owned())),
            })
        }

        fn name(self) -> &'static str {
            match self {
                Self::Disable => "disable",
                Self::Prefer => "prefer",
                Self::Require => "require",
                Self::VerifyCa => "verify-ca",
                Self::VerifyFull => "verify-full",
            }
        }
    }

    /// A connection string read: what tokio-postgres connects with, and the
    /// TLS the link needs.
    pub(super) struct Target {
        config: postgres::Config,
        /// The mode asked for.
        pub(super) mode: Mode,
        /// Some host is reached over TCP (else `sslmode` does not apply).
        pub(super) tcp: bool,
        /// The `sslrootcert` file and its certificates.
        pub(super) roots: Option<(PathBuf, Arc<RootCertStore>)>,
    }

    impl Target {
        /// Reads a libpq connection string (key/value pairs or a URL).
        pub(super) fn parse(conn: &str) -> Result<Self, PgError> {
            let split = split(conn)?;
            let mode = split
                .sslmode
                .as_deref()
                .map(Mode::parse)
                .transpose()?
                .unwrap_or(Mode::Prefer);
            let roots = match split.sslrootcert.as_deref() {
                None | Some("") => None,
                Some("system") => return Err(PgError::SystemRoots),
                Some(file) => {
                    let path = PathBuf::from(file);
                    let roots = load_roots(&path)?;
                    Some((path, Arc::new(roots)))
                }
            };
            if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) && roots.is_none() {
                return Err(PgError::NoRoots(mode.name()));
            }
            let mut config: postgres::Config = split.rest.parse().map_err(PgError::Config)?;
            let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)))
                || !config.get_hostaddrs().is_empty();
            config.ssl_mode(match mode {
                _ if !tcp => SslMode::Disable,
                Mode::Disable => SslMode::Disable,
                Mode::Prefer => SslMode::Prefer,
                Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
            });
            Ok(Self {
                config,
                mode,
                tcp,
                roots,
            })
        }

        /// Connects, through TLS as the mode asks.
        pub(super) fn connect(&self) -> Result<postgres::Client, PgError> {
            if !self.tcp || self.mode == Mode::Disable {
                if self.tcp {
                    warn!("PostgreSQL over TCP without TLS (sslmode=disable)");
                }
                return self
                    .config
                    .connect(postgres::NoTls)
                    .map_err(PgError::Server);
            }
            if self.roots.is_none() {
                warn!(
                    sslmode = self.mode.name(),
                    "PostgreSQL: the server's certificate is not checked (no sslrootcert), \
                     so whoever is on the path can pose as the database; \
                     set sslmode=verify-full and sslrootcert=FILE"
                );
            }
            self.config
                .connect(MakeRustlsConnect::new(self.tls_config()?))
                .map_err(|e| self.explain(e))
        }

        fn tls_config(&self) -> Result<rustls::ClientConfig, PgError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = ServerVerifier {
                roots: self.roots.as_ref().map(|(_, r)| r.clone()),
                check_name: self.mode == Mode::VerifyFull,
                algs: provider.signature_verification_algorithms,
            };
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(PgError::Tls)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            Ok(config)
        }

        /// The error, saying why the server's certificate was refused when
        /// that is the cause.
        fn explain(&self, e: postgres::Error) -> PgError {
            let refused = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match (refused, &self.roots) {
                (Some(rustls::Error::InvalidCertificate(cause)), Some((root, _))) => {
                    PgError::CertificateRefused {
                        root: root.clone(),
                        cause: cause.clone(),
                    }
                }
                _ => PgError::Server(e),
            }
        }
    }

    /// Why the server's certificate was refused, in the words of the check
    /// that refused it.
    pub(super) fn refused_because(cause: &CertificateError, root: &Path) -> String {
        match cause {
            CertificateError::UnknownIssuer => {
                format!(
                    "it does not chain to the root certificate in {}",
                    root.display()
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "it does not name the host (sslmode=verify-full)".to_owned()
            }
            _ => format!("checked against the root certificate in {}", root.display()),
        }
    }

    /// A PostgreSQL error as one line: the server's message when it sent
    /// one.
    pub(super) fn server_text(e: &postgres::Error) -> String {
        match e.as_db_error() {
            Some(d) => format!("{}: {}", d.severity(), d.message()),
            None => e.to_string(),
        }
    }

    /// Why a certificate cannot be a root: the certificate's fault without
    /// rustls's "invalid peer certificate" around it.
    pub(super) fn unusable(e: &rustls::Error) -> String {
        match e {
            rustls::Error::InvalidCertificate(c) => c.to_string(),
            other => other.to_string(),
        }
    }

    /// The certificates of a root certificate file (PEM), at least one.
    fn load_roots(path: &Path) -> Result<RootCertStore, PgError> {
        let pem = std::fs::read(path).map_err(|error| PgError::RootsRead {
            path: path.to_owned(),
            error,
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|error| PgError::RootsPem {
                path: path.to_owned(),
                error,
            })?;
            roots.add(cert).map_err(|error| PgError::RootUnusable {
                path: path.to_owned(),
                error,
            })?;
        }
        if roots.is_empty() {
            return Err(PgError::RootsEmpty {
                path: path.to_owned(),
            });
        }
        Ok(roots)
    }

    /// Checks the server's certificate as the mode asks: with roots, the
    /// chain to them (validity, key usage) and, for `verify-full`, the host
    /// name; without roots, nothing (libpq's `prefer` and `require`). The
    /// handshake's signature is checked in every case, so the server holds
    /// the key of the certificate it sent (which channel binding relies
    /// on).
    #[derive(Debug)]
    struct ServerVerifier {
        roots: Option<Arc<RootCertStore>>,
        check_name: bool,
        algs: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for ServerVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let Some(roots) = &self.roots else {
                return Ok(ServerCertVerified::assertion());
            };
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algs.all,
            )?;
            if self.check_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    }

    /// A connection string without its `sslmode` and `sslrootcert` (the
    /// last of each wins, as for every key).
    #[derive(Debug, Default, PartialEq, Eq)]
    pub(super) struct Split {
        pub(super) rest: String,
        pub(super) sslmode: Option<String>,
        pub(super) sslrootcert: Option<String>,
    }

    pub(super) fn split(conn: &str) -> Result<Split, PgError> {
        for prefix in ["postgresql://", "postgres://"] {
            if let Some(rest) = conn.strip_prefix(prefix) {
                return split_url(prefix, rest);
            }
        }
        split_key_values(conn)
    }

    /// `key = value ...`, values bare or in single quotes, `\` escaping
    /// the next character (libpq's rules, as tokio-postgres reads them).
    fn split_key_values(conn: &str) -> Result<Split, PgError> {
        let mut out = Split::default();
        let mut kept = Vec::new();
        let mut it = conn.chars().peekable();
        let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            while it.next_if(|c| c.is_whitespace()).is_some() {}
        };
        loop {
            skip_ws(&mut it);
            let mut key = String::new();
            while let Some(c) = it.next_if(|&c| !c.is_whitespace() && c != '=') {
                key.push(c);
            }
            if key.is_empty() {
                if it.peek().is_some() {
                    return Err(PgError::NoKeyword);
                }
                break;
            }
            skip_ws(&mut it);
            if it.next() != Some('=') {
                return Err(PgError::NoEquals(key));
            }
            skip_ws(&mut it);
            let mut value = String::new();
            if it.next_if_eq(&'\'').is_some() {
                loop {
                    match it.next() {
                        Some('\'') => break,
                        Some('\\') => value.extend(it.next()),
                        Some(c) => value.push(c),
                        None => return Err(PgError::UnclosedQuote(key)),
                    }
                }
            } else {
                while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                    match c {
                        '\\' => value.extend(it.next()),
                        c => value.push(c),
                    }
                }
                if value.is_empty() {
                    return Err(PgError::NoValue(key));
                }
            }
            match key.as_str() {
                "sslmode" => out.sslmode = Some(value),
                "sslrootcert" => out.sslrootcert = Some(value),
                _ => {
                    let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
                    kept.push(format!("{key}='{quoted}'"));
                }
            }
        }
        out.rest = kept.join(" ");
        Ok(out)
    }

    /// `postgresql://[user[:password]@][hosts][/dbname][?key=value&...]`,
    /// split as tokio-postgres does: the credentials end at the first `@`,
    /// the parameters start at the next `?`, keys and values are
    /// percent-encoded.
    fn split_url(prefix: &str, url: &str) -> Result<Split, PgError> {
        let mut out = Split::default();
        let after_credentials = url.find('@').map_or(0, |i| i + 1);
        let Some(q) = url[after_credentials..]
            .find('?')
            .map(|i| i + after_credentials)
        else {
            out.rest = format!("{prefix}{url}");
            return Ok(out);
        };
        let mut kept = Vec::new();
        for param in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = param.split_once('=') else {
                return Err(PgError::UrlParameter(param.to_owned()));
            };
            match percent_decode(key)?.as_str() {
                "sslmode" => out.sslmode = Some(percent_decode(value)?),
                "sslrootcert" => out.sslrootcert = Some(percent_decode(value)?),
                _ => kept.push(param),
            }
        }
        let query = match kept.is_empty() {
            true => String::new(),
            false => format!("?{}", kept.join("&")),
        };
        out.rest = format!("{prefix}{}{query}", &url[..q]);
        Ok(out)
    }

    /// `%XX` to its byte; a `%` not followed by two hex digits stays.
    fn percent_decode(s: &str) -> Result<String, PgError> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            match (b[i], hex) {
                (b'%', Some(&[hi, lo])) => {
                    out.push(hex_digit(hi) << 4 | hex_digit(lo));
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| PgError::UrlNotUtf8)
    }

    /// The value of an ASCII hex digit (checked by the caller).
    fn hex_digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        }
    }
}

/// Why the TTP cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TtpError {
    /// A key or certificate file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key, certificate or CA is unusable.
    #[error("{0}")]
    Keys(VerifyError),
    /// The SQLite decision store cannot be opened.
    #[error("{0}")]
    Sqlite(SqliteOpenError),
    /// The PostgreSQL decision store cannot be used.
    #[cfg(feature = "postgres")]
    #[error("{0}")]
    Postgres(PgError),
}

/// The TTP service: the host entity's answers to recovery requests.
pub struct TtpService {
    crypto: KeyCrypto,
    store: Box<dyn DecisionStore + Send>,
}

impl TtpService {
    /// Opens the TTP's keys and decision store from the config (`[ttp]`;
    /// the SQLite default is `STATE_DIR/ttp.sqlite`). Opening the store
    /// may block (a PostgreSQL client runs its own runtime): call it off
    /// the async workers.
    pub fn open(cfg: &TtpSection, state_dir: &Path) -> Result<Self, TtpError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TtpError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let crypto = KeyCrypto::from_pem(&read(&cfg.key)?, &read(&cfg.cert)?, &read(&cfg.ca)?)
            .map_err(TtpError::Keys)?;
        #[cfg(feature = "postgres")]
        if let Some(conn) = &cfg.postgres {
            let store = PgDecisions::connect(conn).map_err(TtpError::Postgres)?;
            info!("TTP decisions in PostgreSQL");
            return Ok(Self {
                crypto,
                store: Box::new(store),
            });
        }
        let db = cfg
            .database
            .clone()
            .unwrap_or_else(|| state_dir.join("ttp.sqlite"));
        let store = SqliteDecisions::open(&db).map_err(TtpError::Sqlite)?;
        info!(database = %db.display(), "TTP decisions in SQLite");
        Ok(Self {
            crypto,
            store: Box::new(store),
        })
    }
}

/// Requests waiting for a decision over all domains, in units of the bound
/// of one domain: a flood from many domains (a certificate naming many, a
/// broker without per-host permissions) is refused as busy beyond it.
pub const TOTAL_WAITING_DOMAINS: usize = 4;

impl EntityService for TtpService {
    fn name(&self) -> &str {
        "TTP"
    }

    fn mtypes(&self) -> Vec<Mtype> {
        vec![msg::RECOVERY_REQUEST]
    }

    /// The TTP thread: decides the recovery requests sent to the host
    /// entity, one domain's at a time in turn.
    ///
    /// Requests come from the routing side through a hand-off channel
    /// bounded by `dispatch.per_destination` (beyond it routing refuses
    /// them as busy). Before each decision the thread moves everything that
    /// arrived during the last one into its domain's queue, so the
    /// channel's order never decides who waits: a request that arrived
    /// during a decision is decided after at most one request of each other
    /// domain.
    fn run(self: Box<Self>, rx: Receiver<Message>, host: HostSender) {
        let Self {
            mut crypto,
            mut store,
        } = *self;
        let me = host.id();
        // Each domain may have as many requests waiting as any reader of the
        // dispatch table; so many also fill the hand-off channel.
        let per_destination = host.per_destination();
        // However many domains flood at once, at most this many wait in all.
        let mut queue =
            FairQueue::with_total(per_destination, TOTAL_WAITING_DOMAINS * per_destination);
        loop {
            let first = match queue.is_empty() {
                true => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
                false => None,
            };
            let arrived = first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()).take(per_destination));
            let mut busy = Vec::new();
            for m in arrived {
                if let Err(full) = queue.push(m.src().domain(), m) {
                    busy.push(full);
                }
            }
            if !busy.is_empty() {
                refuse_busy(&host, me, busy);
            }
            let Some((_, m)) = queue.pop() else { continue };
            let decided = decide(&mut crypto, store.as_mut(), &m);
            host.count(match &decided {
                Ok(a) if a.kind == Kind::Resolve => "admission_resolve",
                Ok(_) => "admission_abort",
                Err(_) => "refused",
            });
            host.send([reply(me, &m, decided)]);
        }
    }
}

/// Tells the senders of requests beyond their domain's bound that the TTP
/// is busy, and counts them.
fn refuse_busy(host: &HostSender, me: EntityId, refused: Vec<Full<Message>>) {
    host.count_busy(refused.len() as u64);
    let mut domains = std::collections::BTreeMap::<_, u64>::new();
    for full in &refused {
        *domains.entry((full.domain, full.bound)).or_default() += 1;
    }
    for ((domain, bound), n) in domains {
        warn!(
            %domain,
            refused = n,
            bound,
            "TTP busy: recovery requests beyond their domain's queue, or all queues together, refused"
        );
    }
    host.send(refused.into_iter().map(|full| {
        let src = full.request.src();
        let text = format!("the TTP is busy: {full}; ask again later");
        Message::new(
            me,
            src,
            Mtype::REFUSED,
            Refused {
                mtype: msg::RECOVERY_REQUEST,
                text,
            }
            .to_bytes(),
        )
    }));
}

/// Why a recovery request gets no admission; its text is the `refused`
/// notice's.
#[derive(Debug, thiserror::Error)]
enum NoAdmission {
    /// The request cannot be decoded.
    #[error("malformed recovery request: {0}")]
    Malformed(tenet_proto::DecodeError),
    /// The TTP refused it, or could not decide.
    #[error(transparent)]
    Refused(#[from] tenet_voucher::ttp::TtpError),
}

/// The TTP's answer to the request `m`: an admission, or a `refused` notice
/// saying why. The service's decision, without its queue (a simulator
/// calls it directly).
pub fn answer(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    me: EntityId,
    m: &Message,
) -> Message {
    reply(me, m, decide(crypto, store, m))
}

/// The TTP's decision about the request `m`.
fn decide(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    m: &Message,
) -> Result<Admission, NoAdmission> {
    RecoveryRequest::decode(&m.param)
        .map_err(NoAdmission::Malformed)
        .and_then(|req| Ok(handle_request(crypto, store, m.src(), &req)?))
}

/// The message that tells the requester of `m` the decision, logged.
fn reply(me: EntityId, m: &Message, decided: Result<Admission, NoAdmission>) -> Message {
    match decided {
        Ok(a) => {
            info!(exchange = %a.id, kind = ?a.kind, requester = %m.src(), "TTP admission");
            Message::new(me, m.src(), msg::ADMISSION, a.to_bytes())
        }
        Err(e) => {
            let text = e.to_string();
            warn!(requester = %m.src(), %text, "recovery request refused");
            Message::new(
                me,
                m.src(),
                Mtype::REFUSED,
                Refused {
                    mtype: msg::RECOVERY_REQUEST,
                    text,
                }
                .to_bytes(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(kind: Kind, n: u8) -> Admission {
        Admission {
            kind,
            id: ExchangeId([1; 32]),
            signature: vec![n; 8],
            certificate: vec![0x30],
        }
    }

    #[test]
    fn one_decision_per_exchange_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ttp.sqlite");
        let id = ExchangeId([1; 32]);
        let first = SqliteDecisions::open(&db)
            .unwrap()
            .decide(&id, &mut || admission(Kind::Abort, 1))
            .unwrap();
        let mut again = SqliteDecisions::open(&db).unwrap();
        let second = again
            .decide(&id, &mut || admission(Kind::Resolve, 2))
            .unwrap();
        assert_eq!(first, second, "the first decision stands, byte for byte");
        assert_eq!(second.kind, Kind::Abort);
        assert_eq!(again.count().unwrap(), 1);
    }

    #[test]
    fn concurrent_requests_for_one_exchange_yield_one_decision() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ttp.sqlite");
        SqliteDecisions::open(&db).unwrap();
        let handles: Vec<_> = (0..8u8)
            .map(|n| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let kind = if n % 2 == 0 {
                        Kind::Resolve
                    } else {
                        Kind::Abort
                    };
                    let mut s = SqliteDecisions::open(&db).unwrap();
                    s.decide(&ExchangeId([1; 32]), &mut || admission(kind, n))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        assert_eq!(SqliteDecisions::open(&db).unwrap().count().unwrap(), 1);
    }
}

/// Against a real PostgreSQL named by `TENET_TEST_POSTGRES` (the test
/// command starts one).
#[cfg(all(test, feature = "postgres"))]
mod pg_tests {
    use super::*;

    fn conn() -> String {
        std::env::var("TENET_TEST_POSTGRES")
            .expect("TENET_TEST_POSTGRES names the test PostgreSQL (scripts/test.sh starts one)")
    }

    fn fresh_id() -> ExchangeId {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).unwrap();
        ExchangeId(b)
    }

    fn admission(id: ExchangeId, kind: Kind, n: u8) -> Admission {
        Admission {
            kind,
            id,
            signature: vec![n; 8],
            certificate: vec![0x30],
        }
    }

    #[test]
    fn postgres_keeps_one_decision_across_connections() {
        let id = fresh_id();
        let first = PgDecisions::connect(&conn())
            .unwrap()
            .decide(&id, &mut || admission(id, Kind::Resolve, 1))
            .unwrap();
        let second = PgDecisions::connect(&conn())
            .unwrap()
            .decide(&id, &mut || admission(id, Kind::Abort, 2))
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(second.kind, Kind::Resolve);
    }

    #[test]
    fn concurrent_postgres_clients_yield_one_decision() {
        let id = fresh_id();
        let handles: Vec<_> = (0..8u8)
            .map(|n| {
                let c = conn();
                std::thread::spawn(move || {
                    let kind = if n % 2 == 0 {
                        Kind::Resolve
                    } else {
                        Kind::Abort
                    };
                    PgDecisions::connect(&c)
                        .unwrap()
                        .decide(&id, &mut || admission(id, kind, n))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        let mut c = postgres::Client::connect(&conn(), postgres::NoTls).unwrap();
        let n: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM tenet_decisions WHERE exchange = $1",
                &[&&id.0[..]],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}

/// Reading libpq's TLS keys out of connection strings (no server needed).
#[cfg(all(test, feature = "postgres"))]
mod pg_tls_tests {
    use super::pg_tls::{Split, Target, split};

    #[test]
    fn key_values_lose_the_tls_keys_and_keep_the_rest_quoted() {
        let s = split(concat!(
            r"host=db.example port = 5433 sslmode=require password='it\'s a \\ secret' ",
            r"sslrootcert='/etc/tenet/pg root.pem' sslmode=verify-full",
        ))
        .unwrap();
        assert_eq!(
            s.sslmode.as_deref(),
            Some("verify-full"),
            "the last one wins"
        );
        assert_eq!(s.sslrootcert.as_deref(), Some("/etc/tenet/pg root.pem"));
        assert_eq!(
            s.rest,
            r"host='db.example' port='5433' password='it\'s a \\ secret'"
        );
        let c: postgres::Config = s.rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&br"it's a \ secret"[..]));
    }

    #[test]
    fn urls_lose_the_tls_parameters_and_keep_the_rest_as_written() {
        let s = split(
            "postgresql://ttp:p%3Fw@db.example:5433/tenet?sslmode=verify-full\
             &sslrootcert=%2Fetc%2Ftenet%2Froot.pem&application_name=ttp",
        )
        .unwrap();
        assert_eq!(
            s,
            Split {
                rest: "postgresql://ttp:p%3Fw@db.example:5433/tenet?application_name=ttp".into(),
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/tenet/root.pem".into()),
            }
        );
        let plain = "postgres://db.example/tenet";
        assert_eq!(split(plain).unwrap().rest, plain);
        let only_tls = split("postgres://db.example/tenet?sslmode=disable").unwrap();
        assert_eq!(only_tls.rest, plain);
    }

    #[test]
    fn malformed_strings_and_modes_are_refused_with_their_cause() {
        let refused = |conn: &str| match Target::parse(conn) {
            Ok(_) => panic!("accepted {conn}"),
            Err(e) => e.to_string(),
        };
        assert!(refused("host=x port").contains("`port` without `= value`"));
        assert!(refused("host='x").contains("no closing quote"));
        assert!(refused("sslmode=allow host=x").contains("sslmode=allow is not supported"));
        assert!(refused("sslmode=verify host=x").contains("expected disable, prefer"));
        assert!(refused("sslrootcert=system host=x").contains("sslrootcert=system"));
        assert!(
            refused("host=x sslmode=verify-full").contains("sslmode=verify-full needs sslrootcert")
        );
    }

    #[test]
    fn sslmode_does_not_apply_over_a_unix_socket() {
        let t = Target::parse("host=/run/postgresql sslmode=require").unwrap();
        assert!(!t.tcp);
        let t = Target::parse("host=/run/postgresql,db.example sslmode=require").unwrap();
        assert!(t.tcp);
    }
}
