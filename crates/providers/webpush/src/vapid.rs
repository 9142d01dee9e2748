//! RFC 8292 VAPID: the application server signs a JWT (ES256) for each push
//! service origin and sends it with its public key:
//! `Authorization: vapid t=<jwt>, k=<base64url public key>`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

/// The application server's VAPID key (P-256). `Debug` never shows it.
pub struct VapidKey {
    pair: EcdsaKeyPair,
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .field("private_key", &"***")
            .finish()
    }
}

impl VapidKey {
    /// Parses a PKCS#8 PEM P-256 private key (`openssl genpkey -algorithm EC
    /// -pkeyopt ec_paramgen_curve:P-256`), or the base64url 32-byte private
    /// scalar that Web Push key generators print. Errors never quote the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let pair = if text.starts_with("-----BEGIN") {
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            let der = STANDARD
                .decode(body)
                .map_err(|_| "the PEM block is not base64".to_string())?;
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).map_err(|_| {
                "not a PKCS#8 P-256 private key (`-----BEGIN PRIVATE KEY-----`)".to_string()
            })?
        } else {
            let scalar = URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| "neither a PEM key nor a base64url private key".to_string())?;
            let private = aws_lc_rs::agreement::PrivateKey::from_private_key(
                &aws_lc_rs::agreement::ECDH_P256,
                &scalar,
            )
            .map_err(|_| "not a P-256 private key (32 bytes, base64url)".to_string())?;
            let public = private
                .compute_public_key()
                .map_err(|_| "cannot compute the public key".to_string())?;
            EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &scalar,
                public.as_ref(),
            )
            .map_err(|_| "not a P-256 private key".to_string())?
        };
        let public_b64 = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self { pair, public_b64 })
    }

    /// The public key, base64url (the `applicationServerKey` browsers subscribe
    /// with).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` value for a push service `audience` (its origin),
    /// valid until `expires` (Unix seconds), naming the operator (`subject`:
    /// `mailto:` or an https URL).
    pub fn authorization(
        &self,
        audience: &str,
        subject: &str,
        expires: i64,
    ) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = URL_SAFE_NO_PAD
            .encode(json!({ "aud": audience, "exp": expires, "sub": subject }).to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| "cannot sign the VAPID token".to_string())?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(signature.as_ref()),
            self.public_b64
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8291 Appendix A's application server key, as a raw scalar.
    const SCALAR: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

    #[test]
    fn raw_scalars_give_the_matching_public_key() {
        let key = VapidKey::parse(SCALAR).unwrap();
        assert_eq!(
            key.public_key(),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        assert!(!format!("{key:?}").contains(SCALAR));
    }

    #[test]
    fn the_authorization_carries_a_three_part_token_and_the_key() {
        let key = VapidKey::parse(SCALAR).unwrap();
        let auth = key
            .authorization(
                "https://push.example.net",
                "mailto:ops@example.com",
                1_700_000_000,
            )
            .unwrap();
        let (t, k) = auth
            .strip_prefix("vapid t=")
            .and_then(|r| r.split_once(", k="))
            .unwrap();
        assert_eq!(k, key.public_key());
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
    }

    #[test]
    fn pkcs8_pem_keys_are_read() {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let b64 = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let key = VapidKey::parse(&pem).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref()).unwrap();
        assert_eq!(
            key.public_key(),
            URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
        );
    }

    #[test]
    fn keys_that_are_not_p256_are_refused_without_being_quoted() {
        for bad in [
            "",
            "not-a-key!",
            "AAAA",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            let err = VapidKey::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }
}
