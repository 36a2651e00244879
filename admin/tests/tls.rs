//! HTTPS with a certificate from a throwaway CA made by the openssl CLI, checked by a rustls
//! client that trusts only that CA.

use portcullis_admin::serve::{self, AdminState, Options};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// CA + leaf for localhost/127.0.0.1; `None` when openssl is missing (outside CI).
fn make_certs(dir: &Path) -> Option<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the openssl CLI is needed for the TLS test (Debian package openssl)"
        );
        eprintln!("skipping: no openssl CLI");
        return None;
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    assert!(openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=test-ca"
            ]
        ]
        .concat()
    ));
    assert!(openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost"
            ]
        ]
        .concat()
    ));
    assert!(openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf"
        ]
    ));
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
        tls: Some((certs.path().join("cert.pem"), certs.path().join("key.pem"))),
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
