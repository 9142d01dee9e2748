//! The FCM and APNs fakes started together with the files a provider config
//! needs (service-account JSON, APNs `.p8` key, the fake's CA), written into a
//! directory, and the matching `[providers.fcm]` / `[providers.apns]` TOML.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::apns::{FakeApns, FakeApnsConfig};
use crate::fcm::FakeFcm;

/// Team id the APNs fake accepts.
pub const APNS_TEAM_ID: &str = "TEAM123456";
/// Key id the APNs fake accepts.
pub const APNS_KEY_ID: &str = "KEY1234567";
/// Bundle id (topic) the APNs fake accepts.
pub const APNS_BUNDLE_ID: &str = "org.example.mesh";

/// Running FCM and APNs fakes and their credential files.
pub struct PushFakes {
    /// The FCM fake.
    pub fcm: FakeFcm,
    /// The APNs fake (TLS, HTTP/2).
    pub apns: FakeApns,
    sa_file: PathBuf,
    p8_file: PathBuf,
    ca_file: PathBuf,
}

impl PushFakes {
    /// Starts both fakes and writes `sa.json`, `AuthKey.p8` and `ca.pem` into `dir`.
    pub async fn start(dir: &Path) -> io::Result<Self> {
        let fcm = FakeFcm::start().await?;
        let sa_file = dir.join("sa.json");
        std::fs::write(&sa_file, fcm.service_account_json().to_string())?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(io::Error::other)?;
        let apns = FakeApns::start(FakeApnsConfig {
            team_id: APNS_TEAM_ID.into(),
            key_id: APNS_KEY_ID.into(),
            public_key_pem: key.public_key_pem(),
            bundle_id: APNS_BUNDLE_ID.into(),
        })
        .await?;
        let p8_file = dir.join("AuthKey.p8");
        std::fs::write(&p8_file, key.serialize_pem())?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, apns.ca_pem())?;
        Ok(Self {
            fcm,
            apns,
            sa_file,
            p8_file,
            ca_file,
        })
    }

    /// `[providers.fcm]` and `[providers.apns]` pointing at the fakes.
    pub fn providers_toml(&self) -> String {
        format!(
            r#"
[providers.fcm]
service_account_file = "{sa}"
base_url = "{fcm}"
token_uri = "{token_uri}"
[providers.apns]
key_file = "{p8}"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM_ID}"
bundle_id = "{APNS_BUNDLE_ID}"
base_url = "{apns}"
ca_file = "{ca}"
"#,
            sa = self.sa_file.display(),
            fcm = self.fcm.url(),
            token_uri = self.fcm.token_uri(),
            p8 = self.p8_file.display(),
            apns = self.apns.url(),
            ca = self.ca_file.display(),
        )
    }
}
