//! A Home Assistant REST endpoint on 127.0.0.1, for voxd's tests and `voxd
//! bench-tools` (Home Assistant itself does not install everywhere): it answers
//! `POST /api/services/<domain>/<service>`, `GET /api/states/<entity_id>` and the
//! list of every state, `GET /api/states`, as Home Assistant does, checks the bearer token as Home Assistant does (401
//! otherwise), records every request, and can be told to misbehave — answer with an
//! error status, too slowly, with a body of the test's choosing or one without end,
//! or not at all. It also takes webhooks: any request under `/hook/`
//! is recorded and answered 200 without a token.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the endpoint saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// How the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    Normal,
    /// Every request gets this status (500, 503, ...).
    Status(u16),
    /// Answers after this long (to outlast a tool's timeout).
    Slow(Duration),
    /// Answers 200 with this body (not JSON, JSON without a state, ...).
    Body(&'static str),
    /// Reads the request and closes the connection without a word.
    Hangup,
    /// Answers 200 with a body that does not end (a JSON object whose state goes on
    /// and on) until the client hangs up, or 256 MiB.
    Endless,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    states: HashMap<String, String>,
    /// Friendly names, by entity id.
    names: HashMap<String, String>,
    /// (needle, behaviour): requests whose path or body contains the needle get it.
    faults: Vec<(String, Behaviour)>,
    /// Bytes of endless answers written before their clients hung up.
    endless_bytes: usize,
}

pub struct LocalHomeAssistant {
    addr: SocketAddr,
    token: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl LocalHomeAssistant {
    /// Serves on a free loopback port, accepting `token`.
    pub fn start(token: &str) -> std::io::Result<LocalHomeAssistant> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_state, thread_stop, expected) = (state.clone(), stop.clone(), format!("Bearer {token}"));
        std::thread::Builder::new().name("local-ha".into()).spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::Acquire) {
                    break;
                }
                let (state, expected) = (thread_state.clone(), expected.clone());
                if let Ok(stream) = stream {
                    std::thread::spawn(move || serve(stream, &state, &expected));
                }
            }
        })?;
        Ok(LocalHomeAssistant { addr, token: token.to_string(), state, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("endpoint state").requests.clone()
    }

    /// Requests whose path or body mention `needle` ("light.kitchen") get `b`; the
    /// others are answered normally.
    pub fn set_fault(&self, needle: &str, b: Behaviour) {
        self.state.lock().expect("endpoint state").faults.push((needle.into(), b));
    }

    /// Bytes of `Behaviour::Endless` answers written so far (what the clients took,
    /// and what their sockets' buffers held when they hung up).
    pub fn endless_bytes_sent(&self) -> usize {
        self.state.lock().expect("endpoint state").endless_bytes
    }

    /// What `GET /api/states/<entity_id>` answers (default "on").
    pub fn set_state(&self, entity_id: &str, state: &str) {
        self.state.lock().expect("endpoint state").states.insert(entity_id.into(), state.into());
    }

    /// An entity of the home, with its friendly name (listed by `GET /api/states`).
    pub fn add_entity(&self, entity_id: &str, state: &str, friendly_name: &str) {
        let mut s = self.state.lock().expect("endpoint state");
        s.states.insert(entity_id.into(), state.into());
        s.names.insert(entity_id.into(), friendly_name.into());
    }
}

impl Drop for LocalHomeAssistant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, expected_auth: &str) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let behaviour = {
        let mut s = state.lock().expect("endpoint state");
        let fault = s.faults.iter().find(|(needle, _)| path.contains(needle.as_str()) || body.contains(needle.as_str())).map(|(_, b)| *b);
        s.requests.push(Recorded { method: method.clone(), path: path.clone(), authorization: authorization.clone(), body });
        fault.unwrap_or(Behaviour::Normal)
    };
    let (status, answer) = match behaviour {
        Behaviour::Endless => {
            let sent = endless(&stream);
            state.lock().expect("endpoint state").endless_bytes += sent;
            return;
        }
        Behaviour::Normal if path.starts_with("/hook/") => (200, "{\"ok\": true}".to_string()),
        _ if authorization.as_deref() != Some(expected_auth) && !path.starts_with("/hook/") => (401, "{\"message\": \"Invalid authentication\"}".to_string()),
        Behaviour::Status(code) => (code, "{\"message\": \"error\"}".to_string()),
        Behaviour::Body(body) => (200, body.to_string()),
        Behaviour::Hangup => return,
        Behaviour::Slow(d) => {
            std::thread::sleep(d);
            (200, "[]".to_string())
        }
        Behaviour::Normal => match (method.as_str(), path.strip_prefix("/api/states/")) {
            ("GET", Some(entity)) => {
                let value = state.lock().expect("endpoint state").states.get(entity).cloned().unwrap_or_else(|| "on".into());
                (200, serde_json::json!({ "entity_id": entity, "state": value, "attributes": {} }).to_string())
            }
            ("GET", None) if path == "/api/states" => {
                let s = state.lock().expect("endpoint state");
                let mut ids: Vec<&String> = s.states.keys().collect();
                ids.sort();
                let list: Vec<serde_json::Value> = ids.into_iter().map(|id| serde_json::json!({ "entity_id": id, "state": s.states[id], "attributes": { "friendly_name": s.names.get(id) } })).collect();
                (200, serde_json::Value::Array(list).to_string())
            }
            ("POST", _) if path.starts_with("/api/services/") => (200, "[]".to_string()),
            _ => (404, "{\"message\": \"not found\"}".to_string()),
        },
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let mut stream = stream;
    let _ = write!(stream, "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len());
}

/// Writes an answer that does not end, until the client hangs up; returns the bytes written.
fn endless(mut stream: &TcpStream) -> usize {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"state\": \"";
    if stream.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let (chunk, mut sent) = ([b'a'; 64 * 1024], head.len());
    while sent < 256 << 20 {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}
