//! Which of the home's devices a request names. A small model choosing one id from a
//! list of sixty picks by position and habit as much as by the words ("switch off
//! the under cabinet lights" → the blinds); told which devices the words name, it
//! picks among those. The hint follows the user's words in the prompt — the same way
//! in the example turns, so the model knows it — and only when the words name a
//! device: a request for a device the home lacks gets no hint, and the model says so.

use super::{phrases, Home, ToolConfig};

/// At most this many devices are named in a hint: the best-matching ones.
const MOST: usize = 3;

/// Words that say what to do or are only grammar: they name no device.
const NOT_NAMES: &[&str] = &[
    "a", "all", "an", "and", "any", "are", "at", "be", "can", "close", "could", "degree", "do", "doe", "for", "get", "how", "in", "is", "it", "lock", "locked",
    "make", "me", "my", "now", "of", "off", "on", "open", "opened", "please", "put", "set", "shut", "switch", "tell", "the", "to", "turn", "unlock", "up", "down",
    "what", "whats", "will", "would", "you", "your",
];

/// Words for kinds of device: they tell devices of a name apart ("kitchen light" from
/// "kitchen speaker") but name none alone ("the light in the shed").
const KINDS: &[&str] = &["light", "lamp", "switch", "plug", "fan", "thermostat", "heating", "speaker", "door", "window", "blind", "cover", "sensor", "room"];

/// The user's words as the model gets them — in real requests, the evaluation's and
/// the example turns alike: hinted when `[tools] device_hints` is on, else alone.
pub fn asked(said: &str, tools: &[ToolConfig], home: &Home, hints: bool) -> String {
    if hints {
        with_hint(said, tools, home)
    } else {
        said.to_string()
    }
}

/// The user's words said in `room` (a satellite's), as the model gets them: when
/// they name a kind of device but no device ("turn on the light"), the room's devices
/// of that kind are hinted — the light said in the kitchen is the kitchen's — and the
/// room is named.
pub fn asked_in(said: &str, room: &str, tools: &[ToolConfig], home: &Home, hints: bool) -> String {
    let asked = asked(said, tools, home, hints);
    let names_a_kind = words(said).any(|w| KINDS.contains(&w.as_str()));
    if hints && asked == said && names_a_kind {
        let named = devices_named(&format!("{said} {room}"), tools, home);
        if !named.is_empty() {
            return format!("{said}\n(Devices named: {}.)\n(Said in the {room}.)", named.join(", "));
        }
    }
    format!("{asked}\n(Said in the {room}.)")
}

/// The user's words as the model sees them: with a line naming the devices they
/// match, when they match any the tools may touch.
pub fn with_hint(said: &str, tools: &[ToolConfig], home: &Home) -> String {
    let named = devices_named(said, tools, home);
    if named.is_empty() {
        return said.to_string();
    }
    // Ids alone: their names are in the tool list already, and every example turn
    // carries a hint too (a prompt of sixty devices is near a small context's end).
    format!("{said}\n(Devices named: {}.)", named.join(", "))
}

/// The entity ids (of Home Assistant tools: those the prompt lists) whose names share
/// the most words with `said`, best first; none when no word is shared.
pub fn devices_named(said: &str, tools: &[ToolConfig], home: &Home) -> Vec<String> {
    let wanted: Vec<String> = words(said).filter(|w| !NOT_NAMES.contains(&w.as_str())).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut ids: Vec<String> = Vec::new();
    for tool in tools.iter().filter(|t| t.executor.starts_with("home_assistant")) {
        for id in phrases::entities_of(tool, &home.entities) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut scored: Vec<((usize, usize), usize, String)> = ids
        .into_iter()
        .filter_map(|id| {
            let object = id.split_once('.').map_or(id.as_str(), |(_, o)| o).replace('_', " ");
            let mut name: Vec<String> = words(&phrases::spoken_name(&id, &home.names)).chain(words(&object)).collect();
            name.sort();
            name.dedup();
            let shared = |kind: bool| wanted.iter().filter(|w| KINDS.contains(&w.as_str()) == kind && name.contains(w)).count();
            let (names, kinds) = (shared(false), shared(true));
            (names > 0).then(|| ((names, kinds), name.len(), id))
        })
        .collect();
    let best = scored.iter().map(|s| s.0).max().unwrap_or_default();
    scored.retain(|s| s.0 == best);
    // Of equal matches, the one with the fewest other words is the one meant most plainly.
    scored.sort_by_key(|s| s.1);
    scored.into_iter().take(MOST).map(|s| s.2).collect()
}

/// Lowercase words, letters and digits only, a plural's "s" dropped ("lights" is
/// "light", "blinds" "blind"; "glass" stays).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit())).map(|w| {
        let w = w.to_lowercase();
        match w.strip_suffix('s') {
            Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_string(),
            _ => w,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, allow: &[&str]) -> ToolConfig {
        ToolConfig {
            name: name.into(),
            executor: "home_assistant".into(),
            service: "light.turn_on".into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..ToolConfig::default()
        }
    }

    fn home() -> Home {
        let entities = ["light.kitchen_under_cabinet", "light.lr_lamp_1", "light.kitchen", "cover.lr_blinds", "cover.skylight", "switch.sauna", "sensor.kitchen_temperature"];
        let names = phrases::FriendlyNames::from([
            ("light.kitchen_under_cabinet".to_string(), "Under Cabinet Lights".to_string()),
            ("light.lr_lamp_1".to_string(), "Reading Lamp".to_string()),
            ("cover.lr_blinds".to_string(), "Living Room Blinds".to_string()),
        ]);
        Home { entities: entities.iter().map(|e| e.to_string()).collect(), names }
    }

    #[test]
    fn the_devices_the_words_name_and_only_those() {
        let tools = [tool("light_off", &["light.*"]), tool("cover", &["cover.*"]), tool("plug", &["switch.*"]), tool("read", &["sensor.*"])];
        let home = home();
        let named = |said: &str| devices_named(said, &tools, &home);
        assert_eq!(named("Switch off the under cabinet lights."), ["light.kitchen_under_cabinet"]);
        assert_eq!(named("Open the skylight."), ["cover.skylight"]);
        assert_eq!(named("Turn off the sauna."), ["switch.sauna"]);
        assert_eq!(named("Turn on the reading lamp"), ["light.lr_lamp_1"], "by its friendly name, unlike its id");
        assert_eq!(named("Turn on the kitchen light."), ["light.kitchen", "light.kitchen_under_cabinet"], "the plainest of the kitchen's lights first");
        assert_eq!(named("How warm is the kitchen?"), ["light.kitchen", "sensor.kitchen_temperature", "light.kitchen_under_cabinet"]);
        assert!(named("Turn on the light in the shed.").is_empty(), "no such device: no hint");
        assert!(named("What is the capital of France?").is_empty());
        assert!(named("Set it to 21 degrees.").is_empty());
        let hinted = with_hint("Lower the living room blinds.", &tools, &home);
        assert_eq!(hinted, "Lower the living room blinds.\n(Devices named: cover.lr_blinds.)");
        assert_eq!(with_hint("Hello.", &tools, &home), "Hello.");
    }

    #[test]
    fn a_device_said_without_its_room_is_the_rooms_where_it_was_said() {
        let tools = [tool("light_on", &["light.*"]), tool("read", &["sensor.*"])];
        let home = home();
        let hint = |said: &str, room: &str| asked_in(said, room, &tools, &home, true);
        assert_eq!(hint("Turn on the light.", "kitchen"), "Turn on the light.\n(Devices named: light.kitchen, light.kitchen_under_cabinet.)\n(Said in the kitchen.)");
        // Words that name a device keep their own hint; the room is only told.
        assert_eq!(hint("Open the skylight.", "kitchen"), "Open the skylight.\n(Said in the kitchen.)", "no skylight tool: no hint");
        assert_eq!(hint("Turn on the reading lamp.", "kitchen"), "Turn on the reading lamp.\n(Devices named: light.lr_lamp_1.)\n(Said in the kitchen.)");
        assert_eq!(hint("What time is it?", "kitchen"), "What time is it?\n(Said in the kitchen.)");
        assert_eq!(asked_in("Turn on the light.", "kitchen", &tools, &home, false), "Turn on the light.\n(Said in the kitchen.)");
    }
}
