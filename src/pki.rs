//! Identities and certificates.
//!
//! Every connection to the controller is mutual TLS. Who the caller is comes from one
//! URI subject alternative name in its (verified) client certificate:
//!
//! | URI SAN                       | identity            | may                               |
//! |-------------------------------|---------------------|-----------------------------------|
//! | `spiffe://tern/admin`         | administrator       | everything                        |
//! | `spiffe://tern/viewer`        | read-only user      | read resources (never Secrets)    |
//! | `spiffe://tern/node/<name>`   | the agent of `name` | the sync stream of its own node   |
//! | `spiffe://tern/controller`    | a controller        | (server certificates)             |
//!
//! [`Pki`] creates a CA and issues these certificates (`ternctl certs`), using rcgen.
//! Keys are ECDSA P-256, written with mode 0600.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The URI scheme and trust domain of tern identities.
pub const SPIFFE_PREFIX: &str = "spiffe://tern/";

/// Who a client is, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Admin,
    Viewer,
    /// The agent of one node.
    Node(String),
    /// A controller (server certificate).
    Controller,
    /// A plaintext connection to a controller started with `--insecure`: no
    /// authentication, so no authorization either (everything is allowed).
    Insecure,
}

impl Identity {
    /// The URI SAN that carries this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Admin => format!("{SPIFFE_PREFIX}admin"),
            Identity::Viewer => format!("{SPIFFE_PREFIX}viewer"),
            Identity::Node(n) => format!("{SPIFFE_PREFIX}node/{n}"),
            Identity::Controller => format!("{SPIFFE_PREFIX}controller"),
            Identity::Insecure => "insecure".to_string(),
        }
    }

    /// Parse a URI SAN. None when it is not a tern identity.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        match rest {
            "admin" => Some(Identity::Admin),
            "viewer" => Some(Identity::Viewer),
            "controller" => Some(Identity::Controller),
            _ => {
                let name = rest.strip_prefix("node/")?;
                crate::model::check_name(name).ok()?;
                Some(Identity::Node(name.to_string()))
            }
        }
    }

    /// Read the identity from a DER certificate: exactly one tern URI SAN.
    pub fn from_der(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut found = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name
                    && let Some(id) = Identity::from_uri(uri)
                {
                    found.push(id);
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!(
                "the certificate has no {SPIFFE_PREFIX}... URI SAN naming a tern identity"
            )),
            _ => Err("the certificate names more than one tern identity".to_string()),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin => f.write_str("admin"),
            Identity::Viewer => f.write_str("viewer"),
            Identity::Node(n) => write!(f, "node/{n}"),
            Identity::Controller => f.write_str("controller"),
            Identity::Insecure => f.write_str("insecure"),
        }
    }
}

/// Errors of the certificate tooling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate authority on disk: `ca.pem` and `ca-key.pem` in a directory, and the
/// certificates it issued beside them.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A controller server certificate with these DNS names / IP addresses.
    Controller {
        sans: Vec<String>,
    },
    Admin,
    Viewer,
    Node(String),
}

impl Role {
    /// The file stem: `controller`, `admin`, `viewer`, `node-<name>`.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Controller { .. } => "controller".into(),
            Role::Admin => "admin".into(),
            Role::Viewer => "viewer".into(),
            Role::Node(n) => format!("node-{n}"),
        }
    }

    fn identity(&self) -> Identity {
        match self {
            Role::Controller { .. } => Identity::Controller,
            Role::Admin => Identity::Admin,
            Role::Viewer => Identity::Viewer,
            Role::Node(n) => Identity::Node(n.clone()),
        }
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    // Write to a temporary name and rename, so a reader never sees half a file. The
    // name is this write's own: two writers of one path (two issues of one role at
    // once) each rename a whole file of theirs, and neither loses its temporary file
    // to the other's rename.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl Pki {
    /// Open an existing CA directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Pki, PkiError> {
        let p = Pki { dir: dir.into() };
        for f in [p.ca_cert(), p.ca_key()] {
            if !f.exists() {
                return Err(PkiError::Invalid(format!(
                    "{} does not exist (run `ternctl certs init --dir {}` first)",
                    f.display(),
                    p.dir.display()
                )));
            }
        }
        Ok(p)
    }

    /// Create a new CA in `dir` (which must not hold one yet).
    pub fn init(dir: impl Into<PathBuf>, days: i64) -> Result<Pki, PkiError> {
        let p = Pki { dir: dir.into() };
        std::fs::create_dir_all(&p.dir).map_err(io_err(&p.dir))?;
        if p.ca_cert().exists() {
            return Err(PkiError::Invalid(format!(
                "{} already exists; refusing to overwrite a CA",
                p.ca_cert().display()
            )));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tern cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::days(days);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let cert = params.self_signed(&key)?;
        write_file(&p.ca_key(), &key.serialize_pem(), true)?;
        write_file(&p.ca_cert(), &cert.pem(), false)?;
        Ok(p)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// Paths a role's files are written to.
    pub fn files(&self, role: &Role) -> CertFiles {
        let stem = role.file_stem();
        CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        }
    }

    /// Issue a certificate for `role`, valid for `days`.
    pub fn issue(&self, role: &Role, days: i64) -> Result<CertFiles, PkiError> {
        self.issue_with(role, Validity::days(days), &self.files(role))
    }

    /// Issue a certificate for `role` unless its files exist. Callers in one process
    /// that ask for the same role at once get one key and certificate pair: without
    /// the lock, one could read the key of one issue with the certificate of another.
    pub fn issue_once(&self, role: &Role, days: i64) -> Result<CertFiles, PkiError> {
        static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
        let files = self.files(role);
        if files.cert.exists() && files.key.exists() {
            return Ok(files);
        }
        self.issue(role, days)
    }

    /// Issue with an explicit validity and file names (tests use it for expired
    /// certificates).
    pub fn issue_with(
        &self,
        role: &Role,
        validity: Validity,
        files: &CertFiles,
    ) -> Result<CertFiles, PkiError> {
        if let Role::Node(n) = role {
            crate::model::check_name(n)
                .map_err(|e| PkiError::Invalid(format!("node name: {e}")))?;
        }
        let ca_key_pem = std::fs::read_to_string(self.ca_key()).map_err(io_err(&self.ca_key()))?;
        let ca_pem = std::fs::read_to_string(self.ca_cert()).map_err(io_err(&self.ca_cert()))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let id = role.identity();
        params
            .distinguished_name
            .push(DnType::CommonName, id.to_string());
        params.subject_alt_names.push(SanType::URI(
            id.uri()
                .try_into()
                .map_err(|_| PkiError::Invalid(format!("{} is not a valid URI", id.uri())))?,
        ));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Role::Controller { sans } = role {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            for s in sans {
                let san = match s.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(s.clone().try_into().map_err(|_| {
                        PkiError::Invalid(format!("{s:?} is not a DNS name or IP address"))
                    })?),
                };
                params.subject_alt_names.push(san);
            }
        }
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&files.key, &key.serialize_pem(), true)?;
        write_file(&files.cert, &cert.pem(), false)?;
        Ok(files.clone())
    }
}

/// Read PEM certificates from a file.
pub fn read_certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject as _;
    let data = std::fs::read(path).map_err(io_err(path))?;
    let certs: Result<Vec<_>, _> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&data).collect();
    let certs =
        certs.map_err(|e| PkiError::Invalid(format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Read a PEM private key from a file.
pub fn read_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject as _;
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| PkiError::Invalid(format!("{}: no usable private key: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        for id in [
            Identity::Admin,
            Identity::Viewer,
            Identity::Controller,
            Identity::Node("kube-master".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        assert_eq!(Identity::from_uri("spiffe://other/admin"), None);
        assert_eq!(Identity::from_uri("spiffe://tern/node/Bad_Name"), None);
        assert_eq!(Identity::from_uri("spiffe://tern/root"), None);
    }

    #[test]
    fn issues_certificates_with_identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(dir.path().join("pki"), 365).expect("init");
        assert!(Pki::init(pki.dir(), 365).is_err(), "refuses to overwrite");
        let files = pki.issue(&Role::Node("n1".into()), 30).expect("issue");
        let der = read_certs(&files.cert).expect("read");
        assert_eq!(Identity::from_der(&der[0]), Ok(Identity::Node("n1".into())));
        read_key(&files.key).expect("key");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files.key)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = pki
            .issue(
                &Role::Controller {
                    sans: vec!["localhost".into(), "127.0.0.1".into()],
                },
                30,
            )
            .expect("controller");
        let der = read_certs(&c.cert).expect("read");
        assert_eq!(Identity::from_der(&der[0]), Ok(Identity::Controller));
        assert!(pki.issue(&Role::Node("Bad_Name".into()), 1).is_err());
    }

    /// Many callers asking for one role's certificate at once (agents and clients of a
    /// test starting together) all get the same, matching key and certificate, and no
    /// temporary file is left behind.
    #[test]
    fn concurrent_first_uses_of_a_role_get_one_matching_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(dir.path().join("pki"), 365).expect("init");
        let role = Role::Node("n1".into());
        let got: Vec<CertFiles> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| pki.issue_once(&role, 30).expect("issue")))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("no panic"))
                .collect()
        });
        assert!(got.iter().all(|f| *f == pki.files(&role)));
        let der = read_certs(&pki.files(&role).cert).expect("read");
        let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).expect("parse");
        let key_pem = std::fs::read_to_string(&pki.files(&role).key).expect("key");
        let key = KeyPair::from_pem(&key_pem).expect("key pair");
        assert_eq!(
            &*cert.public_key().subject_public_key.data,
            key.public_key_raw(),
            "the key is the certificate's"
        );
        // Writers of one path at once each rename a whole file of their own.
        let path = dir.path().join("file.pem");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || write_file(path, &format!("{i}\n").repeat(1000), false));
            }
        });
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.lines().all(|l| Some(l) == text.lines().next()),
            "one writer's whole file"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
