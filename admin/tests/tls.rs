//! HTTPS with a certificate from a throwaway CA made by the openssl CLI, checked by a rustls
//! client that trusts only that CA.

use portcullis_admin::serve::tls::TlsFiles;
use portcullis_admin::serve::{self, AdminState, Options};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate,
/// made by the openssl CLI; `None` when openssl is missing (outside CI).
fn make_certs(dir: &Path) -> Option<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the openssl CLI is needed for the TLS tests (Debian package openssl)"
        );
        eprintln!("skipping: no openssl CLI");
        return None;
    }
    const SCRIPT: &str = r#"set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.cnf
openssl req $ec -keyout key.pem -out server.csr -subj /CN=localhost
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile server.cnf
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.cnf
openssl req $ec -keyout client.key -out client.csr -subj /CN=gateway1
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 -extfile client.cnf
"#;
    let out = Command::new("sh")
        .args(["-c", SCRIPT])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    if make_certs(certs.path()).is_none() {
        return;
    }
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let options = Options {
        tls: Some(TlsFiles {
            cert: certs.path().join("cert.pem"),
            key: certs.path().join("key.pem"),
            client_ca: None,
        }),
        ..Options::default()
    };
    let state = AdminState::open(&catalog, options).unwrap();
    let etag = state.snapshot().etag.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs.path().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let get = |inm: Option<String>| {
        let connector = connector.clone();
        let addr = server.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector
                .connect(name, tcp)
                .await
                .expect("handshake with the configured certificate");
            let extra = inm
                .map(|t| format!("If-None-Match: {t}\r\n"))
                .unwrap_or_default();
            let req = format!("GET /v1/export.csv HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            let _ = tls.read_to_string(&mut out).await;
            out
        }
    };
    let resp = get(None).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("# portcullis-export 1.0"));
    let resp = get(Some(etag)).await;
    assert!(resp.starts_with("HTTP/1.1 304"), "{resp}");

    // A plain-HTTP client gets no HTTP answer from the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /v1/export.csv HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    server.stop().await.unwrap();
}

/// A client config trusting the test CA, optionally presenting the test client certificate.
fn client_config(dir: &Path, with_cert: bool) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    if with_cert {
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("client.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    }
}

async fn https_get(
    config: rustls::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_configured() {
    let certs = tempfile::tempdir().unwrap();
    if make_certs(certs.path()).is_none() {
        return;
    }
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let options = Options {
        tls: Some(TlsFiles {
            cert: certs.path().join("cert.pem"),
            key: certs.path().join("key.pem"),
            client_ca: Some(certs.path().join("ca.pem")),
        }),
        ..Options::default()
    };
    let state = AdminState::open(&catalog, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();
    let ok = https_get(client_config(certs.path(), true), server.addr())
        .await
        .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // TLS 1.3 reports a missing client certificate after the client's handshake completes:
    // the failure shows on the first read or write, never as an answer.
    let refused = https_get(client_config(certs.path(), false), server.addr()).await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |r| !r.starts_with("HTTP/1.1 200")),
        "{refused:?}"
    );
    server.stop().await.unwrap();
}
