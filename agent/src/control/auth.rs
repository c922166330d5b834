//! Agent authentication, bbot's way (PROTOCOLS.md section 3; bbot ≥ 0.6):
//! the agent names its RSA key in every task request by `fingerprint`, the
//! lowercase hex SHA-256 of the public key's DER SubjectPublicKeyInfo, and
//! answers a task's `challenge` in the result request with the base64 raw
//! PKCS#1 v1.5 signature (type 1 padding, no digest prefix) of the
//! challenge's bytes: what `openssl rsautl -sign` (or `pkeyutl -sign`
//! without a digest) makes. The challenge is base64 (brep sends 64 random
//! bytes so); its decoded bytes are signed, as bbot does.
//!
//! The cryptography is the `rsa` crate's (RustCrypto), not ours.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};

/// A key or a signature that cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `--auth-key` cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--auth-key` is not a PEM RSA private key.
    #[error("{path}: not a PEM RSA private key (PKCS#8 or PKCS#1): {message}")]
    Parse {
        /// The key file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Signing failed (a challenge longer than the key allows, say).
    #[error("cannot sign the challenge: {0}")]
    Sign(String),
}

/// The agent's key (`--auth-key`).
#[derive(Debug, Clone)]
pub struct AgentKey {
    key: RsaPrivateKey,
    fingerprint: String,
}

/// Longest key file read (a 16384-bit PEM key is about 13 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

impl AgentKey {
    /// Reads a PEM RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA
    /// PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let read_err = |source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_KEY_FILE {
            return Err(AuthError::Parse {
                path: path.to_path_buf(),
                message: format!("{len} bytes, more than a key file holds"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::from_pem(text.trim()).map_err(|message| AuthError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses PEM text.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let key = RsaPrivateKey::from_pkcs8_pem(text).or_else(|e8| {
            RsaPrivateKey::from_pkcs1_pem(text).map_err(|e1| format!("{e8}; {e1}"))
        })?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| e.to_string())?;
        let fingerprint = hex(&Sha256::digest(der.as_bytes()));
        Ok(Self { key, fingerprint })
    }

    /// The bbot fingerprint of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The result request's `challenge`: the base64 signature of the
    /// challenge's bytes (the base64-decoded ones; a challenge that is not
    /// base64 is signed as its text).
    pub fn sign_challenge(&self, challenge: &str) -> Result<String, AuthError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = b64
            .decode(challenge.trim())
            .unwrap_or_else(|_| challenge.as_bytes().to_vec());
        let sig = self
            .key
            .sign(Pkcs1v15Sign::new_unprefixed(), &bytes)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        Ok(b64.encode(sig))
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
