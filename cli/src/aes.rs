//! AES-256-GCM encryption of JSONL lines, and `coherence encrypt`.
//!
//! The key is `COHERENCE_AES_KEY`: standard base64 of 32 bytes. A line's encrypted form is
//! `base64(nonce ‖ ciphertext ‖ tag)` in standard base64 with padding, with a fresh random
//! 12-byte nonce per line and the 16-byte GCM tag, so equal lines encrypt differently and any
//! change to an encrypted line is detected when it is decrypted.

use crate::error::{CliError, CliResult};
use crate::files::{LineReader, Output};
use coherence_core::linecipher;
use rand::RngCore;
use std::fmt;

use std::path::PathBuf;

pub use coherence_core::linecipher::{KEY_ENV, KEY_LEN, NONCE_LEN};

/// Encrypts and decrypts single lines with one AES-256-GCM key (the format lives in
/// [`coherence_core::linecipher`]; the random nonce is drawn here).
#[derive(Clone)]
pub struct LineCipher {
    inner: linecipher::LineCipher,
}

impl fmt::Debug for LineCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach logs.
        f.write_str("LineCipher { key: <redacted> }")
    }
}

impl LineCipher {
    /// The cipher of `COHERENCE_AES_KEY`, `None` when it is unset; exit 64 when it is malformed.
    pub fn from_env() -> Result<Option<LineCipher>, CliError> {
        match std::env::var(KEY_ENV) {
            Ok(v) => Self::from_key_b64(&v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(CliError::config(format!(
                "{KEY_ENV}: expected standard base64 of {KEY_LEN} bytes, got a value that is not UTF-8"
            ))),
        }
    }

    /// The cipher of a standard-base64 key of 32 bytes (surrounding whitespace is ignored).
    pub fn from_key_b64(key_b64: &str) -> Result<LineCipher, CliError> {
        let inner =
            linecipher::LineCipher::from_key_b64(key_b64).map_err(|e| CliError::config(e.0))?;
        Ok(LineCipher { inner })
    }

    /// Encrypts one line: `base64(nonce ‖ ciphertext ‖ tag)` with a fresh random nonce.
    ///
    /// # Panics
    ///
    /// When `plaintext` is longer than 32 GiB, beyond what AES-GCM can encrypt under one nonce;
    /// [`LineCipher::try_encrypt_line`] returns an error instead.
    #[allow(
        dead_code,
        reason = "line API for the commands that write encrypted JSONL; `encrypt` itself reports oversize lines"
    )]
    pub fn encrypt_line(&self, plaintext: &str) -> String {
        match self.try_encrypt_line(plaintext) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Encrypts one line, or says why it cannot be (only a line longer than 32 GiB).
    pub fn try_encrypt_line(&self, plaintext: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.inner.encrypt_line_with_nonce(plaintext, nonce)
    }

    /// Decrypts one encrypted line; the error says what was wrong with it.
    pub fn decrypt_line(&self, line: &str) -> Result<String, String> {
        self.inner.decrypt_line(line)
    }
}

/// Flags of `coherence encrypt`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The key is read from COHERENCE_AES_KEY (standard base64 of 32 bytes; \
generate one with `head -c 32 /dev/urandom | base64`). Each non-empty line becomes \
base64(nonce ‖ ciphertext ‖ tag); empty lines are dropped."
)]
pub struct EncryptArgs {
    /// JSONL file to encrypt (`-` reads stdin).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,
    /// Where to write the result (default stdout; `-` is stdout). Written whole or not at all.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Decrypt a file written by `coherence encrypt` instead; a line that does not decrypt
    /// stops with its line number (exit 65).
    #[arg(long)]
    pub decrypt: bool,
}

/// Runs `coherence encrypt`.
pub fn run_encrypt(a: EncryptArgs) -> CliResult {
    let cipher = LineCipher::from_env()?.ok_or_else(|| {
        CliError::config(format!(
            "{KEY_ENV} is not set: expected standard base64 of {KEY_LEN} bytes \
             (generate one with: head -c 32 /dev/urandom | base64)"
        ))
    })?;
    let mut input = LineReader::open(&a.file)?;
    let mut out = Output::create(a.out.as_deref())?;
    let mut written = 0u64;
    while let Some((line_no, raw)) = input.next_line()? {
        let at = |reason: String| {
            CliError::data(format!("{}: line {line_no}: {reason}", a.file.display()))
        };
        let text = std::str::from_utf8(raw).map_err(|e| {
            at(format!(
                "not valid UTF-8 (byte {} is not part of a character)",
                e.valid_up_to() + 1
            ))
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let converted = if a.decrypt {
            cipher.decrypt_line(text)
        } else {
            cipher.try_encrypt_line(text)
        }
        .map_err(at)?;
        out.write_line(&converted)?;
        written += 1;
    }
    out.finish()?;
    let verb = if a.decrypt { "decrypted" } else { "encrypted" };
    eprintln!("{written} lines {verb}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use coherence_core::linecipher::TAG_LEN;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn lines_round_trip_with_fresh_nonces() {
        let c = LineCipher::from_key_b64(KEY).unwrap();
        let line = r#"{"ts":"2026-11-01T00:00:00Z","qps":1.5,"note":"é"}"#;
        let a = c.encrypt_line(line);
        let b = c.encrypt_line(line);
        assert_ne!(a, b, "two encryptions of one line must differ");
        assert_eq!(c.decrypt_line(&a).unwrap(), line);
        assert_eq!(c.decrypt_line(&b).unwrap(), line);
        let framed = STANDARD.decode(&a).unwrap();
        assert_eq!(framed.len(), NONCE_LEN + line.len() + TAG_LEN);
    }

    #[test]
    fn frame_is_nonce_then_ciphertext_then_tag() {
        let c = LineCipher::from_key_b64(KEY).unwrap();
        let framed = STANDARD.decode(c.encrypt_line("hello")).unwrap();
        let key = STANDARD.decode(KEY).unwrap();
        let raw = Aes256Gcm::new_from_slice(&key).unwrap();
        let plain = raw
            .decrypt(
                Nonce::from_slice(&framed[..NONCE_LEN]),
                &framed[NONCE_LEN..],
            )
            .unwrap();
        assert_eq!(plain, b"hello");
    }

    #[test]
    fn decrypt_errors_say_what_was_wrong() {
        let c = LineCipher::from_key_b64(KEY).unwrap();
        assert!(c.decrypt_line("@@@").unwrap_err().starts_with("not base64"));
        assert!(c.decrypt_line("AAAA").unwrap_err().starts_with("too short"));
        let other = LineCipher::from_key_b64(&STANDARD.encode([7u8; 32])).unwrap();
        let e = other.decrypt_line(&c.encrypt_line("x")).unwrap_err();
        assert!(e.starts_with("authentication failed"), "{e}");
        let mut framed = STANDARD.decode(c.encrypt_line("abc")).unwrap();
        framed[NONCE_LEN] ^= 1;
        let e = c.decrypt_line(&STANDARD.encode(&framed)).unwrap_err();
        assert!(e.starts_with("authentication failed"), "{e}");
        // Valid ciphertext of bytes that are not UTF-8.
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0] = 9;
        let key = STANDARD.decode(KEY).unwrap();
        let sealed = Aes256Gcm::new_from_slice(&key)
            .unwrap()
            .encrypt(Nonce::from_slice(&nonce), &[0xffu8, 0xfe][..])
            .unwrap();
        let line = STANDARD.encode([&nonce[..], &sealed].concat());
        assert!(c.decrypt_line(&line).unwrap_err().starts_with("not UTF-8"));
    }

    #[test]
    fn malformed_keys_are_config_errors_naming_the_variable() {
        for bad in ["not base64!", "AAAA", ""] {
            let e = LineCipher::from_key_b64(bad).unwrap_err();
            assert_eq!(e.code, 64);
            assert!(e.msg.contains(KEY_ENV), "{}", e.msg);
            assert!(e.msg.contains("32 bytes"), "{}", e.msg);
        }
        assert!(LineCipher::from_key_b64(&format!("  {KEY}\n")).is_ok());
        let dbg = format!("{:?}", LineCipher::from_key_b64(KEY).unwrap());
        assert!(!dbg.contains(KEY));
    }
}
