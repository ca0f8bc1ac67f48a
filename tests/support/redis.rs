//! A real Redis server for the fleet tests (Debian's `redis-server`, which `dev/setup`
//! installs): started on a free loopback port in a temporary directory, with a password,
//! optionally with TLS (a CA and a server certificate made with `openssl`), with an
//! append-only file so that a server killed and started again keeps what it held.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password every test server requires.
pub const PASSWORD: &str = "picket-test-password";

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls: bool,
}

/// A free TCP port on loopback (the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// A password-protected server.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// A password-protected server that speaks only TLS.
    pub fn start_tls() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("a directory for redis");
        if tls {
            make_certificates(dir.path());
        }
        let mut server = RedisServer {
            child: None,
            dir,
            port: free_port(),
            tls,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        self.launch_with(&[]);
    }

    fn launch_with(&mut self, extra: &[&str]) {
        let dir = self.dir.path();
        let mut command = Command::new("redis-server");
        command
            .current_dir(dir)
            .args(["--bind", "127.0.0.1", "--requirepass", PASSWORD])
            .args(["--dir", &dir.display().to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"]);
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        let child = command
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (dev/setup installs Debian's redis-server)");
        self.child = Some(child);
        let started = Instant::now();
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL an agent is given, with the password in it.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://:{PASSWORD}@localhost:{}", self.port)
        } else {
            format!("redis://:{PASSWORD}@127.0.0.1:{}", self.port)
        }
    }

    /// The URL without the password (for `--shared-state-password-file`).
    pub fn url_without_password(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The CA certificate that signed a TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Runs `redis-cli` against the server; returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--no-auth-warning", "-a", PASSWORD]);
        if self.tls {
            command.args(["--tls", "--cacert"]).arg(self.ca());
        }
        let out = command.args(args).output().expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `redis-cli` with `input` on its stdin (`-x` takes the last argument from there, so
    /// it can hold any bytes).
    pub fn cli_with_input(&self, args: &[&str], input: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--no-auth-warning", "-a", PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("writing to redis-cli");
        let out = child.wait_with_output().expect("waiting for redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server at once (SIGKILL), as a crash or a network cut would end it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Bytes of memory the server uses for its data (`INFO memory`'s used_memory).
    pub fn used_memory(&self) -> u64 {
        self.cli(&["INFO", "memory"])
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO memory has used_memory")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, valid for two days.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=picket-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
}

/// A Redis Cluster of three primaries on loopback (as ElastiCache or MemoryDB in cluster mode
/// present themselves), each with the password.
pub struct RedisCluster {
    /// The nodes; the first one's URL is what an agent is given.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes in cluster mode and joins them, slots spread over the three.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("a directory for redis");
                // The cluster bus listens on port + 10000: keep both in range and free.
                let port = loop {
                    let port = free_port();
                    if port < 55_000
                        && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
                    {
                        break port;
                    }
                };
                let mut server = RedisServer {
                    child: None,
                    dir,
                    port,
                    tls: false,
                };
                server.launch_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ]);
                server
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        nodes[0].cli(&create);
        let started = Instant::now();
        while !nodes
            .iter()
            .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the cluster did not come up: {}",
                nodes[0].cli(&["CLUSTER", "INFO"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The URL an agent is given: one node, which the agent asks for the others.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
