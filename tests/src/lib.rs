//! Test harness: starts real `sluice-broker` processes on `127.0.0.1:0` with temporary
//! data directories, signals them (SIGKILL, SIGTERM, SIGSTOP), restarts them on the same
//! data, and runs the real `sluice` binary.
//!
//! The binaries come from the same `target/` directory as the test executable; build them
//! first (`cargo build --bins`, which `scripts/test` does).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sluice_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Offset, Producer, ProducerConfig,
    TopicPartition,
};

/// How long a broker may take to start or stop before the test fails.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// A running `sluice-broker` process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Broker {
    /// Where its HTTP endpoints (/metrics, /readyz, ...) are, once started.
    http_address: std::sync::Arc<std::sync::Mutex<String>>,
    child: Option<Child>,
    /// host:port of the client listener.
    pub address: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    stderr_log: PathBuf,
    log_filter: String,
    /// Where the next start listens; a free port when unset.
    listen: Option<String>,
    /// Extra environment of the broker process.
    env: Vec<(String, String)>,
}

impl Broker {
    /// Starts a broker on `data_dir` with extra flags (e.g. `--flush always`) and waits
    /// until it listens.
    pub fn start(data_dir: &Path, args: &[&str]) -> Broker {
        Broker::start_logged(
            data_dir,
            args,
            &std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
    }

    /// Like [`Broker::start`], with a log filter (RUST_LOG syntax).
    pub fn start_logged(data_dir: &Path, args: &[&str], log_filter: &str) -> Broker {
        Broker::start_full(data_dir, args, log_filter, &[])
    }

    /// Like [`Broker::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::start_full(
            data_dir,
            args,
            &std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            env,
        )
    }

    fn start_full(
        data_dir: &Path,
        args: &[&str],
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Broker {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut b = Broker {
            child: None,
            address: String::new(),
            http_address: Default::default(),
            data_dir: data_dir.to_path_buf(),
            args,
            stderr_log: data_dir.with_extension("broker.log"),
            log_filter: log_filter.to_string(),
            listen: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("broker log file");
        let mut child = Command::new(bin("sluice-broker"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", self.listen.as_deref().unwrap_or("127.0.0.1:0")])
            // Many brokers share this machine: each its own HTTP port, unless a test sets one.
            .args(if self.args.iter().any(|a| a == "--http-listen") {
                &[][..]
            } else {
                &["--http-listen", "127.0.0.1:0"][..]
            })
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sluice-broker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let http = self.http_address.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("http listening on ") {
                    *http.lock().expect("http address lock") = addr.to_string();
                }
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(PROCESS_DEADLINE) {
            Ok(addr) => self.address = addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "broker did not report its address within {PROCESS_DEADLINE:?}; log:\n{}",
                    self.log()
                );
            }
        }
        self.child = Some(child);
    }

    /// `http://HOST:PORT` of its /metrics and health endpoints.
    pub fn http_url(&self) -> String {
        format!(
            "http://{}",
            self.http_address.lock().expect("http address lock")
        )
    }

    /// The broker's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("broker is running").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the broker");
    }

    /// SIGKILL and reap: a crash, with no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the graceful exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("broker is running");
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the broker") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within {PROCESS_DEADLINE:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory and flags (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        self.spawn();
    }

    /// Starts the broker again on the same data directory, flags and client address, as a
    /// restarted broker in a real deployment comes back (clients keep their addresses).
    pub fn restart_in_place(&mut self) {
        assert!(self.child.is_none(), "stop the broker before restarting it");
        self.listen = Some(self.address.clone());
        self.spawn();
        self.listen = None;
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new(&self.address);
        c.request_timeout = Duration::from_secs(10);
        c
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.client()).expect("admin client")
    }

    pub async fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::connect(self.client(), config)
            .await
            .expect("producer")
    }

    pub async fn create_topic(&self, topic: NewTopic) {
        let name = topic.name.clone();
        self.admin()
            .create_topic(topic, false)
            .await
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    }

    /// Every record of a topic from the start up to its current end.
    pub async fn read_all(&self, topic: &str) -> Vec<sluice_client::ConsumerRecord> {
        read_all(self.client(), topic).await
    }

    /// Runs the `sluice` CLI against this broker.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        run_cli(&self.address, args, stdin)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port for a broker to bind right after, picked *below* the kernel's
/// ephemeral range: a port taken from `bind(0)` and released could be handed straight to
/// another test's `--listen 127.0.0.1:0` before its broker binds it (CI saw "Address already
/// in use"). Ports are tried from a per-process pseudo-random start and checked by binding.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOW).max(1_000);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    let start = h.finish();
    for i in 0..span {
        let port = (LOW + (start.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {ephemeral_low}");
}

/// Brokers 1..=n, all controller voters, each in its own data directory.
#[derive(Debug)]
pub struct Cluster {
    _dir: tempfile::TempDir,
    pub brokers: Vec<Broker>,
}

impl Cluster {
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with extra flags for every broker.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_logged(
            n,
            extra,
            &std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
    }

    /// Like [`Cluster::start_with`], with a log filter (RUST_LOG syntax) for every broker.
    pub fn start_logged(n: usize, extra: &[&str], log_filter: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let raft_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters = raft_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..n)
            .map(|i| {
                let id = (i + 1).to_string();
                let mut args = vec![
                    "--node-id",
                    id.as_str(),
                    "--controller-quorum-voters",
                    voters.as_str(),
                ];
                args.extend_from_slice(extra);
                Broker::start_logged(&dir.path().join(format!("broker-{id}")), &args, log_filter)
            })
            .collect();
        Cluster { _dir: dir, brokers }
    }

    /// Comma-separated client addresses of the running brokers.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .filter(|b| b.is_running())
            .map(|b| b.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new(&self.bootstrap());
        c.request_timeout = Duration::from_secs(10);
        c
    }

    /// Waits until every running broker is registered and a controller leads.
    pub async fn wait_ready(&self) -> sluice_client::pb::MetadataResponse {
        let admin = Admin::new(self.client()).expect("admin");
        let n = self.brokers.iter().filter(|b| b.is_running()).count();
        eventually(
            "all brokers registered with a controller leader",
            Duration::from_secs(30),
            || async {
                admin
                    .metadata()
                    .await
                    .ok()
                    .filter(|m| m.brokers.len() >= n && m.controller_id > 0)
            },
        )
        .await
    }

    /// The broker with this node id.
    pub fn node(&mut self, id: i32) -> &mut Broker {
        &mut self.brokers[(id - 1) as usize]
    }

    /// The stderr so far of the broker with this node id.
    pub fn log(&self, id: i32) -> String {
        self.brokers[(id - 1) as usize].log()
    }
}

/// Starts `sluice --bootstrap ADDRESS ARGS...` with every standard stream piped.
fn spawn_cli(address: &str, args: &[&str]) -> Child {
    Command::new(bin("sluice"))
        .args(["--bootstrap", address])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice")
}

/// Runs `sluice --bootstrap ADDRESS ARGS...` with `stdin`.
pub fn run_cli(address: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = spawn_cli(address, args);
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().expect("sluice output");
    let _ = writer.join();
    out
}

/// A temporary directory with a broker data directory inside.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    (dir, data)
}

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Segment files of a partition, oldest first.
pub fn segment_files(data_dir: &Path, topic: &str, partition: i32) -> Vec<PathBuf> {
    let dir = data_dir.join("logs").join(format!("{topic}-{partition}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// Every record of a topic from the start up to its current end, read through `client`.
pub async fn read_all(client: ClientConfig, topic: &str) -> Vec<sluice_client::ConsumerRecord> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    let partitions = consumer.partitions_for(topic).await.expect("partitions");
    let tps: Vec<_> = partitions
        .iter()
        .map(|&p| TopicPartition::new(topic, p))
        .collect();
    let mut ends = Vec::new();
    for tp in &tps {
        ends.push((
            tp.clone(),
            consumer
                .list_offset(tp, sluice_proto::list_offsets::LATEST)
                .await
                .expect("latest"),
        ));
    }
    consumer
        .assign(tps, Offset::Earliest)
        .await
        .expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Done when every partition's position reached its end (control batches take
    // offsets but yield no records, so counting records would not do).
    while ends
        .iter()
        .any(|(tp, end)| consumer.position(tp).unwrap_or(0) < *end)
    {
        assert!(
            Instant::now() < deadline,
            "read {} records of {topic} before the deadline; ends {ends:?}",
            out.len()
        );
        out.extend(consumer.poll(Duration::from_secs(1)).await.expect("poll"));
    }
    out
}

/// A `sluice` process left running with its stdin open (to type into it, or to stop it with
/// Ctrl-C); its stdout and stderr are collected as they come. Killed when dropped.
#[derive(Debug)]
pub struct CliProcess {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl CliProcess {
    /// Starts `sluice --bootstrap ADDRESS ARGS...`.
    pub fn spawn(address: &str, args: &[&str]) -> CliProcess {
        CliProcess::collecting(spawn_cli(address, args))
    }

    /// Starts another workspace binary (an example program) with `args`.
    pub fn spawn_bin(name: &str, args: &[&str]) -> CliProcess {
        let child = Command::new(bin(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        CliProcess::collecting(child)
    }

    fn collecting(mut child: Child) -> CliProcess {
        let mut readers = Vec::new();
        let mut collect = |pipe: Box<dyn std::io::Read + Send>| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = text.clone();
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    sink.lock().expect("output lock").push_str(&line);
                    line.clear();
                }
            }));
            text
        };
        let stdout = collect(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("piped stderr")));
        CliProcess {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Writes to its stdin, which stays open.
    pub fn write(&mut self, input: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(input.as_bytes()).expect("write to sluice");
        stdin.flush().expect("flush to sluice");
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal sluice");
    }

    /// What it printed so far: (stdout, stderr).
    pub fn output(&self) -> (String, String) {
        (
            self.stdout.lock().expect("output lock").clone(),
            self.stderr.lock().expect("output lock").clone(),
        )
    }

    /// Waits until `ready(stdout, stderr)` holds.
    pub fn wait_for_output(
        &self,
        what: &str,
        deadline: Duration,
        ready: impl Fn(&str, &str) -> bool,
    ) {
        let end = Instant::now() + deadline;
        loop {
            let (out, err) = self.output();
            if ready(&out, &err) {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out after {deadline:?} waiting for {what}; stdout:\n{out}\nstderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit (its stdin still open); returns its status, stdout and stderr.
    pub fn wait(mut self, deadline: Duration) -> (ExitStatus, String, String) {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice") {
                // Its pipes closed with it: the readers are at their end.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let (out, err) = self.output();
                return (status, out, err);
            }
            let (out, err) = self.output();
            assert!(
                Instant::now() < end,
                "sluice did not exit within {deadline:?}; stdout:\n{out}\nstderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `deadline` (for tests
/// without an async runtime).
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes that arrived at local TCP port `port` (IPv4) and were not read yet, over its
/// established connections: what a stopped (SIGSTOP) broker has been sent meanwhile.
pub fn unread_bytes_at(port: u16) -> u64 {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let (_, rx) = fields.get(4)?.split_once(':')?;
            (u16::from_str_radix(local_port, 16).ok()? == port && fields.get(3)? == &ESTABLISHED)
                .then(|| u64::from_str_radix(rx, 16).ok())
                .flatten()
        })
        .sum()
}

/// `GET base/path` over HTTP/1.0 (the broker's /metrics and health endpoints): the status
/// code and the body. `None` when nothing answers.
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
