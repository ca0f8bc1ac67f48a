//! A small HTTP/1.1 receiver on 127.0.0.1 for the output tests and benchmarks: it records what
//! is POSTed to it, and can stall (read a request and never answer) or answer with any status,
//! switched while it runs. Refusing connections is not listening at all: see [`free_port`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the receiver does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Records it and answers 200 (or 400 when the check refuses it).
    Accept,
    /// Reads it and never answers, until the mode changes; then drops the connection.
    Stall,
    /// Answers this status without recording the body.
    Status(u16),
}

/// A request the receiver took.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its method.
    pub method: String,
    /// Its path.
    pub path: String,
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks a request; `Err` answers 400 with the reason, and the request is not recorded.
pub type Check = fn(&Request) -> Result<(), String>;

struct Shared {
    mode: Mutex<Mode>,
    changed: Condvar,
    accepted: Mutex<Vec<Request>>,
    refused: Mutex<Vec<String>>,
    stalled: AtomicU64,
    connections: AtomicU64,
    check: Option<Check>,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// A port on 127.0.0.1 that nothing listens on now (connections to it are refused), for a
/// receiver to be started on later.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    listener.local_addr().unwrap().port()
}

impl Receiver {
    /// Starts a receiver on `port` (0: any) in `mode`, checking requests with `check`.
    pub fn start(port: u16, mode: Mode, check: Option<Check>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            changed: Condvar::new(),
            accepted: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            stalled: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            check,
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                accepting.connections.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Receiver { addr, shared }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches what it does with the next requests (and ends a stall).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        self.shared.changed.notify_all();
    }

    /// The requests recorded so far.
    pub fn accepted(&self) -> Vec<Request> {
        self.shared.accepted.lock().unwrap().clone()
    }

    /// Why the check refused requests, so far.
    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().unwrap().clone()
    }

    /// Requests that were stalled so far.
    pub fn stalled(&self) -> u64 {
        self.shared.stalled.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Every JSON line of every recorded body, in arrival order.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.accepted()
            .iter()
            .flat_map(|request| {
                String::from_utf8(request.body.clone())
                    .expect("UTF-8 body")
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                    .collect::<Vec<serde_json::Value>>()
            })
            .collect()
    }

    /// Waits until `found` holds for the receiver, up to `timeout`.
    pub fn wait(&self, timeout: Duration, found: impl Fn(&Receiver) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if found(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        found(self)
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(stream.try_clone().expect("cloning the stream"));
    let mut writer = stream;
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        let mode = *shared.mode.lock().unwrap();
        match mode {
            Mode::Stall => {
                shared.stalled.fetch_add(1, Ordering::Relaxed);
                let mut now = shared.mode.lock().unwrap();
                while *now == Mode::Stall {
                    now = shared.changed.wait(now).unwrap();
                }
                return;
            }
            Mode::Status(code) => {
                let _ = write!(
                    writer,
                    "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Mode::Accept => {
                let verdict = shared.check.map_or(Ok(()), |check| check(&request));
                match verdict {
                    Ok(()) => {
                        shared.accepted.lock().unwrap().push(request);
                        let _ = write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    }
                    Err(reason) => {
                        shared.refused.lock().unwrap().push(reason);
                        let body = "Please send a valid request body\n";
                        let _ = write!(
                            writer,
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                }
            }
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}
