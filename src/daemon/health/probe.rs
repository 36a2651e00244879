//! Probing one target: a TCP connect, or an HTTP/1.0 `GET` whose status line is compared with
//! the expected status. The whole probe (connect, request, status line) has one deadline,
//! `timeout`; the connection is closed right after, so a probe holds a descriptor for at most
//! that long. HTTP/1.0 with `Connection: close` and only the status line read: the checker
//! wants one number, not a client. (`tcp` checks of IPv4 targets are made half-open by
//! [`super::sweep`] instead, when the gateway can.)

use crate::model::health::{Probe, Target};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest status line read: `HTTP/1.1 200 OK\r\n` and a long reason phrase fit many times.
const MAX_STATUS_LINE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("exchange: {0}")]
    Io(#[source] std::io::Error),
    #[error("not an HTTP status line: {0:?}")]
    NotHttp(String),
    #[error("HTTP status {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
}

/// Probes `target`, from `source` when it is of the target's address family.
pub async fn probe(
    target: &Target,
    timeout: Duration,
    source: Option<IpAddr>,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, exchange(target, timeout, source)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn exchange(
    target: &Target,
    timeout: Duration,
    source: Option<IpAddr>,
) -> Result<(), ProbeError> {
    let mut stream = connect(target.endpoint, timeout, source)
        .await
        .map_err(ProbeError::Connect)?;
    match &target.probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path, status, host } => {
            // Without a configured host, the server is asked as itself (address:port), as
            // keepalived's HTTP_GET does without `virtualhost`.
            let host = match host {
                Some(host) => host.clone(),
                None => target.endpoint.to_string(),
            };
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(ProbeError::Io)?;
            let got = read_status(&mut stream).await?;
            if got == *status {
                Ok(())
            } else {
                Err(ProbeError::Status {
                    got,
                    expected: *status,
                })
            }
        }
    }
}

/// Connection attempts one probe may start, spaced evenly over its timeout.
const CONNECT_ATTEMPTS: u32 = 3;

/// Connects to `endpoint`, starting a fresh attempt every `timeout / CONNECT_ATTEMPTS` while
/// the earlier ones still wait, and taking the first that is established. Linux resends a
/// lost SYN only after 1 s, as long as a probe's whole timeout: without this, one lost SYN
/// fails the probe, and on a path losing 20 % of packets `fall = 3` took a live server out
/// every minute or so (tests/health.rs measures it). With three attempts a probe fails on
/// loss only when all three SYNs are lost. An answer ends it at once, a refusal included:
/// loss never refuses, a server that is down does.
async fn connect(
    endpoint: SocketAddr,
    timeout: Duration,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    type Attempt = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;
    let spacing = timeout / CONNECT_ATTEMPTS;
    let mut attempts: Vec<Attempt> = vec![Box::pin(connect_once(endpoint, source))];
    let mut resend = Box::pin(tokio::time::sleep(spacing));
    std::future::poll_fn(|cx| {
        while attempts.len() < CONNECT_ATTEMPTS as usize && resend.as_mut().poll(cx).is_ready() {
            attempts.push(Box::pin(connect_once(endpoint, source)));
            resend.as_mut().reset(tokio::time::Instant::now() + spacing);
        }
        attempts
            .iter_mut()
            .find_map(|attempt| match attempt.as_mut().poll(cx) {
                Poll::Ready(result) => Some(result),
                Poll::Pending => None,
            })
            .map_or(Poll::Pending, Poll::Ready)
    })
    .await
}

async fn connect_once(endpoint: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match endpoint {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source.filter(|s| s.is_ipv4() == endpoint.is_ipv4()) {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    // Closed with a reset, as HAProxy closes its checks: the checker is the side that
    // closes, and a graceful close would leave every probe in TIME_WAIT for 60 s on the
    // gateway — 10k servers every 2 s is 300k sockets — and cost a FIN exchange each.
    // Nothing is lost: the probe has read all it wants when it closes.
    socket.set_zero_linger()?;
    socket.connect(endpoint).await
}

/// Reads up to the end of the status line and returns its code.
async fn read_status(stream: &mut TcpStream) -> Result<u16, ProbeError> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf)
}

/// `HTTP/1.x NNN …` → NNN.
fn parse_status_line(buf: &[u8]) -> Result<u16, ProbeError> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_ascii_whitespace();
    let code = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") && code.len() == 3 => {
            code.parse::<u16>().ok()
        }
        _ => None,
    };
    code.ok_or_else(|| {
        let shown: String = text.chars().take(64).collect();
        ProbeError::NotHttp(shown)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn target(addr: SocketAddr, probe: Probe) -> Target {
        Target {
            endpoint: addr,
            probe,
        }
    }

    fn http(path: &str, status: u16) -> Probe {
        Probe::Http {
            path: path.into(),
            status,
            host: None,
        }
    }

    /// A one-connection HTTP server on loopback answering `reply`; returns what it was asked.
    async fn serve_once(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.expect("read");
            s.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (addr, task)
    }

    /// A loopback port nobody listens on (bound, then released).
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn tcp_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let open = listener.local_addr().expect("addr");
        probe(&target(open, Probe::Tcp), T, None)
            .await
            .expect("listener accepts");
        let closed = closed_port().await;
        let e = probe(&target(closed, Probe::Tcp), T, None)
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, ProbeError::Connect(_)), "{e}");
    }

    #[tokio::test]
    async fn http_compares_the_status_and_sends_the_path() {
        let (addr, asked) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        probe(
            &target(addr, http("/health?x=1", 200)),
            T,
            Some("127.0.0.1".parse().expect("ip")),
        )
        .await
        .expect("200 as expected");
        let asked = asked.await.expect("server");
        assert!(asked.starts_with("GET /health?x=1 HTTP/1.0\r\n"), "{asked}");
        assert!(asked.contains(&format!("Host: {addr}\r\n")), "{asked}");

        // A configured virtual host is the Host header instead.
        let (addr, asked) = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let vhost = Probe::Http {
            path: "/".into(),
            status: 204,
            host: Some("api.example".into()),
        };
        probe(&target(addr, vhost), T, None)
            .await
            .expect("204 as expected");
        let asked = asked.await.expect("server");
        assert!(asked.contains("\r\nHost: api.example\r\n"), "{asked}");

        let (addr, _) = serve_once("HTTP/1.0 500 Internal Server Error\r\n\r\n").await;
        let e = probe(&target(addr, http("/health", 200)), T, None)
            .await
            .expect_err("500");
        assert!(
            matches!(
                e,
                ProbeError::Status {
                    got: 500,
                    expected: 200
                }
            ),
            "{e}"
        );

        let (addr, _) = serve_once("SSH-2.0-OpenSSH\r\n").await;
        let e = probe(&target(addr, http("/", 200)), T, None)
            .await
            .expect_err("not http");
        assert!(matches!(e, ProbeError::NotHttp(_)), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        // Accepts (the kernel does, from the backlog) but never writes.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let e = probe(
            &target(addr, http("/", 200)),
            Duration::from_millis(200),
            None,
        )
        .await
        .expect_err("silent");
        assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
        drop(listener);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content\r\n").ok(),
            Some(204)
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 503").ok(), Some(503));
        for bad in [
            &b""[..],
            b"HTTP/1.1\r\n",
            b"HTTP/1.1 2000 x\r\n",
            b"FTP 200\r\n",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }
}
