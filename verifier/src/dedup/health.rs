//! Availability transitions of a remote dedup store, logged once per change rather than once
//! per request, so an outage under load is one warning and not thousands.

use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Last known availability of one store.
#[derive(Debug)]
pub(crate) struct Health {
    state: AtomicU8,
    backend: &'static str,
    addr: String,
}

impl Health {
    /// A store not yet heard from; `addr` must not contain credentials (it is logged).
    pub(crate) fn new(backend: &'static str, addr: String) -> Self {
        Self {
            state: AtomicU8::new(UNKNOWN),
            backend,
            addr,
        }
    }

    /// The address the store is known by in logs and errors.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Records that an operation succeeded.
    pub(crate) fn up(&self) {
        match self.state.swap(UP, Ordering::AcqRel) {
            UP => {}
            DOWN => tracing::info!(
                backend = self.backend,
                addr = %self.addr,
                "dedup store available again"
            ),
            _ => tracing::info!(backend = self.backend, addr = %self.addr, "dedup store connected"),
        }
    }

    /// Records that an operation failed with `reason`.
    pub(crate) fn down(&self, reason: &str) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::warn!(
                backend = self.backend,
                addr = %self.addr,
                reason,
                "dedup store unavailable"
            );
        }
    }
}

/// `addr` with any password replaced by `…`, for messages about addresses that did not parse.
pub(crate) fn redact(addr: &str) -> String {
    if let Some((scheme, rest)) = addr.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let user = rest[..at].split(':').next().unwrap_or_default();
            if rest[..at].contains(':') {
                return format!("{scheme}://{user}:…@{}", &rest[at + 1..]);
            }
        }
        return addr.to_owned();
    }
    addr.split(' ')
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=…"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_echoed() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:…@h:1/0");
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:…@h/db");
        assert_eq!(redact("postgres://u@h:x/db"), "postgres://u@h:x/db");
        assert_eq!(redact("postgres://h/a@b"), "postgres://h/a@b");
        assert_eq!(
            redact("host=h password=pw user=u"),
            "host=h password=… user=u"
        );
        assert_eq!(redact("h:6379"), "h:6379");
    }
}
