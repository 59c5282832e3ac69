//! The gateway side: a real NGINX (Debian's package, extracted by `scripts/install-tools.sh`
//! into the tool cache) running the shipped `deploy/nginx/nginx.conf` with the test's ports,
//! the config of the `driftgate route` sidecar it asks, and a tiny upstream service behind it
//! that counts the requests that reach it.

use crate::support::contract::tools_dir;
use crate::support::kafka::{free_port, Broker, Topics};
use crate::support::scrape;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn binary() -> PathBuf {
    [tools_dir().join("nginx/usr/sbin/nginx"), PathBuf::from("nginx")]
        .into_iter()
        .find(|p| Command::new(p).arg("-v").output().is_ok())
        .unwrap_or_else(|| {
            panic!("NGINX is not installed: run ./scripts/install-tools.sh (it extracts Debian's nginx package into the tool cache)")
        })
}

/// Writes `route.toml` for a sidecar on `listen` following `t`'s topics, with `extra` top-level
/// settings; start it with `Engine::spawn("route", ..)`.
pub fn route_config(dir: &Path, b: &Broker, t: &Topics, listen: &str, extra: &str) -> PathBuf {
    let cfg = format!(
        "listen = \"{listen}\"\n{extra}\n[kafka]\nbrokers = \"{}\"\nsnapshot_topic = \"{}\"\nenforcement_topic = \"{}\"\n[kafka.properties]\n\"fetch.wait.max.ms\" = \"10\"\n",
        b.bootstrap(),
        t.snapshot,
        t.enforcement
    );
    let p = dir.join("route.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// NGINX on a free port, stopped on drop.
pub struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
    http: ureq::Agent,
}

impl Nginx {
    /// Runs `deploy/nginx/nginx.conf` with the sidecar and the upstream on these ports.
    pub fn start(dir: &Path, sidecar_port: u16, upstream_port: u16) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let shipped = std::fs::read_to_string(scrape::root().join("deploy/nginx/nginx.conf")).unwrap();
        let port = free_port();
        let mut conf = shipped.clone();
        for (from, to) in [
            ("server 127.0.0.1:9465;", format!("server 127.0.0.1:{sidecar_port};")),
            ("server 127.0.0.1:8080;", format!("server 127.0.0.1:{upstream_port};")),
            ("listen 127.0.0.1:8000;", format!("listen 127.0.0.1:{port};")),
        ] {
            assert!(conf.contains(from), "deploy/nginx/nginx.conf no longer has `{from}`");
            conf = conf.replace(from, &to);
        }
        // Paths a packaged NGINX would take from /var; here they stay in the test's directory.
        let d = dir.display();
        let local =
            format!("daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n");
        let temp = format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n    fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n    scgi_temp_path {d}/tmp/scgi;\n"
        );
        conf = format!("{local}{}", conf.replacen("http {\n", &temp, 1));
        std::fs::write(dir.join("nginx.conf"), &conf).unwrap();
        let child = Command::new(binary())
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let http = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build(),
        );
        let n = Nginx { child, port, dir, http };
        crate::support::kafka::wait_for(10, "NGINX to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        n
    }

    /// GET / as `agent` with `risk`: the status, and the `x-driftgate-lane` and
    /// `x-driftgate-reason` headers NGINX sent back.
    pub fn get(&self, agent: &str, risk: &str) -> (u16, Option<String>, Option<String>) {
        let r = self
            .http
            .get(&format!("http://127.0.0.1:{}/", self.port))
            .header("x-driftgate-agent", agent)
            .header("x-driftgate-risk", risk)
            .call()
            .unwrap_or_else(|e| panic!("NGINX did not answer: {e}\n{}", self.error_log()));
        let h = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).map(String::from);
        (r.status().as_u16(), h("x-driftgate-lane"), h("x-driftgate-reason"))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nginx error log ---\n{}", self.error_log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guarded service: answers 200 and counts requests per agent, with the lane NGINX passed.
pub struct Upstream {
    port: u16,
    seen: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

impl Upstream {
    /// Listens on a free port, one thread per connection (NGINX keeps a few alive).
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut w = match conn.try_clone() {
                        Ok(w) => w,
                        Err(_) => return,
                    };
                    let mut r = BufReader::new(conn);
                    loop {
                        let mut headers = BTreeMap::new();
                        let mut line = String::new();
                        let mut first = true;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() && !first {
                                break;
                            }
                            first = false;
                            if let Some((k, v)) = l.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                            }
                        }
                        let agent = headers.get("x-driftgate-agent").cloned().unwrap_or_default();
                        let lane = headers.get("x-driftgate-lane").cloned().unwrap_or_default();
                        s.lock().unwrap().entry(agent).or_default().push(lane.clone());
                        let body = format!("upstream ok, lane {lane}\n");
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream { port, seen }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests that reached it for `agent`.
    pub fn requests_for(&self, agent: &str) -> usize {
        self.seen.lock().unwrap().get(agent).map_or(0, Vec::len)
    }

    /// The lanes NGINX passed on with `agent`'s requests.
    pub fn lanes_for(&self, agent: &str) -> Vec<String> {
        self.seen.lock().unwrap().get(agent).cloned().unwrap_or_default()
    }
}
