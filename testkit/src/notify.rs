//! Real servers for the notifier's tests: an HTTP/1.1 receiver on 127.0.0.1
//! (keep-alive, Content-Length bodies) whose answers a test scripts, which
//! honours `Idempotency-Key` the way a careful receiver does (a key it has
//! accepted is acknowledged again but not processed twice), and an SMTP server
//! with STARTTLS (Python's aiosmtpd, `testkit/smtp_server.py`) with a
//! certificate made by openssl for the test.
//!
//! Not glob-exported: `use conscope_testkit::notify::*`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// When it arrived, from the receiver's start.
    pub at: Duration,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An answer: status, extra headers, body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::status(200, "ok")
    }

    pub fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Script = dyn Fn(&Request, usize) -> Answer + Send + Sync;

#[derive(Default)]
struct Log {
    /// Every request, in arrival order.
    requests: Vec<Request>,
    /// Idempotency keys accepted (2xx), with how often each came back after.
    accepted: BTreeMap<String, usize>,
}

/// An HTTP receiver on 127.0.0.1; runs until the test process ends.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    /// Accepts everything with 200.
    pub fn start() -> Receiver {
        Receiver::scripted(|_, _| Answer::ok())
    }

    /// Answers with `script(request, n)`, `n` counting requests from 0. A request
    /// with an `Idempotency-Key` already accepted gets 200 without the script.
    pub fn scripted(script: impl Fn(&Request, usize) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let log = Arc::new(Mutex::new(Log::default()));
        let script: Arc<Script> = Arc::new(script);
        let started = Instant::now();
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&shared);
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve(stream, &log, &*script, started));
            }
        });
        Receiver { port, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("receiver log").requests.clone()
    }

    /// Distinct idempotency keys accepted (what the receiver processed).
    pub fn processed(&self) -> usize {
        self.log.lock().expect("receiver log").accepted.len()
    }

    /// Requests that came again with a key already accepted (re-sends the
    /// receiver recognised and did not process).
    pub fn replays(&self) -> usize {
        self.log.lock().expect("receiver log").accepted.values().sum()
    }

    /// The accepted keys.
    pub fn accepted_keys(&self) -> Vec<String> {
        self.log
            .lock()
            .expect("receiver log")
            .accepted
            .keys()
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Log>, script: &Script, started: Instant) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    // One write per answer, sent at once: a head and a body in two writes
    // would wait for the client's delayed ACK (Nagle), 40 ms per request.
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Request {
            method,
            path,
            headers,
            body,
            at: started.elapsed(),
        };
        let answer = {
            let mut log = log.lock().expect("receiver log");
            let n = log.requests.len();
            log.requests.push(request.clone());
            let key = request.header("idempotency-key").map(str::to_owned);
            match key.as_ref().and_then(|k| log.accepted.get_mut(k)) {
                Some(replays) => {
                    *replays += 1;
                    Answer::status(200, "already processed")
                }
                None => {
                    let answer = script(&request, n);
                    if (200..300).contains(&answer.status) {
                        if let Some(key) = key {
                            log.accepted.insert(key, 0);
                        }
                    }
                    answer
                }
            }
        };
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
            answer.status,
            answer.body.len()
        );
        for (name, value) in &answer.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&answer.body);
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made by openssl.
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (Debian's openssl package) runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=conscope test CA",
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
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Certificates { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// aiosmtpd on 127.0.0.1 requiring STARTTLS and AUTH (user `conscope`,
/// password `password`), writing each mail it accepts as a JSON line.
pub struct SmtpServer {
    pub port: u16,
    child: Child,
    out: PathBuf,
    pub certificates: Certificates,
}

/// One mail the SMTP server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub data: String,
    pub tls: bool,
    pub user: Option<String>,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let certificates = Certificates::make();
        let out = certificates.dir.path().join("mails.jsonl");
        let port = crate::run::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
        let child = Command::new("python3")
            .arg(&script)
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(certificates.dir.path().join("server.pem"))
            .arg("--key")
            .arg(certificates.dir.path().join("server.key"))
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs testkit/smtp_server.py (scripts/test.sh installs aiosmtpd)");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the SMTP server never listened"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer {
            port,
            child,
            out,
            certificates,
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|v| Mail {
                mail_from: v["mail_from"].as_str().unwrap_or_default().to_owned(),
                rcpt_tos: v["rcpt_tos"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                data: v["data"].as_str().unwrap_or_default().to_owned(),
                tls: v["tls"].as_bool().unwrap_or(false),
                user: v["user"].as_str().map(str::to_owned),
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
