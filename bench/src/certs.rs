//! A benchmark's certificates: one CA in a directory of the run, a controller
//! certificate, and client settings for any role.

use std::path::Path;

use tern::client::ClientTls;
use tern::pki::{Pki, Role};

/// A benchmark's CA and the certificates issued from it.
#[derive(Debug)]
pub struct Certs {
    pki: Pki,
}

impl Certs {
    /// A CA, and a controller certificate valid for `sans`.
    pub fn new(dir: &Path, sans: &[&str]) -> anyhow::Result<Certs> {
        let pki = Pki::init(dir.join("pki"), 2)?;
        pki.issue(
            &Role::Controller {
                sans: sans.iter().map(|s| s.to_string()).collect(),
            },
            2,
        )?;
        Ok(Certs { pki })
    }

    /// Client settings of a role, its certificate issued on first use.
    pub fn tls(&self, role: &Role) -> anyhow::Result<ClientTls> {
        let files = self.pki.issue_once(role, 2)?;
        Ok(ClientTls {
            ca: Some(self.pki.ca_cert()),
            cert: Some(files.cert),
            key: Some(files.key),
            server_name: None,
            insecure: false,
        })
    }

    /// The CA, for roles the benchmark issues itself.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// `--ca`, `--cert` and `--key` of a controller.
    pub fn controller_args(&self) -> Vec<String> {
        let f = self.pki.files(&Role::Controller { sans: vec![] });
        vec![
            "--ca".into(),
            self.pki.ca_cert().display().to_string(),
            "--cert".into(),
            f.cert.display().to_string(),
            "--key".into(),
            f.key.display().to_string(),
        ]
    }
}
