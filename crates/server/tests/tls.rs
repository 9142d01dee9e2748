//! `[server.tls]`: mesh-server serves HTTPS itself (rustls) when configured.

mod common;

use common::*;
use mesh_notify::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_server_tls_the_api_is_served_over_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let data = dir.path().join("data");
    let server = start(&figment("", &data, &tls)).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://{}/health", server.addr()))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(resp.status().as_u16(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(format!("http://{}/health", server.addr())).await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
    server.shutdown().await.unwrap();

    // A missing key file is named in the start-up error.
    let bad = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"",
        dir.path().join("cert.pem").display(),
        dir.path().join("missing.pem").display()
    );
    let fig = figment("", &data, &bad);
    let config = Config::from_figment(&fig).unwrap();
    let err = mesh_server::start(config, &fig, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls.key_file"), "{err}");
}
