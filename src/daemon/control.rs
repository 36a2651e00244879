//! How `portcullis promote`/`demote` reach a running daemon, and how a daemon claims its state
//! directory.
//!
//! - [`Instance`]: an exclusive lock on `<state-dir>/daemon.lock`, held for the daemon's life, so
//!   a second daemon on the same directory refuses to start instead of applying every change
//!   twice; the pid file (for the Pacemaker agent's liveness check) is written under that lock
//!   and removed on exit.
//! - [`ApplyLock`]: an exclusive lock on `<state-dir>/apply.lock` while anything changes the
//!   kernel from that directory (the active daemon's syncs, `apply --once`, `flush`): two
//!   applies interleaving their IPVS steps corrupted each other's view of what is owned.
//! - A control socket, `<state-dir>/control.sock` (mode 0600): the CLI connects and sends
//!   `wake`; the daemon re-reads the role file at once. Unlike a signal to the pid in a file, a
//!   stale socket reaches no one: with the daemon gone, connecting fails and nothing else is
//!   woken (or killed).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONTROL_SOCKET: &str = "control.sock";
pub const PID_FILE: &str = "portcullis.pid";
const LOCK_FILE: &str = "daemon.lock";
const APPLY_LOCK_FILE: &str = "apply.lock";
/// How long the CLI waits for the daemon to acknowledge; it answers from its event loop's
/// accept task, which never waits on an apply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another portcullis daemon already runs on {dir} (pid {pid})")]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another apply is changing the kernel from {} (the active daemon, apply --once or flush); \
         try again when it is done",
        dir.display()
    )]
    ApplyBusy { dir: PathBuf },
    #[error("the daemon at {path} answered {answer:?} instead of ok")]
    BadReply { path: PathBuf, answer: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ControlError + 'a {
    move |source| ControlError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// This process's claim on a state directory; dropping it releases the lock and removes the
/// pid file and the socket.
#[derive(Debug)]
pub struct Instance {
    _lock: File,
    dir: PathBuf,
}

impl Instance {
    pub fn claim(dir: &Path) -> Result<Instance, ControlError> {
        fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(dir.join(PID_FILE)).unwrap_or_default();
                return Err(ControlError::AlreadyRunning {
                    dir: dir.to_owned(),
                    pid: pid.trim().to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("cannot lock", &path)(e)),
        }
        let pid = dir.join(PID_FILE);
        fs::write(&pid, format!("{}\n", std::process::id())).map_err(io("cannot write", &pid))?;
        Ok(Instance {
            _lock: lock,
            dir: dir.to_owned(),
        })
    }

    /// Listens on the control socket (a leftover socket file of a dead daemon is replaced:
    /// the lock proves no live daemon owns it).
    pub fn listen(&self) -> Result<tokio::net::UnixListener, ControlError> {
        let path = self.dir.join(CONTROL_SOCKET);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &path)(e)),
        }
        let listener =
            tokio::net::UnixListener::bind(&path).map_err(io("cannot listen on", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io("cannot restrict", &path))?;
        Ok(listener)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.dir.join(CONTROL_SOCKET));
        let _ = fs::remove_file(self.dir.join(PID_FILE));
    }
}

/// Whether a daemon holds `dir` now (its lock is taken), and its pid as its pid file says.
pub fn running_daemon(dir: &Path) -> Option<String> {
    let lock = OpenOptions::new()
        .write(true)
        .open(dir.join(LOCK_FILE))
        .ok()?;
    match lock.try_lock() {
        Err(TryLockError::WouldBlock) => Some(
            fs::read_to_string(dir.join(PID_FILE))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        // Free (or unlockable): nobody runs there. Dropping `lock` releases it at once.
        _ => None,
    }
}

/// Held while this process changes the kernel from a state directory; released on drop.
#[derive(Debug)]
pub struct ApplyLock {
    _file: File,
}

impl ApplyLock {
    /// Takes the lock, or says another apply holds it (never waits: an operator should hear
    /// it at once, and the daemon retries at its next poll).
    pub fn try_take(dir: &Path) -> Result<ApplyLock, ControlError> {
        fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let path = dir.join(APPLY_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(ApplyLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(ControlError::ApplyBusy {
                dir: dir.to_owned(),
            }),
            Err(TryLockError::Error(e)) => Err(io("cannot lock", &path)(e)),
        }
    }
}

/// A request that came in on the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Re-read the role file now.
    Wake,
}

/// Answers one connection: reads one line, acknowledges a known request. Runs in its own
/// task, so a client that connects and says nothing holds up no one.
pub async fn serve_one(stream: tokio::net::UnixStream) -> Option<Request> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(64);
    let read = tokio::time::timeout(REPLY_TIMEOUT, reader.read_line(&mut line)).await;
    let request = match (read, line.trim()) {
        (Ok(Ok(_)), "wake") => Some(Request::Wake),
        _ => None,
    };
    let reply: &[u8] = if request.is_some() {
        b"ok\n"
    } else {
        b"unknown request\n"
    };
    let _ = write.write_all(reply).await;
    request
}

/// Asks the daemon on `dir` to re-read its role now. `Ok(false)`: no daemon is listening (it
/// reads the role file when it starts).
pub fn wake(dir: &Path) -> Result<bool, ControlError> {
    use std::os::unix::net::UnixStream;
    let path = dir.join(CONTROL_SOCKET);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(io("cannot connect to", &path)(e)),
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.write_all(b"wake\n"))
        .map_err(io("cannot write to", &path))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io("no answer from", &path))?;
    if answer.trim() == "ok" {
        Ok(true)
    } else {
        Err(ControlError::BadReply {
            path,
            answer: answer.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        crate::test_dir(&format!("control-{tag}"))
    }

    #[test]
    fn one_daemon_per_state_directory() {
        let dir = tmp("lock");
        let first = Instance::claim(&dir).expect("first claim");
        let pid = fs::read_to_string(dir.join(PID_FILE)).expect("pid file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        let second = Instance::claim(&dir).expect_err("second claim");
        assert!(
            matches!(&second, ControlError::AlreadyRunning { pid: p, .. } if p == pid.trim()),
            "{second}"
        );
        drop(first);
        assert!(!dir.join(PID_FILE).exists(), "pid file removed on exit");
        Instance::claim(&dir).expect("claimable again once released");
    }

    #[test]
    fn one_apply_at_a_time_per_state_directory() {
        let dir = tmp("apply");
        let held = ApplyLock::try_take(&dir).expect("first");
        let busy = ApplyLock::try_take(&dir).expect_err("second");
        assert!(matches!(busy, ControlError::ApplyBusy { .. }), "{busy}");
        drop(held);
        ApplyLock::try_take(&dir).expect("free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_reaches_a_listening_daemon_and_no_one_else() {
        let dir = tmp("wake");
        assert!(
            !wake(&dir).expect("no daemon is not an error"),
            "nobody listens yet"
        );
        let instance = Instance::claim(&dir).expect("claim");
        let listener = instance.listen().expect("listen");
        let mode = fs::metadata(dir.join(CONTROL_SOCKET))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            serve_one(stream).await
        });
        let woke = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || wake(&dir))
                .await
                .expect("join")
        };
        assert!(woke.expect("wake"), "acknowledged");
        assert_eq!(server.await.expect("join"), Some(Request::Wake));
        drop(instance);
        // The daemon is gone: its socket is too, and waking finds no one.
        assert!(!wake(&dir).expect("no daemon"));
    }
}
