//! Agent authentication as bbot ≥ 0.6 and brep do it (PROTOCOLS.md
//! section 3).
//!
//! The admin puts each trusted agent's RSA public key (PEM) in the
//! `--agent-keys` directory. An agent names its key by `fingerprint`, the
//! lowercase hex SHA-256 of the key's DER SubjectPublicKeyInfo. Each task
//! carries a fresh random `challenge`; the result must carry the base64 of
//! the raw PKCS#1 v1.5 (type 1) signature of the challenge, with no
//! DigestInfo prefix — what `openssl rsautl -sign` and `openssl pkeyutl
//! -sign` without `-digest` produce. That proves the result comes from the
//! agent the task was given to, not from whoever saw the session.
//!
//! The challenge is brep's: 64 random bytes (`openssl rand 64`), sent as
//! base64. bbot's manifests carry it as binary — the agent base64-decodes
//! the field and signs those 64 bytes. A signature of the field's text
//! itself (the literal reading of "the challenge bytes") is accepted too:
//! both are unpredictable values only the key's owner can sign, and an
//! agent written from either reading interoperates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256};

/// Random bytes in a challenge, as brep (`openssl rand 64`). 64 is also
/// the most `openssl pkeyutl -sign` takes without a digest.
const CHALLENGE_BYTES: usize = 64;
/// Smallest key accepted (PKCS#1 v1.5 itself needs the data + 11 bytes).
const MIN_KEY_BITS: usize = 2048;

/// What went wrong loading keys or checking a signature.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The keys directory cannot be read.
    #[error("--agent-keys {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file cannot be used.
    #[error("--agent-keys: {}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no key, which would lock every agent out.
    #[error("--agent-keys {}: no *.pem public keys in it", .0.display())]
    NoKeys(PathBuf),
    /// No randomness from the OS.
    #[error("cannot get random bytes: {0}")]
    Random(String),
    /// The result carries no signature.
    #[error("result carries no challenge signature")]
    Unsigned,
    /// The signature is not base64.
    #[error("challenge signature is not base64: {0}")]
    Encoding(String),
    /// The key the task was given to is no longer trusted.
    #[error("agent key {0} is no longer in --agent-keys")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("challenge signature does not verify against key {0}")]
    BadSignature(String),
}

/// A trusted agent key.
#[derive(Debug, Clone)]
pub struct AgentKey {
    /// Where it was read from (for logs).
    pub path: PathBuf,
    /// The key.
    pub key: RsaPublicKey,
}

/// The trusted keys by fingerprint.
#[derive(Debug, Clone, Default)]
pub struct AgentKeys {
    keys: HashMap<String, AgentKey>,
}

/// The bbot fingerprint of `key`.
pub fn fingerprint(key: &RsaPublicKey) -> Result<String, String> {
    let der = key.to_public_key_der().map_err(|e| e.to_string())?;
    Ok(hex(&Sha256::digest(der.as_bytes())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `n` random bytes as hex: sessions and challenges.
pub fn random_hex(n: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(hex(&buf))
}

/// A fresh challenge: base64 of [`CHALLENGE_BYTES`] random bytes.
pub fn new_challenge() -> Result<String, AuthError> {
    let mut buf = [0u8; CHALLENGE_BYTES];
    getrandom::getrandom(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

fn parse_key(path: &Path, text: &str) -> Result<RsaPublicKey, AuthError> {
    let key = RsaPublicKey::from_public_key_pem(text.trim())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(text.trim()))
        .map_err(|e| AuthError::Key {
            path: path.to_path_buf(),
            message: format!(
                "not an RSA public key in PEM ('BEGIN PUBLIC KEY' or 'BEGIN RSA PUBLIC KEY'): {e}"
            ),
        })?;
    let bits = key.size() * 8;
    if bits < MIN_KEY_BITS {
        return Err(AuthError::Key {
            path: path.to_path_buf(),
            message: format!("{bits}-bit key; at least {MIN_KEY_BITS} bits are needed"),
        });
    }
    Ok(key)
}

impl AgentKeys {
    /// Reads every `*.pem` file in `dir`. A file that is not a usable key
    /// is an error: silently skipping it would lock its agent out with
    /// nothing in the log to say why.
    pub fn load(dir: &Path) -> Result<Self, AuthError> {
        let dir_err = |source| AuthError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        let mut keys = HashMap::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(dir_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| AuthError::Key {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let key = parse_key(&path, &text)?;
            let fp = fingerprint(&key).map_err(|message| AuthError::Key {
                path: path.clone(),
                message,
            })?;
            keys.insert(fp, AgentKey { path, key });
        }
        if keys.is_empty() {
            return Err(AuthError::NoKeys(dir.to_path_buf()));
        }
        Ok(Self { keys })
    }

    /// The key with this fingerprint (compared in lower case).
    pub fn get(&self, fingerprint: &str) -> Option<&AgentKey> {
        self.keys.get(&fingerprint.trim().to_ascii_lowercase())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys (never after a successful [`AgentKeys::load`]).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `signature` (base64, from the result request) signs
    /// `challenge` — its decoded bytes, or its text — with the key
    /// `fingerprint`.
    pub fn verify(
        &self,
        fingerprint: &str,
        challenge: &str,
        signature: Option<&str>,
    ) -> Result<(), AuthError> {
        let signature = signature.ok_or(AuthError::Unsigned)?;
        let key = self
            .get(fingerprint)
            .ok_or_else(|| AuthError::UnknownKey(fingerprint.to_string()))?;
        // openssl base64 wraps at 64 columns; the manifest may keep that.
        let b64 = &base64::engine::general_purpose::STANDARD;
        let compact: String = signature.chars().filter(|c| !c.is_whitespace()).collect();
        let raw = b64
            .decode(compact)
            .map_err(|e| AuthError::Encoding(e.to_string()))?;
        let decoded = b64.decode(challenge.trim()).ok();
        let signs = |data: &[u8]| {
            key.key
                .verify(Pkcs1v15Sign::new_unprefixed(), data, &raw)
                .is_ok()
        };
        if decoded.as_deref().is_some_and(signs) || signs(challenge.as_bytes()) {
            Ok(())
        } else {
            Err(AuthError::BadSignature(fingerprint.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_hex_and_fresh() {
        let a = random_hex(16).expect("random");
        let b = random_hex(16).expect("random");
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        let c = new_challenge().expect("challenge");
        assert_eq!(c.len(), 88, "base64 of 64 bytes");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&c)
            .expect("base64");
        assert_eq!(raw.len(), 64);
    }

    #[test]
    fn a_directory_without_keys_is_an_error() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("README"), "not a key").expect("write");
        assert!(matches!(
            AgentKeys::load(d.path()),
            Err(AuthError::NoKeys(_))
        ));
        std::fs::write(d.path().join("bad.pem"), "junk").expect("write");
        let e = AgentKeys::load(d.path()).expect_err("bad key").to_string();
        assert!(
            e.contains("bad.pem") && e.contains("not an RSA public key"),
            "{e}"
        );
    }
}
