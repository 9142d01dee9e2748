//! The APNs provider token: an ES256 JWT signed with the team's `.p8` key, cached and
//! reused, because APNs answers 429 `TooManyProviderTokenUpdates` to a provider that
//! re-signs more often than every 20 minutes, and 403 `ExpiredProviderToken` to a
//! token older than an hour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mesh_notify_core::Secret;
use serde::Serialize;

/// A cached provider token is re-signed once it is this old (APNs wants between 20
/// and 60 minutes).
pub const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(40 * 60);

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

struct Signed {
    jwt: Secret,
    at: Instant,
}

/// Signs provider tokens and hands out the cached one while it is fresh.
pub(crate) struct ProviderTokens {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: Mutex<Option<Signed>>,
    signed: AtomicU64,
}

impl ProviderTokens {
    pub(crate) fn new(key: EncodingKey, key_id: String, team_id: String) -> Self {
        Self {
            key,
            key_id,
            team_id,
            current: Mutex::new(None),
            signed: AtomicU64::new(0),
        }
    }

    /// Signs a new token (`{"alg":"ES256","kid":key_id}.{"iss":team_id,"iat":now}`)
    /// without caching it.
    pub(crate) fn sign(&self) -> Result<Secret, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        encode(&header, &claims, &self.key).map(Secret::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Signed>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sign_and_store(
        &self,
        slot: &mut Option<Signed>,
        now: Instant,
    ) -> Result<Secret, jsonwebtoken::errors::Error> {
        let jwt = self.sign()?;
        self.signed.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Signed {
            jwt: jwt.clone(),
            at: now,
        });
        Ok(jwt)
    }

    /// The cached token, re-signed when it is older than [`TOKEN_REFRESH_AFTER`].
    pub(crate) fn current(&self) -> Result<Secret, jsonwebtoken::errors::Error> {
        self.current_at(Instant::now())
    }

    pub(crate) fn current_at(&self, now: Instant) -> Result<Secret, jsonwebtoken::errors::Error> {
        let mut slot = self.lock();
        if let Some(signed) = slot.as_ref() {
            if now.saturating_duration_since(signed.at) < TOKEN_REFRESH_AFTER {
                return Ok(signed.jwt.clone());
            }
        }
        self.sign_and_store(&mut slot, now)
    }

    /// APNs refused `rejected`: re-sign, unless another request already replaced
    /// it (then that newer token is returned, so a burst of refusals re-signs once).
    pub(crate) fn replace_rejected(
        &self,
        rejected: &Secret,
    ) -> Result<Secret, jsonwebtoken::errors::Error> {
        let mut slot = self.lock();
        if let Some(signed) = slot.as_ref() {
            if signed.jwt != *rejected {
                return Ok(signed.jwt.clone());
            }
        }
        self.sign_and_store(&mut slot, Instant::now())
    }

    /// How many tokens were signed and cached so far.
    pub(crate) fn signed_count(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> ProviderTokens {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        ProviderTokens::new(key, "KEYID12345".into(), "TEAMID1234".into())
    }

    #[test]
    fn the_token_is_reused_until_forty_minutes_then_re_signed() {
        let t = tokens();
        let start = Instant::now();
        let first = t.current_at(start).unwrap();
        let later = t.current_at(start + Duration::from_secs(39 * 60)).unwrap();
        assert_eq!(first, later);
        assert_eq!(t.signed_count(), 1);
        let renewed = t.current_at(start + Duration::from_secs(41 * 60)).unwrap();
        assert_ne!(first, renewed);
        assert_eq!(t.signed_count(), 2);
    }

    #[test]
    fn a_burst_of_refusals_re_signs_once() {
        let t = tokens();
        let old = t.current().unwrap();
        let a = t.replace_rejected(&old).unwrap();
        let b = t.replace_rejected(&old).unwrap();
        assert_ne!(a, old);
        assert_eq!(a, b);
        assert_eq!(t.signed_count(), 2);
        assert_eq!(t.current().unwrap(), a);
    }
}
