//! AES-256-GCM encryption of single lines (JSONL telemetry), shared by `coherence encrypt` and
//! the sidecar's JSONL source.
//!
//! The key is `COHERENCE_AES_KEY`: standard base64 of 32 bytes. A line's encrypted form is
//! `base64(nonce ‖ ciphertext ‖ tag)` in standard base64 with padding: a 12-byte nonce, the
//! ciphertext (as long as the line) and the 16-byte GCM tag. The caller supplies the nonce (a
//! fresh random one per line), so this module stays free of I/O and randomness.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::fmt;

/// Environment variable holding the line key.
pub const KEY_ENV: &str = "COHERENCE_AES_KEY";
/// Bytes of the AES-256 key.
pub const KEY_LEN: usize = 32;
/// Bytes of the per-line GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// The largest plaintext accepted (AES-GCM allows 2^36 − 32 bytes; keep a round margin).
pub const MAX_PLAINTEXT: usize = 1 << 35;

/// A key that cannot be used; the message names `COHERENCE_AES_KEY` and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Encrypts and decrypts single lines with one AES-256-GCM key.
#[derive(Clone)]
pub struct LineCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for LineCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach logs.
        f.write_str("LineCipher { key: <redacted> }")
    }
}

impl LineCipher {
    /// The cipher of a standard-base64 key of 32 bytes (surrounding whitespace is ignored).
    pub fn from_key_b64(key_b64: &str) -> Result<LineCipher, KeyError> {
        let key = STANDARD.decode(key_b64.trim()).map_err(|e| {
            KeyError(format!(
                "{KEY_ENV}: expected standard base64 of {KEY_LEN} bytes, but it is not base64 ({e})"
            ))
        })?;
        if key.len() != KEY_LEN {
            return Err(KeyError(format!(
                "{KEY_ENV}: expected standard base64 of {KEY_LEN} bytes, got {} bytes \
                 (generate one with: head -c 32 /dev/urandom | base64)",
                key.len()
            )));
        }
        let cipher = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| KeyError(format!("{KEY_ENV}: expected {KEY_LEN} bytes")))?;
        Ok(LineCipher { cipher })
    }

    /// Encrypts one line under `nonce`: `base64(nonce ‖ ciphertext ‖ tag)`. The nonce must be
    /// fresh for every line encrypted under one key; the error only concerns a line longer
    /// than 32 GiB.
    pub fn encrypt_line_with_nonce(
        &self,
        plaintext: &str,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, String> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(format!(
                "line of {} bytes: expected at most {MAX_PLAINTEXT} bytes for AES-GCM",
                plaintext.len()
            ));
        }
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| format!("line of {} bytes: AES-GCM refused it", plaintext.len()))?;
        let mut framed = Vec::with_capacity(NONCE_LEN + sealed.len());
        framed.extend_from_slice(&nonce);
        framed.extend_from_slice(&sealed);
        Ok(STANDARD.encode(framed))
    }

    /// Decrypts one encrypted line; the error says what was wrong with it.
    pub fn decrypt_line(&self, line: &str) -> Result<String, String> {
        let framed = STANDARD
            .decode(line.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        if framed.len() < NONCE_LEN + TAG_LEN {
            return Err(format!(
                "too short: {} bytes, expected at least {} (12-byte nonce and 16-byte tag)",
                framed.len(),
                NONCE_LEN + TAG_LEN
            ));
        }
        let (nonce, sealed) = framed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| "authentication failed: wrong key, or the line was altered".to_string())?;
        String::from_utf8(plain).map_err(|e| {
            format!(
                "not UTF-8 after decryption (byte {} is not part of a character)",
                e.utf8_error().valid_up_to() + 1
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn a_known_nonce_gives_a_known_frame() {
        let c = LineCipher::from_key_b64(KEY).unwrap();
        let line = c
            .encrypt_line_with_nonce("hello", [3u8; NONCE_LEN])
            .unwrap();
        let framed = STANDARD.decode(&line).unwrap();
        assert_eq!(&framed[..NONCE_LEN], &[3u8; NONCE_LEN]);
        assert_eq!(framed.len(), NONCE_LEN + 5 + TAG_LEN);
        // Deterministic for a given key and nonce.
        assert_eq!(
            line,
            c.encrypt_line_with_nonce("hello", [3u8; NONCE_LEN])
                .unwrap()
        );
        assert_eq!(c.decrypt_line(&line).unwrap(), "hello");
        let raw = Aes256Gcm::new_from_slice(&STANDARD.decode(KEY).unwrap()).unwrap();
        let plain = raw
            .decrypt(
                Nonce::from_slice(&framed[..NONCE_LEN]),
                &framed[NONCE_LEN..],
            )
            .unwrap();
        assert_eq!(plain, b"hello");
    }

    #[test]
    fn wrong_keys_and_bad_lines_are_errors_not_panics() {
        let c = LineCipher::from_key_b64(KEY).unwrap();
        let other = LineCipher::from_key_b64(&STANDARD.encode([7u8; 32])).unwrap();
        let line = c.encrypt_line_with_nonce("x", [0u8; NONCE_LEN]).unwrap();
        assert!(
            other
                .decrypt_line(&line)
                .unwrap_err()
                .starts_with("authentication failed")
        );
        assert!(c.decrypt_line("@@@").unwrap_err().starts_with("not base64"));
        assert!(c.decrypt_line("AAAA").unwrap_err().starts_with("too short"));
        for bad in ["not base64!", "AAAA", ""] {
            let e = LineCipher::from_key_b64(bad).unwrap_err();
            assert!(e.0.contains(KEY_ENV) && e.0.contains("32 bytes"), "{e}");
        }
        assert!(!format!("{c:?}").contains(KEY));
    }
}
