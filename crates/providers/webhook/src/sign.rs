//! Standard Webhooks signing (<https://www.standardwebhooks.com>): the signed
//! content is `{webhook-id}.{webhook-timestamp}.{body}`, signed with
//! HMAC-SHA256 under the base64-decoded part of a `whsec_…` secret, sent as
//! `webhook-signature: v1,{base64(signature)}`.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key (the decoded secret). `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference
    /// libraries); the key must be 24 to 64 bytes. The error never quotes it.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let raw = secret.trim();
        let b64 = raw.strip_prefix(SECRET_PREFIX).unwrap_or(raw);
        let bytes = STANDARD.decode(b64).map_err(|_| {
            "not a Standard Webhooks secret: expected whsec_ followed by base64".to_string()
        })?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "the secret decodes to {} bytes; Standard Webhooks secrets are 24 to 64 bytes",
                bytes.len()
            ));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` value for a message: `v1,{base64}`.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification and its reference
        // libraries (secret, id, timestamp, payload → signature).
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_checked_and_never_quoted() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        let err = SigningKey::parse("whsec_not base64!").unwrap_err();
        assert!(!err.contains("not base64!"), "{err}");
        assert!(SigningKey::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("24 to 64"));
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}
