//! Wyoming's framing: one JSON header line per event, then `data_length` bytes of
//! JSON data (merged into the header's `data`) and `payload_length` bytes of binary
//! payload (audio) — as the reference implementation (PyPI `wyoming` 1.10) reads and
//! writes them.
//!
//! Every length is bounded before anything is allocated: a header line, its data and
//! its payload each have a limit, and an event over one is an error that closes the
//! connection it came on (and only that one).

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version voxd speaks (the reference's, whose events it implements).
pub const VERSION: &str = "1.10.2";

/// One event: its type, its data and its binary payload (empty when none).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: String,
    pub data: Map<String, Value>,
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        Event { kind: kind.to_string(), data: Map::new(), payload: Vec::new() }
    }

    /// An event with data: `value` must be a JSON object.
    pub fn with_data(kind: &str, value: Value) -> Event {
        let data = match value {
            Value::Object(map) => map,
            other => panic!("event data must be a JSON object, not {other}"),
        };
        Event { kind: kind.to_string(), data, payload: Vec::new() }
    }

    pub fn error(text: impl Into<String>, code: &str) -> Event {
        Event::with_data("error", serde_json::json!({ "text": text.into(), "code": code }))
    }

    /// A string field of the data, if present and a string.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// The most one event may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_bytes: usize,
    pub data_bytes: usize,
    pub payload_bytes: usize,
}

impl Limits {
    /// Ample for every event of the protocol: an `info` or a `synthesize` of a long
    /// text is a few KiB, an audio chunk a few tens.
    pub const SERVED: Limits = Limits { header_bytes: 64 * 1024, data_bytes: 1024 * 1024, payload_bytes: 4 * 1024 * 1024 };
}

/// Why an event could not be read; the connection it came on is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("an event header over {0} bytes (one JSON object per line is expected)")]
    HeaderTooLong(usize),
    #[error("an event's {what} of {length} bytes is over the {limit} allowed")]
    TooLarge { what: &'static str, length: u64, limit: usize },
    #[error("not a Wyoming event header ({0}); expected a JSON object with a string \"type\", e.g. {{\"type\":\"describe\"}}")]
    BadHeader(String),
    #[error("the connection closed in the middle of an event")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the next event; None at the end of the stream (between events).
pub async fn read_event(reader: &mut (impl AsyncBufRead + Unpin), limits: Limits) -> Result<Option<Event>, ProtocolError> {
    let mut line = Vec::new();
    if (&mut *reader).take(limits.header_bytes as u64 + 1).read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > limits.header_bytes {
        return Err(ProtocolError::HeaderTooLong(limits.header_bytes));
    } else {
        return Err(ProtocolError::Truncated);
    }
    let header: Value = serde_json::from_slice(&line).map_err(|e| ProtocolError::BadHeader(e.to_string()))?;
    let Value::Object(mut header) = header else {
        return Err(ProtocolError::BadHeader("the line is JSON but not an object".into()));
    };
    let kind = match header.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(ProtocolError::BadHeader("no string \"type\"".into())),
    };
    let mut data = match header.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return Err(ProtocolError::BadHeader("\"data\" is not an object".into())),
    };
    let data_length = length(&header, "data_length", limits.data_bytes)?;
    if data_length > 0 {
        let bytes = read_exactly(reader, data_length).await?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(more)) => data.extend(more),
            _ => return Err(ProtocolError::BadHeader("the data after the header is not a JSON object".into())),
        }
    }
    let payload_length = length(&header, "payload_length", limits.payload_bytes)?;
    let payload = if payload_length > 0 { read_exactly(reader, payload_length).await? } else { Vec::new() };
    Ok(Some(Event { kind, data, payload }))
}

fn length(header: &Map<String, Value>, key: &'static str, limit: usize) -> Result<usize, ProtocolError> {
    match header.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= limit => Ok(n as usize),
            Some(n) => Err(ProtocolError::TooLarge { what: if key == "data_length" { "data" } else { "payload" }, length: n, limit }),
            None => Err(ProtocolError::BadHeader(format!("\"{key}\" is {v}, not a length"))),
        },
    }
}

async fn read_exactly(reader: &mut (impl AsyncBufRead + Unpin), n: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = vec![0; n];
    match reader.read_exact(&mut bytes).await {
        Ok(_) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProtocolError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Writes an event as the reference does: the header line, then the data, then the
/// payload.
pub async fn write_event(writer: &mut (impl AsyncWrite + Unpin), event: &Event) -> std::io::Result<()> {
    let mut header = Map::new();
    header.insert("type".into(), Value::String(event.kind.clone()));
    header.insert("version".into(), Value::String(VERSION.into()));
    let data = if event.data.is_empty() { Vec::new() } else { serde_json::to_vec(&event.data).expect("JSON values serialise") };
    if !data.is_empty() {
        header.insert("data_length".into(), data.len().into());
    }
    if !event.payload.is_empty() {
        header.insert("payload_length".into(), event.payload.len().into());
    }
    let mut bytes = serde_json::to_vec(&header).expect("JSON values serialise");
    bytes.push(b'\n');
    bytes.extend_from_slice(&data);
    bytes.extend_from_slice(&event.payload);
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    fn read(bytes: &[u8], limits: Limits) -> Result<Option<Event>, ProtocolError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(read_event(&mut BufReader::new(bytes), limits))
    }

    #[test]
    fn an_event_written_reads_back_the_same() {
        let mut event = Event::with_data("audio-chunk", serde_json::json!({"rate": 16000, "width": 2, "channels": 1}));
        event.payload = vec![1, 2, 3, 4];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut bytes = Vec::new();
        rt.block_on(write_event(&mut bytes, &event)).unwrap();
        let header: Value = serde_json::from_slice(&bytes[..bytes.iter().position(|&b| b == b'\n').unwrap()]).unwrap();
        assert_eq!(header["payload_length"], 4);
        assert_eq!(header["version"], VERSION);
        assert_eq!(read(&bytes, Limits::SERVED).unwrap(), Some(event));
    }

    #[test]
    fn data_in_the_header_and_after_it_are_merged() {
        let bytes = b"{\"type\":\"transcribe\",\"data\":{\"language\":\"en\"},\"data_length\":15}\n{\"name\":\"tiny\"}";
        let event = read(bytes, Limits::SERVED).unwrap().unwrap();
        assert_eq!(event.text("language"), Some("en"));
        assert_eq!(event.text("name"), Some("tiny"));
    }

    #[test]
    fn oversized_and_malformed_events_are_errors_that_say_what_is_wrong() {
        let small = Limits { header_bytes: 64, data_bytes: 16, payload_bytes: 16 };
        let long = format!("{{\"type\":\"{}\"}}\n", "x".repeat(100));
        assert!(matches!(read(long.as_bytes(), small), Err(ProtocolError::HeaderTooLong(64))));
        let big = b"{\"type\":\"audio-chunk\",\"payload_length\":1000000}\n";
        let e = read(big, small).unwrap_err();
        assert!(e.to_string().contains("payload of 1000000 bytes is over the 16 allowed"), "{e}");
        assert!(matches!(read(b"hello\n", small), Err(ProtocolError::BadHeader(_))));
        assert!(matches!(read(b"{\"data\":{}}\n", small), Err(ProtocolError::BadHeader(_))));
        assert!(matches!(read(b"{\"type\":\"x\",\"payload_length\":8}\nabc", small), Err(ProtocolError::Truncated)));
        assert!(matches!(read(b"{\"type\":\"x\",\"payload_length\":-1}\n", small), Err(ProtocolError::BadHeader(_))));
        assert_eq!(read(b"", small).unwrap(), None);
    }
}
