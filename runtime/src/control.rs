//! The running agent's control socket, `--state DIR/control.sock`: how `picket state` reaches
//! an agent's learned state while the agent holds the state file (redb allows one writer).
//!
//! Only root (or the agent's user) can connect: the state directory is refused at start unless
//! only they can write it (`trust::check_state_dir`), and the socket itself is mode 0600. One
//! request, a JSON line (an [`Op`]), is answered with one JSON line, then the connection
//! closes. Requests are applied by the event loop between events, like a rule reload.

use crate::state::admin::{Op, Outcome};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The socket's name in the state directory.
pub const SOCKET: &str = "control.sock";

/// Longest request accepted (an import of a large baseline).
const MAX_REQUEST_BYTES: u64 = 256 << 20;
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 4;
/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request for the event loop, with where its answer goes.
pub struct Request {
    /// What to do.
    pub op: Op,
    /// The answer.
    pub reply: oneshot::Sender<Result<Outcome, String>>,
}

/// Listens on `dir/control.sock` (replacing a stale socket) from the current tokio runtime;
/// requests come out of the returned channel.
pub fn listen(dir: &Path) -> std::io::Result<mpsc::Receiver<Request>> {
    let path = dir.join(SOCKET);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(&path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; move it away",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                serve(stream, tx).await;
                drop(permit);
            });
        }
    });
    tracing::info!(socket = %path.display(), "control socket listening (picket state --state)");
    Ok(rx)
}

async fn serve(stream: tokio::net::UnixStream, requests: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    let mut line = String::new();
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err(format!("no request within {READ_TIMEOUT:?}")),
        Ok(Err(err)) => Err(format!("reading the request: {err}")),
        Ok(Ok(_)) => match serde_json::from_str::<Op>(&line) {
            Err(err) => Err(format!("malformed request: {err}")),
            Ok(op) => {
                let (reply, answer) = oneshot::channel();
                if requests.send(Request { op, reply }).await.is_err() {
                    Err("the agent is stopping".into())
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Err("the agent is stopping".into()))
                }
            }
        },
    };
    let mut text = serde_json::to_string(&answer)
        .unwrap_or_else(|err| format!("{{\"Err\":\"cannot encode the answer: {err}\"}}"));
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Sends `op` to the agent running on `dir`; `None` when no agent listens there.
pub fn ask(dir: &Path, op: &Op) -> Option<Result<Outcome, String>> {
    let path: PathBuf = dir.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).ok()?;
    let answer = (|| -> Result<Result<Outcome, String>, String> {
        let mut request = serde_json::to_string(op).map_err(|e| e.to_string())?;
        request.push('\n');
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&line)
            .map_err(|e| format!("{}: unreadable answer: {e}", path.display()))
    })();
    Some(answer.unwrap_or_else(Err))
}
