//! The relay's TLS identity: loaded from disk, or generated self-signed on
//! first start and kept in the data directory so its fingerprint (which
//! clients pin) survives restarts.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{io_at, RelayError, Result};

/// A certificate and its private key.
pub struct Identity {
    /// DER certificate.
    pub cert: CertificateDer<'static>,
    /// DER PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "fingerprint",
                &hex::encode(crate::client::pin::fingerprint(&self.cert)),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Loads the identity, generating and saving it if both files are missing.
/// With `own_files` (the default paths in the data dir, which only the
/// relay writes), a key without its certificate is a first start cut short
/// (the certificate is written after the key, and the relay serves only
/// once both exist): nobody can have pinned it, so both are made again.
pub fn load_or_generate(cert_path: &Path, key_path: &Path, own_files: bool) -> Result<Identity> {
    if own_files && !cert_path.exists() && key_path.exists() {
        tracing::warn!("key without certificate (a first start cut short): generating both again");
        std::fs::remove_file(key_path)?;
    }
    if !cert_path.exists() && !key_path.exists() {
        let ck = rcgen::generate_simple_self_signed(vec!["sotto-relay".to_owned()])
            .map_err(|e| RelayError::Config(format!("certificate generation: {e}")))?;
        if let Some(dir) = key_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_at(dir.display()))?;
        }
        write_private(key_path, &ck.key_pair.serialize_der())?;
        write_synced(cert_path, ck.cert.der())?;
        for dir in [key_path.parent(), cert_path.parent()]
            .into_iter()
            .flatten()
        {
            sync_dir(dir)?;
        }
        tracing::info!("generated a new self-signed relay certificate");
    }
    let cert = std::fs::read(cert_path).map_err(io_at(cert_path.display()))?;
    let key = zeroize::Zeroizing::new(std::fs::read(key_path).map_err(io_at(key_path.display()))?);
    Ok(Identity {
        cert: parse_cert(&cert, cert_path)?,
        key: parse_key(&key, key_path)?,
    })
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"))
}

/// A certificate in DER, or the first one of a PEM file (a certbot
/// `fullchain.pem` starts with the relay's own).
fn parse_cert(bytes: &[u8], path: &Path) -> Result<CertificateDer<'static>> {
    if !is_pem(bytes) {
        return Ok(CertificateDer::from(bytes.to_vec()));
    }
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(bytes)
        .next()
        .and_then(|c| c.ok())
        .ok_or_else(|| RelayError::Config(format!("{}: no PEM certificate in it", path.display())))
}

/// A private key in DER PKCS#8, or PEM (PKCS#8, PKCS#1 or SEC1).
fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>> {
    if !is_pem(bytes) {
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            bytes.to_vec(),
        )));
    }
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(bytes)
        .map_err(|_| RelayError::Config(format!("{}: no PEM private key in it", path.display())))
}

/// Loads the 32-byte stateless-reset key, generating it on first start.
///
/// QUIC lets a server that lost a connection's state (a restart) tell the
/// client at once with a stateless reset, but only if the reset token comes
/// from the same key as before: keeping it in the data dir lets clients of a
/// crashed relay notice on their next packet instead of at the idle timeout.
pub fn load_or_generate_reset_key(path: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    // Empty: created but cut short before its contents were synced (any
    // key will do; only the stateless resets of the last process are lost).
    if path.exists() && std::fs::metadata(path)?.len() == 0 {
        std::fs::remove_file(path)?;
    }
    if !path.exists() {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.as_mut());
        write_private(path, key.as_ref())?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(io_at(path.display()))?);
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| RelayError::Config(format!("{} is not a 32-byte key", path.display())))?;
    Ok(zeroize::Zeroizing::new(key))
}

/// Makes a directory's entries durable (files created, renamed or removed
/// in it), which an fsync of the files themselves does not.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes a file and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn generated_once_then_reloaded_and_debug_redacts() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("c.der"), d.path().join("k.der"));
        let a = load_or_generate(&c, &k, true).unwrap();
        let b = load_or_generate(&c, &k, true).unwrap();
        assert_eq!(a.cert, b.cert);
        let dbg = format!("{a:?}");
        assert!(dbg.contains("redacted"));
        let PrivateKeyDer::Pkcs8(kd) = &a.key else {
            panic!()
        };
        assert!(!dbg.contains(&hex::encode(&kd.secret_pkcs8_der()[..16])));
    }

    #[test]
    fn a_first_start_cut_short_is_made_again_only_for_the_relays_own_files() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("c.der"), d.path().join("k.der"));
        std::fs::write(&k, b"half a first start").unwrap();
        assert!(
            load_or_generate(&c, &k, false).is_err(),
            "an operator's key is never deleted"
        );
        load_or_generate(&c, &k, true).unwrap();
        assert!(c.exists());
        let r = d.path().join("reset.key");
        std::fs::write(&r, b"").unwrap();
        assert_eq!(load_or_generate_reset_key(&r).unwrap().len(), 32);
    }

    /// certbot's files: a PEM `fullchain.pem` (the relay's certificate
    /// first, then the chain) and a PEM `privkey.pem`, in PKCS#8 or SEC1.
    #[test]
    fn pem_certificates_and_keys_load_as_certbot_writes_them() {
        let d = tempfile::tempdir().unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["relay.example".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        let (c, k) = (d.path().join("fullchain.pem"), d.path().join("privkey.pem"));
        std::fs::write(&c, format!("{}{}", leaf.cert.pem(), other.cert.pem())).unwrap();
        std::fs::write(&k, leaf.key_pair.serialize_pem()).unwrap();
        let id = load_or_generate(&c, &k, false).unwrap();
        assert_eq!(
            id.cert.as_ref(),
            leaf.cert.der().as_ref(),
            "the first certificate"
        );
        let PrivateKeyDer::Pkcs8(kd) = &id.key else {
            panic!("PKCS#8 expected")
        };
        assert_eq!(
            kd.secret_pkcs8_der(),
            leaf.key_pair.serialize_der().as_slice()
        );
        // A PEM file with no key in it is a typed configuration error.
        std::fs::write(&k, leaf.cert.pem()).unwrap();
        let e = load_or_generate(&c, &k, false).unwrap_err();
        assert!(e.to_string().contains("no PEM private key"), "{e}");
    }
}
