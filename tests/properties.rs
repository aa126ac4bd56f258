//! Properties that must hold for any input, checked on generated ones (proptest):
//! the WAV reader, the config parser, the control protocol, the tool-call parser and
//! the allow-list matcher. Each runs a bounded number of cases (`CASES`), a few
//! seconds in all, so CI runs them every time; a failure prints the smallest input
//! that breaks the property.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{json, Value};
use voxd::tools::{allowed_by, is_entity_id, parse_call, Rejected, Target, ToolCall, ToolConfig};

/// Cases per property: enough to find the shallow bugs every run, bounded for CI.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------- WAV reader

/// A WAV file's bytes: any channel count voxd reads, any rate in its range, any
/// sample format, any length.
fn wav_bytes() -> impl Strategy<Value = (Vec<u8>, u16, u32, usize)> {
    let format = prop_oneof![Just((hound::SampleFormat::Int, 8u16)), Just((hound::SampleFormat::Int, 16)), Just((hound::SampleFormat::Int, 24)), Just((hound::SampleFormat::Int, 32)), Just((hound::SampleFormat::Float, 32))];
    (1u16..=2, 8_000u32..=48_000, format, 1usize..3000, any::<u64>()).prop_map(|(channels, rate, (sample_format, bits), frames, seed)| {
        let spec = hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format };
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        let mut x = seed;
        for _ in 0..frames * channels as usize {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0; // [-1, 1)
            match (sample_format, bits) {
                (hound::SampleFormat::Float, _) => w.write_sample(unit as f32).unwrap(),
                (_, 8) => w.write_sample((unit * 127.0) as i8).unwrap(),
                (_, 16) => w.write_sample((unit * 32767.0) as i16).unwrap(),
                (_, 24) => w.write_sample((unit * 8_388_607.0) as i32).unwrap(),
                _ => w.write_sample((unit * 2_147_483_647.0) as i32).unwrap(),
            }
        }
        w.finalize().unwrap();
        (cursor.into_inner(), channels, rate, frames)
    })
}

fn read(dir: &tempfile::TempDir, bytes: &[u8]) -> (std::path::PathBuf, Result<voxd::audio::Clip, voxd::audio::AudioError>) {
    let path = dir.path().join("x.wav");
    std::fs::write(&path, bytes).unwrap();
    let clip = voxd::audio::read_wav(&path, voxd::audio::ASR_RATE_HZ);
    (path, clip)
}

proptest! {
    #![proptest_config(config())]

    /// Any WAV voxd claims to read is read: the clip lasts as long as the file
    /// (to a sample), and holds finite audio.
    #[test]
    fn every_supported_wav_is_read_at_its_length((bytes, _channels, rate, frames) in wav_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let (_, clip) = read(&dir, &bytes);
        let clip = clip.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected = frames as u64 * 16_000 / rate as u64;
        prop_assert_eq!(clip.samples.len() as u64, expected);
        prop_assert!(clip.samples.iter().all(|s| s.is_finite()));
    }

    /// A WAV cut anywhere, or with bytes overwritten anywhere, is read or refused
    /// with an error naming the file — never a panic.
    #[test]
    fn a_damaged_wav_is_refused_naming_it((bytes, ..) in wav_bytes(), cut in any::<prop::sample::Index>(), hits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = bytes[..cut.index(bytes.len() + 1)].to_vec();
        for (at, byte) in hits {
            if !damaged.is_empty() {
                let i = at.index(damaged.len());
                damaged[i] = byte;
            }
        }
        let (path, clip) = read(&dir, &damaged);
        if let Err(e) = clip {
            prop_assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
    }

    /// Bytes that are no WAV at all: the same.
    #[test]
    fn arbitrary_bytes_are_refused_naming_the_file(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let (path, clip) = read(&dir, &bytes);
        if let Err(e) = clip {
            prop_assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        }
    }
}

// ---------------------------------------------------------------- config parser

/// A line of something TOML-shaped: sections voxd knows and does not, keys it
/// knows and does not, values of every type — so the checks behind the syntax are
/// reached, not only the syntax error.
fn config_line() -> impl Strategy<Value = String> {
    let sections: Vec<String> = voxd::config::SECTIONS.iter().map(|(s, _)| s.to_string()).chain(["wakeword".to_string(), "asr.deep".into()]).collect();
    let keys: Vec<String> = voxd::config::SECTIONS.iter().flat_map(|(_, fields)| fields.iter().map(|f| f.to_string())).chain(["languge".to_string(), "token".into(), "\"quoted key\"".into()]).collect();
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z ./*]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[1, \"two\", 3.0]".to_string()),
        Just("{ type = \"object\", properties = {} }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"unterminated".to_string()),
        Just("= =".to_string()),
    ];
    prop_oneof![
        prop::sample::select(sections.clone()).prop_map(|s| format!("[{s}]")),
        prop::sample::select(vec!["[[tool]]".to_string(), "[[intent]]".into(), "[[asr]]".into()]),
        (prop::sample::select(keys), value).prop_map(|(k, v)| format!("{k} = {v}")),
        "[^\n]{0,20}",
    ]
}

/// Every problem's place is in the text: a line that exists, a column within it.
fn places_are_real(text: &str, errors: &voxd::config::ConfigErrors) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(!errors.problems.is_empty());
    for p in &errors.problems {
        prop_assert!(p.line >= 1 && p.line <= lines.len(), "line {} of {}: {p:?}", p.line, lines.len());
        prop_assert!(p.column >= 1 && p.column <= lines[p.line - 1].chars().count() + 1, "column {} of {:?}: {p:?}", p.column, lines[p.line - 1]);
        prop_assert!(!p.key.is_empty() && !p.message.is_empty(), "{p:?}");
    }
    let shown = errors.to_string();
    let first = &errors.problems[0];
    prop_assert!(shown.contains(&format!("voxd.toml:{}:{}: ", first.line, first.column)), "{shown}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any text: a config or problems, each placed — never a panic.
    #[test]
    fn any_text_parses_or_every_problem_has_its_line_and_column(text in "\\PC{0,200}") {
        if let Err(e) = voxd::config::Config::parse(&text, Path::new("voxd.toml")) {
            places_are_real(&text, &e)?;
        }
    }

    /// TOML-shaped text, with the sections, keys and value types voxd knows mixed
    /// with ones it does not: the same.
    #[test]
    fn toml_shaped_configs_parse_or_every_problem_has_its_line_and_column(lines in prop::collection::vec(config_line(), 0..16)) {
        let text = lines.join("\n");
        if let Err(e) = voxd::config::Config::parse(&text, Path::new("voxd.toml")) {
            places_are_real(&text, &e)?;
        }
    }
}

// ---------------------------------------------------------------- control protocol

fn request() -> impl Strategy<Value = voxd::control::Request> {
    use voxd::control::Request;
    prop_oneof![
        Just(Request::Status),
        Just(Request::Mute),
        Just(Request::Unmute),
        Just(Request::Cancel),
        any::<bool>().prop_map(|down| Request::PushToTalk { down }),
        "\\PC{0,40}".prop_map(|text| Request::Ask { text }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// What `voxd ctl` sends is what the socket reads.
    #[test]
    fn every_request_reads_back_as_sent(r in request()) {
        let line = serde_json::to_string(&r).unwrap();
        prop_assert!(!line.contains('\n'), "one request, one line: {line:?}");
        prop_assert_eq!(voxd::control::Request::parse(&line), Ok(r));
    }

    /// Any line a client sends: a request, or an answer saying what is expected.
    #[test]
    fn any_line_is_a_request_or_says_what_a_request_is(line in "\\PC{0,80}") {
        if let Err(e) = voxd::control::Request::parse(&line) {
            prop_assert!(e.starts_with("not a request (") && e.contains("{\"cmd\":\"status\"}"), "{e}");
        }
    }

    /// JSON objects with commands voxd knows and does not, and fields of any type.
    #[test]
    fn json_objects_are_requests_only_when_they_are_right(cmd in prop::sample::select(vec!["status", "mute", "unmute", "push_to_talk", "ask", "cancel", "reboot", ""]), field in prop::sample::select(vec!["down", "text", "other"]), value in prop_oneof![Just(json!(true)), Just(json!("words")), Just(json!(3)), Just(json!(null)), Just(json!([1]))]) {
        let mut object = serde_json::Map::new();
        object.insert("cmd".into(), json!(cmd));
        object.insert(field.to_string(), value.clone());
        let line = Value::Object(object).to_string();
        match voxd::control::Request::parse(&line) {
            Ok(voxd::control::Request::PushToTalk { down }) => prop_assert!(cmd == "push_to_talk" && field == "down" && value == json!(down)),
            Ok(voxd::control::Request::Ask { text }) => prop_assert!(cmd == "ask" && field == "text" && value == json!(text)),
            Ok(_) => prop_assert!(["status", "mute", "unmute", "cancel"].contains(&cmd)),
            Err(e) => prop_assert!(e.starts_with("not a request"), "{e}"),
        }
    }
}

// ---------------------------------------------------------------- tool calls and allow-lists

fn light_tool(allow: Vec<String>) -> ToolConfig {
    ToolConfig {
        name: "light_turn_on".into(),
        description: "Turn a light on".into(),
        executor: "home_assistant".into(),
        service: "light.turn_on".into(),
        parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" }, "brightness_pct": { "type": "integer", "minimum": 1, "maximum": 100 } }, "required": ["entity_id"] }),
        allow,
        ..ToolConfig::default()
    }
}

/// Strings near entity ids: their letters, the separators that would lead
/// elsewhere, case, spaces, commas, percent signs.
fn near_entity() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,6}\\.[a-z0-9_]{1,8}", "[a-zA-Z0-9_./, %\\-]{0,16}", "\\PC{0,12}",]
}

/// Allow-list patterns: exact names, stars anywhere, stars alone.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,6}\\.[a-z_*]{1,6}", "[a-z*]{0,4}\\.?[a-z*]{0,4}", Just("*".to_string()), Just("*.*".to_string()), Just("light.*".to_string())]
}

/// What `glob` must do, written another way: `*` is any run of bytes other than
/// `separators`; everything else is itself.
fn oracle(pattern: &str, value: &str, separators: &str) -> bool {
    let class = format!("[^{}]*", regex::escape(separators));
    let body: Vec<String> = pattern.split('*').map(regex::escape).collect();
    regex::Regex::new(&format!("^(?s:{})$", body.join(&class))).unwrap().is_match(value)
}

/// Home Assistant's entity id, written as a regular expression.
fn entity_id_oracle(id: &str) -> bool {
    let part = "[a-z0-9](?:[a-z0-9_]*[a-z0-9])?";
    regex::Regex::new(&format!("^{part}\\.{part}$")).unwrap().is_match(id) && !id.split('.').next().unwrap().contains("__")
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a model writes: a validated call of a tool that exists, or a reason.
    #[test]
    fn any_model_output_is_a_valid_call_or_a_reason(text in prop_oneof!["\\PC{0,60}", "\\{\"name\": \"(light_turn_on|fly)\", \"arguments\": \\{\"entity_id\": \"[a-z.]{0,10}\"(, \"brightness_pct\": -?[0-9]{1,3})?\\}\\}"]) {
        let tools = [light_tool(vec!["light.*".into()])];
        match parse_call(&text, &tools) {
            Ok((call, tool)) => {
                prop_assert_eq!(&tool.name, "light_turn_on");
                prop_assert!(call.arguments["entity_id"].is_string());
                if let Some(b) = call.arguments.get("brightness_pct") {
                    prop_assert!(b.as_i64().is_some_and(|b| (1..=100).contains(&b)), "{b}");
                }
                // What was accepted reads the same again.
                let again = parse_call(&serde_json::to_string(&call).unwrap(), &tools);
                prop_assert_eq!(again.map(|(c, _)| c), Ok(call.clone()));
            }
            Err(Rejected::Invalid(why)) => prop_assert!(!why.is_empty()),
            // A number out of its range is the call as asked (voxd says the range).
            Err(Rejected::OutOfRange { tool, parameter, call, .. }) => {
                prop_assert_eq!((tool.as_str(), parameter.as_str()), ("light_turn_on", "brightness_pct"));
                prop_assert!(call.arguments["brightness_pct"].as_i64().is_some_and(|b| !(1..=100).contains(&b)), "{}", call.arguments);
            }
            Err(other) => prop_assert!(false, "parsing never decides the allow-list: {other:?}"),
        }
    }

    /// Nothing that is not `domain.object_id` is ever permitted for a Home Assistant
    /// tool, whatever its allow-list says.
    #[test]
    fn only_entity_ids_are_ever_permitted(target in near_entity(), allow in prop::collection::vec(pattern(), 1..4), as_list in any::<bool>()) {
        let tool = light_tool(allow);
        let arguments = if as_list { json!({ "entity_id": [target.clone()] }) } else { json!({ "entity_id": target.clone() }) };
        let call = ToolCall { name: tool.name.clone(), arguments };
        if tool.permits(&call).is_ok() {
            prop_assert!(is_entity_id(&target), "{target:?} was permitted by {:?}", tool.allow);
            prop_assert!(tool.allow.iter().any(|p| allowed_by(p, &target, Target::Entity)));
        }
    }

    /// `is_entity_id` is Home Assistant's entity id and nothing else.
    #[test]
    fn entity_ids_are_exactly_the_documented_shape(id in near_entity()) {
        prop_assert_eq!(is_entity_id(&id), entity_id_oracle(&id), "{:?}", id);
    }

    /// `*` never matches across a `.` or `/` in an entity id (nor a `/`, `?` or `#`
    /// in a URL, nor a level in a topic): the matcher is exactly the glob it is
    /// documented to be, so a pattern's dots are the value's dots.
    #[test]
    fn a_star_stays_inside_its_segment(pattern in "[ab.*/?#]{0,8}", value in "[ab./?#]{0,10}") {
        for (target, separators) in [(Target::Entity, "./"), (Target::Url, "/?#"), (Target::Topic, "/")] {
            let topic_filter = target == Target::Topic && (pattern.contains('+') || pattern.contains('#'));
            if topic_filter {
                continue; // MQTT's own wildcards: below
            }
            let matched = allowed_by(&pattern, &value, target);
            prop_assert_eq!(matched, oracle(&pattern, &value, separators), "{:?} vs {:?} as {:?}", pattern, value, target);
            if matched && target == Target::Entity {
                prop_assert_eq!(pattern.matches('.').count(), value.matches('.').count());
            }
        }
    }

    /// MQTT filters: `+` is one whole level, `#` the rest; a match never adds or
    /// drops a level other than through `#`.
    #[test]
    fn topic_filters_match_levels(filter in prop::collection::vec(prop_oneof![Just("+".to_string()), Just("#".to_string()), "[ab]{1,2}"], 1..5), topic in prop::collection::vec("[ab]{1,2}", 1..6)) {
        let (filter, topic) = (filter.join("/"), topic.join("/"));
        if allowed_by(&filter, &topic, Target::Topic) {
            let f: Vec<&str> = filter.split('/').collect();
            let t: Vec<&str> = topic.split('/').collect();
            let hash = f.iter().position(|l| *l == "#");
            match hash {
                Some(h) => prop_assert!(t.len() >= h),
                None => prop_assert_eq!(f.len(), t.len()),
            }
            for (fl, tl) in f.iter().zip(&t).take(hash.unwrap_or(usize::MAX)) {
                prop_assert!(*fl == "+" || fl == tl, "{filter} matched {topic}");
            }
        }
    }
}

/// (A check of the oracle itself: it must be able to say no.)
#[test]
fn the_glob_oracle_can_refuse() {
    assert!(oracle("light.*", "light.kitchen", "./"));
    assert!(!oracle("light.*", "light.a.b", "./"));
    assert!(!oracle("sensor.*", "sensor.x/../lock.front_door", "./"));
    assert!(entity_id_oracle("light.kitchen") && !entity_id_oracle("light._x") && !entity_id_oracle("li__ght.x"));
}
