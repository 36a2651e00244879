//! The packaged defaults work: `portcullis-admin serve` started with the arguments of the
//! .deb's conffile (`dist/admin.env`, as `portcullis-admin.service` passes them) — with the
//! packaged paths moved into a temporary directory and the example catalog the package ships
//! as documentation — serves the export. A renamed flag or a default the server refuses would
//! otherwise only show on the first installed host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `PORTCULLIS_ADMIN_ARGS` from the conffile, split into words as systemd does for an
/// unbraced `$VAR`.
fn packaged_args() -> Vec<String> {
    let env =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/admin.env"))
            .expect("dist/admin.env");
    let line = env
        .lines()
        .find_map(|l| l.strip_prefix("PORTCULLIS_ADMIN_ARGS="))
        .expect("PORTCULLIS_ADMIN_ARGS in dist/admin.env");
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serve_starts_with_the_packaged_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let var = tmp.path().join("var/lib/portcullis-admin");
    let etc = tmp.path().join("etc/portcullis-admin");
    std::fs::create_dir_all(&var).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    // What the operator does after installing (docs/catalog.md, "Running ADMIN as a service").
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    portcullis_admin::catalog::copy_files(&example, &var.join("catalog")).unwrap();
    std::fs::write(etc.join("tokens"), "operator s3cret\n").unwrap();
    // A free port instead of the packaged 8080, which another process may hold.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let args: Vec<String> = packaged_args()
        .into_iter()
        .map(|a| {
            a.replace("/var/lib/portcullis-admin", &var.display().to_string())
                .replace("/etc/portcullis-admin", &etc.display().to_string())
                .replace("127.0.0.1:8080", &addr)
        })
        .collect();
    assert!(args.iter().any(|a| a == "--token-file"), "{args:?}");
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .arg("serve")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        if let Some(r) = get(&addr, "/v1/export.csv") {
            break r;
        }
        assert!(Instant::now() < deadline, "serve did not answer on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("# portcullis-export"), "{reply}");
    // --state took: the version store answers (it is only served with a state directory).
    let versions = get(&addr, "/v1/versions").expect("GET /v1/versions");
    assert!(versions.starts_with("HTTP/1.1 200"), "{versions}");
}
