//! How a provider failure is classified: the dispatcher decides from the class alone.

use std::time::Duration;

use crate::AddressKind;

/// The class of a [`NotifyError`], for metrics and outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try again later (timeouts, 429, 5xx, connection refused).
    Transient,
    /// This provider will never accept this notification (400, 413, payload too large).
    Permanent,
    /// The recipient's address is dead (APNs 410, FCM `UNREGISTERED`, SMTP 550).
    RecipientGone,
    /// The provider itself is misconfigured (bad credentials, 401/403).
    Misconfigured,
    /// The provider has no way to reach this recipient (no address of its kind).
    Unreachable,
}

impl ErrorClass {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RecipientGone => "recipient_gone",
            ErrorClass::Misconfigured => "misconfigured",
            ErrorClass::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a provider did not deliver. Each provider maps its protocol's answers into
/// one of these; messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// Worth retrying, after `retry_after` if the provider said so.
    #[error("transient failure: {reason}")]
    Transient {
        /// What happened.
        reason: String,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// This provider will not accept this notification; try another provider.
    #[error("rejected permanently: {reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
    /// The address is dead and should be removed by its owner.
    #[error("recipient gone ({address}): {reason}")]
    RecipientGone {
        /// Which kind of address died.
        address: AddressKind,
        /// What happened.
        reason: String,
    },
    /// The provider's own configuration is wrong (credentials, URL).
    #[error("provider misconfigured: {reason}")]
    Misconfigured {
        /// What happened.
        reason: String,
    },
    /// The recipient has no address this provider can use.
    #[error("no {wanted} address for this recipient")]
    Unreachable {
        /// What the provider would need.
        wanted: &'static str,
    },
}

impl NotifyError {
    /// A transient error without `Retry-After`.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
        }
    }

    /// A misconfiguration.
    pub fn misconfigured(reason: impl Into<String>) -> Self {
        Self::Misconfigured {
            reason: reason.into(),
        }
    }

    /// The recipient's address of `kind` is dead.
    pub fn gone(address: AddressKind, reason: impl Into<String>) -> Self {
        Self::RecipientGone {
            address,
            reason: reason.into(),
        }
    }

    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            NotifyError::Transient { .. } => ErrorClass::Transient,
            NotifyError::Permanent { .. } => ErrorClass::Permanent,
            NotifyError::RecipientGone { .. } => ErrorClass::RecipientGone,
            NotifyError::Misconfigured { .. } => ErrorClass::Misconfigured,
            NotifyError::Unreachable { .. } => ErrorClass::Unreachable,
        }
    }

    /// Whether retrying the same provider may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, NotifyError::Transient { .. })
    }

    /// The provider's requested delay before a retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An error with its chain of sources on one line (`a: b: c`), skipping a source
/// whose text its parent already contains. Providers use it to explain transport
/// failures (reqwest and lettre nest the useful part several levels deep).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn chain_joins_sources() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
    }
}
