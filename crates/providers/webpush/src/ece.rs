//! RFC 8291 message encryption for Web Push: `aes128gcm` content coding
//! (RFC 8188) with a key derived from ECDH (P-256) between a fresh application
//! server key pair and the subscription's `p256dh` key, and its `auth` secret.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};

/// The record size written in the header (one record is all we send).
pub const RECORD_SIZE: u32 = 4096;
/// Header: salt (16) + record size (4) + key id length (1) + key id (65).
pub const HEADER_LEN: usize = 16 + 4 + 1 + 65;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), String> {
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| "key derivation failed".to_string())
}

/// Encrypts `plaintext` for a subscription (`ua_public`: the 65-byte
/// uncompressed `p256dh` point; `auth`: the 16-byte secret) with a fresh
/// application server key and salt.
pub fn encrypt(plaintext: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, String> {
    let as_private =
        PrivateKey::generate(&ECDH_P256).map_err(|_| "cannot generate a P-256 key".to_string())?;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness".to_string())?;
    encrypt_with(plaintext, ua_public, auth, &as_private, salt)
}

/// [`encrypt`] with a given application server key and salt (test vectors).
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    as_private: &PrivateKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, String> {
    if ua_public.len() != 65 || ua_public[0] != 0x04 {
        return Err("p256dh is not an uncompressed P-256 public key (65 bytes)".into());
    }
    if auth.len() != 16 {
        return Err("auth is not a 16-byte secret".into());
    }
    let as_public = as_private
        .compute_public_key()
        .map_err(|_| "cannot compute the public key".to_string())?;
    let as_public = as_public.as_ref();
    let ecdh_secret = agreement::agree(
        as_private,
        UnparsedPublicKey::new(&ECDH_P256, ua_public),
        "p256dh is not a point on P-256".to_string(),
        |shared| Ok(shared.to_vec()),
    )?;
    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" || 0x00 || ua_public || as_public, 32)
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    hkdf(auth, &ecdh_secret, &key_info, &mut ikm)?;
    // CEK and NONCE from the salt (RFC 8188).
    let mut cek = [0u8; 16];
    hkdf(&salt, &ikm, b"Content-Encoding: aes128gcm\0", &mut cek)?;
    let mut nonce = [0u8; 12];
    hkdf(&salt, &ikm, b"Content-Encoding: nonce\0", &mut nonce)?;
    // One record: the plaintext, then the last-record delimiter 0x02.
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| "bad content key".to_string())?,
    );
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| "encryption failed".to_string())?;
    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291, Appendix A.
    #[test]
    fn matches_the_rfc_8291_example() {
        let as_private = PrivateKey::from_private_key(
            &ECDH_P256,
            &b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"),
        )
        .unwrap();
        let ua_public = b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt_with(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &auth,
            &as_private,
            salt,
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        assert!(encrypt(b"x", &[4u8; 10], &[0u8; 16]).is_err());
        let mut not_on_curve = [7u8; 65];
        not_on_curve[0] = 4;
        assert!(encrypt(b"x", &not_on_curve, &[0u8; 16]).is_err());
    }
}
