//! Test certificate authorities and certificates for `127.0.0.1` / `localhost`, made with the
//! `openssl` command line tool (ECDSA P-256, valid for a day).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::process::scratch_dir;

/// A CA whose key signs server certificates.
pub struct TestCa {
    dir: PathBuf,
    /// The CA certificate (PEM), what clients trust.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl (apt-get install -y openssl)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestCa {
    /// A new CA named `name` in a fresh directory.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = scratch_dir(&format!("ca-{name}"))?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        Ok(Self {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            dir,
        })
    }

    /// A server certificate for `127.0.0.1` and `localhost` signed by this CA, written to
    /// `<stem>.pem` and `<stem>.key`; returns (certificate, key).
    pub fn issue(&self, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let ext = self.dir.join(format!("{stem}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        let (key, csr, cert) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &path(&self.cert)?,
                "-CAkey",
                &path(&self.key)?,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "1",
                "-extfile",
                &path(&ext)?,
            ],
        )?;
        Ok((self.dir.join(cert), self.dir.join(key)))
    }
}

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .context("non-UTF-8 scratch path")
}
