//! A tiny HTTP/1.1 stand-in for ADMIN on an ephemeral loopback port: ETag / If-None-Match,
//! long-polling (`?wait=NNNms`), and the failure modes the daemon must survive.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// Like `Normal`, but ignores `wait`: a server without long-polling.
    NoLongPoll,
    /// Ignores `If-None-Match` too: every poll gets the whole export (the baseline a
    /// conditional GET is measured against).
    Unconditional,
    Error500,
    /// Announces more bytes than it sends, then closes.
    Truncated,
    /// Accepts and hangs up without answering.
    HangUp,
}

pub struct Served {
    pub body: Vec<u8>,
    pub etag: String,
    pub mode: Mode,
    pub requests: usize,
}

pub struct Stub {
    state: Mutex<Served>,
    changed: Condvar,
}

impl Stub {
    pub fn lock(&self) -> std::sync::LockResult<MutexGuard<'_, Served>> {
        self.state.lock()
    }

    /// Serves `body` under `etag` from now on and wakes held long-polls.
    pub fn publish(&self, body: Vec<u8>, etag: &str) {
        let mut s = self.state.lock().expect("lock");
        s.body = body;
        s.etag = etag.into();
        self.changed.notify_all();
    }
}

/// Starts the stub serving `body` as `"v1"`; returns its export URL.
pub fn start(body: &[u8]) -> (String, Arc<Stub>) {
    let stub = Arc::new(Stub {
        state: Mutex::new(Served {
            body: body.to_vec(),
            etag: "\"v1\"".into(),
            mode: Mode::Normal,
            requests: 0,
        }),
        changed: Condvar::new(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!(
        "http://{}/v1/export.csv",
        listener.local_addr().expect("addr")
    );
    let shared = stub.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let stub = shared.clone();
            std::thread::spawn(move || answer(conn, &stub));
        }
    });
    (url, stub)
}

fn wait_param(request: &str) -> Option<Duration> {
    let first_line = request.lines().next()?;
    let ms = first_line.split("wait=").nth(1)?.split("ms").next()?;
    ms.parse().ok().map(Duration::from_millis)
}

fn answer(mut conn: std::net::TcpStream, stub: &Stub) {
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    let mut s = stub.state.lock().expect("lock");
    s.requests += 1;
    let matches = |s: &Served| request.contains(&format!("if-none-match: {}", s.etag));
    let mut applied = String::new();
    if s.mode == Mode::Normal {
        if let Some(wait) = wait_param(&request) {
            applied = format!("preference-applied: wait={}\r\n", wait.as_secs());
            let deadline = Instant::now() + wait;
            while matches(&s) && Instant::now() < deadline {
                s = stub
                    .changed
                    .wait_timeout(s, deadline - Instant::now())
                    .expect("lock")
                    .0;
            }
        }
    }
    let reply: Vec<u8> = match s.mode {
        Mode::HangUp => return,
        Mode::Error500 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops".to_vec(),
        Mode::Truncated => {
            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", s.body.len() + 100).into_bytes();
            r.extend_from_slice(&s.body[..s.body.len() / 2]);
            r
        }
        Mode::Normal | Mode::NoLongPoll if matches(&s) => format!(
            "HTTP/1.1 304 Not Modified\r\netag: {}\r\n{applied}connection: close\r\n\r\n",
            s.etag
        )
        .into_bytes(),
        Mode::Normal | Mode::NoLongPoll | Mode::Unconditional => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\netag: {}\r\n{applied}content-length: {}\r\nconnection: close\r\n\r\n",
                s.etag,
                s.body.len()
            )
            .into_bytes();
            r.extend_from_slice(&s.body);
            r
        }
    };
    drop(s);
    let _ = conn.write_all(&reply);
}
