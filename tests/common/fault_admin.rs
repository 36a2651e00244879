//! A misbehaving ADMIN for the fault soak (tests/admin_faults.rs): plain HTTP/1.1 over raw
//! TCP, so every way a server can go wrong — a status, a lie in `Content-Length`, a body that
//! never ends, a trickle — is one match arm. Bound inside a network namespace, so the daemon
//! under test (running in that namespace) reaches it on the namespace's own loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Serves the current export, 304 when the ETag matches.
    None,
    Status500,
    Status404,
    /// A login page: 200, `text/html`, with an ETag of its own.
    Html200,
    /// Announces more bytes than it sends, then closes.
    Truncated,
    /// Declares a body over `max_body_bytes` in `Content-Length`.
    OversizedDeclared,
    /// Chunked, no length, and more than `max_body_bytes` of it.
    OversizedChunked,
    /// Sends the body one byte every 100 ms, much slower than `request_timeout`.
    Trickle,
    /// 302 to itself, forever.
    RedirectLoop,
    /// 200 with an empty body.
    Empty200,
    /// Every other request gets a 500; the others are served normally.
    Flapping,
}

pub struct Served {
    pub fault: Fault,
    pub body: Vec<u8>,
    pub etag: String,
    /// Requests answered while the current fault was set.
    pub requests: usize,
    /// Bytes an oversized answer sends.
    pub oversize: usize,
}

pub struct FaultAdmin {
    pub port: u16,
    served: Arc<Mutex<Served>>,
}

impl FaultAdmin {
    /// Listens on 127.0.0.1 inside namespace `ns`; serves `body` as `etag`.
    pub fn start(ns: &str, body: Vec<u8>, etag: &str, oversize: usize) -> FaultAdmin {
        let listener = super::lab::in_netns(ns, || {
            TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
        });
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(Mutex::new(Served {
            fault: Fault::None,
            body,
            etag: etag.to_owned(),
            requests: 0,
            oversize,
        }));
        let shared = served.clone();
        // Not joined: the threads end with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let served = shared.clone();
                std::thread::spawn(move || answer(conn, &served));
            }
        });
        FaultAdmin { port, served }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/export.csv", self.port)
    }

    /// Misbehaves as `fault` from now on, counting requests afresh.
    pub fn set_fault(&self, fault: Fault) {
        let mut s = self.served.lock().expect("lock");
        s.fault = fault;
        s.requests = 0;
    }

    /// Serves a good export again: `body` as `etag`.
    pub fn recover_with(&self, body: Vec<u8>, etag: &str) {
        let mut s = self.served.lock().expect("lock");
        s.fault = Fault::None;
        s.body = body;
        s.etag = etag.to_owned();
        s.requests = 0;
    }

    pub fn requests(&self) -> usize {
        self.served.lock().expect("lock").requests
    }
}

fn read_request(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 << 10 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&request).to_lowercase()
}

fn head(status: &str, headers: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\n{headers}connection: close\r\n\r\n").into_bytes()
}

fn answer(mut conn: TcpStream, served: &Mutex<Served>) {
    let request = read_request(&mut conn);
    let (fault, body, etag, oversize) = {
        let mut s = served.lock().expect("lock");
        s.requests += 1;
        let fault = match s.fault {
            Fault::Flapping if s.requests % 2 == 1 => Fault::Status500,
            Fault::Flapping => Fault::None,
            other => other,
        };
        (fault, s.body.clone(), s.etag.clone(), s.oversize)
    };
    let _ = match fault {
        Fault::None if request.contains(&format!("if-none-match: {etag}")) => {
            conn.write_all(&head("304 Not Modified", &format!("etag: {etag}\r\n")))
        }
        Fault::None => {
            let mut r = head(
                "200 OK",
                &format!("etag: {etag}\r\ncontent-length: {}\r\n", body.len()),
            );
            r.extend_from_slice(&body);
            conn.write_all(&r)
        }
        Fault::Status500 => {
            conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops")
        }
        Fault::Status404 => {
            conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found")
        }
        Fault::Html200 => {
            let page = b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>\n";
            let mut r = head(
                "200 OK",
                &format!(
                    "content-type: text/html\r\netag: \"login\"\r\ncontent-length: {}\r\n",
                    page.len()
                ),
            );
            r.extend_from_slice(page);
            conn.write_all(&r)
        }
        Fault::Truncated => {
            let mut r = head(
                "200 OK",
                &format!("etag: \"cut\"\r\ncontent-length: {}\r\n", body.len() + 100),
            );
            r.extend_from_slice(&body[..body.len() / 2]);
            conn.write_all(&r)
        }
        Fault::OversizedDeclared => {
            let r = head(
                "200 OK",
                &format!("etag: \"big\"\r\ncontent-length: {oversize}\r\n"),
            );
            conn.write_all(&r)
                .and_then(|()| conn.write_all(&vec![b'x'; oversize]))
        }
        Fault::OversizedChunked => {
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0;
            let mut result = conn.write_all(&head(
                "200 OK",
                "etag: \"big\"\r\ntransfer-encoding: chunked\r\n",
            ));
            while result.is_ok() && sent < oversize {
                result = conn
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|()| conn.write_all(&chunk))
                    .and_then(|()| conn.write_all(b"\r\n"));
                sent += chunk.len();
            }
            result.and_then(|()| conn.write_all(b"0\r\n\r\n"))
        }
        Fault::Trickle => {
            let mut result = conn.write_all(&head(
                "200 OK",
                &format!("etag: \"slow\"\r\ncontent-length: {}\r\n", body.len()),
            ));
            let until = Instant::now() + Duration::from_secs(5);
            for byte in &body {
                if result.is_err() || Instant::now() > until {
                    break;
                }
                result = conn.write_all(&[*byte]);
                std::thread::sleep(Duration::from_millis(100));
            }
            result
        }
        Fault::RedirectLoop => conn.write_all(&head(
            "302 Found",
            "location: /v1/export.csv\r\ncontent-length: 0\r\n",
        )),
        Fault::Empty200 => conn.write_all(&head(
            "200 OK",
            "etag: \"empty\"\r\ncontent-length: 0\r\n",
        )),
        Fault::Flapping => unreachable!("resolved to a 500 or a good answer above"),
    };
}
