//! Cuts the LLM's token stream into pieces that can be spoken as soon as they are
//! complete: sentences, and, for the first piece of a reply, a long enough clause or
//! phrase — so the voice starts before the model has finished thinking.

/// Stateful splitter: feed text pieces with `push`, collect speakable pieces.
#[derive(Debug, Default)]
pub struct Splitter {
    pending: String,
    emitted: usize,
    /// The first piece may end mid-sentence, before a word that starts a phrase,
    /// once it has this many words (0: never; see `phrase_cut`).
    first_phrase_words: usize,
    /// The first piece emitted was a phrase cut.
    first_runs_on: bool,
}

/// A clause (ending in , ; :) is spoken on its own only as the first piece of a
/// reply and only when it has at least this many words: shorter ones sound clipped.
const MIN_CLAUSE_WORDS: usize = 4;

/// Words a spoken phrase starts with: a verb after its subject, a preposition, a
/// conjunction. Cutting before one ("The capital of Italy | is Rome.") falls where a
/// speaker may pause; cutting anywhere else splits a phrase ("The capital of | Italy").
/// ("of", and particles like "on" and "up", stay with the word before them.)
const PHRASE_STARTS: &[&str] = &[
    "is", "are", "was", "were", "will", "would", "can", "could", "should", "has", "have", "had", //
    "and", "but", "or", "so", "because", "which", "that", "when", "while", "if", "where", //
    "in", "at", "to", "for", "with", "from", "by", "about", "into", "after", "before", "until", "since", "during",
];

impl Splitter {
    /// A splitter whose first piece may be a phrase of `first_phrase_words` words or
    /// more (0: a sentence or a long clause only).
    pub fn new(first_phrase_words: usize) -> Splitter {
        Splitter { first_phrase_words, ..Splitter::default() }
    }

    /// A whole text (known at once, not generated) cut into its pieces; the splitter is
    /// returned for `first_runs_on`.
    pub fn whole(text: &str, first_phrase_words: usize) -> (Vec<String>, Splitter) {
        let mut splitter = Splitter::new(first_phrase_words);
        let mut pieces = splitter.push(text);
        pieces.extend(splitter.finish());
        (pieces, splitter)
    }

    /// Adds generated text; returns the pieces it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while let Some((end, phrase)) = self.boundary() {
            let piece: String = self.pending.drain(..end).collect();
            if let Some(p) = clean(&piece) {
                out.push(p);
                if self.emitted == 0 {
                    self.first_runs_on = phrase;
                }
                self.emitted += 1;
            }
        }
        out
    }

    /// The reply's first piece was a phrase cut mid-sentence: the next piece
    /// continues it, and the voice should not pause between them as at a full stop.
    pub fn first_runs_on(&self) -> bool {
        self.first_runs_on
    }

    /// Adds generated text without cutting it: `finish` returns it all as one piece.
    pub fn hold(&mut self, text: &str) {
        self.pending.push_str(text);
    }

    /// The rest, when generation ends.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let p = clean(&rest);
        if p.is_some() {
            self.emitted += 1;
        }
        p
    }

    /// Byte index just past the first complete piece in `pending`, if any, and
    /// whether it is a phrase cut: the first punctuation boundary or, for a reply's
    /// first piece, the first phrase cut.
    fn boundary(&self) -> Option<(usize, bool)> {
        let phrase = if self.emitted == 0 && self.first_phrase_words > 0 { phrase_cut(&self.pending, self.first_phrase_words) } else { None };
        match (self.punctuation(), phrase) {
            (Some(a), Some(b)) if a <= b => Some((a, false)),
            (_, Some(b)) => Some((b, true)),
            (a, None) => a.map(|a| (a, false)),
        }
    }

    /// The first boundary at punctuation: sentence punctuation followed by whitespace,
    /// or at the very end of what has arrived when it cannot be anything else: '!' and
    /// '?' always, '.' after a word that is no abbreviation (a '.' after a digit may be
    /// "3.5" and waits for the next token). Waiting one token less matters: it is on the path to the first sound.
    fn punctuation(&self) -> Option<usize> {
        let s = &self.pending;
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            let end = i + c.len_utf8();
            match c {
                '\n' if !s[..i].trim().is_empty() => return Some(end),
                '!' | '?' if next.map_or(true, char::is_whitespace) => return Some(end),
                '.' if next.is_some_and(char::is_whitespace) && !is_abbreviation(&s[..i]) => return Some(end),
                '.' if next.is_none() && s[..i].ends_with(|p: char| p.is_alphabetic()) && !is_abbreviation(&s[..i]) => return Some(end),
                ',' | ';' | ':' if self.emitted == 0 && next.is_some_and(char::is_whitespace) && s[..i].split_whitespace().count() >= MIN_CLAUSE_WORDS => {
                    return Some(end)
                }
                _ => {}
            }
        }
        None
    }
}

/// Words a phrase cannot end with: they lean on the word after them.
const LEANING: &[&str] = &["a", "an", "the", "of", "my", "your", "our", "their", "his", "her", "its", "this", "these", "those", "some", "no", "not", "very"];

/// Byte index of the first whitespace, with at least `min_words` words before it,
/// that a word of `PHRASE_STARTS` follows — unless the word before it leans on what
/// comes next ("The sunrise is | at 6" would leave "is" hanging; measured: heard back
/// as "the summer ages"). The end of a first piece that needs no punctuation. The
/// word after may still be growing ("in" of "inside"): the cut is at a word boundary
/// all the same. The words before it are all complete.
fn phrase_cut(s: &str, min_words: usize) -> Option<usize> {
    let is = |list: &[&str], word: &str| list.iter().any(|w| w.eq_ignore_ascii_case(word));
    let (mut words, mut at, mut before) = (0, 0, "");
    while let Some(start) = s[at..].find(|c: char| !c.is_whitespace()).map(|n| at + n) {
        let end = s[start..].find(char::is_whitespace).map_or(s.len(), |n| start + n);
        let word = s[start..end].trim_end_matches(|c: char| !c.is_alphanumeric());
        if words >= min_words && is(PHRASE_STARTS, word) && !is(PHRASE_STARTS, before) && !is(LEANING, before) {
            return Some(at);
        }
        (words, at, before) = (words + 1, end, word);
    }
    None
}

/// "Dr." "Mr." "e.g." "St." end no sentence.
fn is_abbreviation(before_dot: &str) -> bool {
    let word = before_dot.rsplit(|c: char| c.is_whitespace()).next().unwrap_or("");
    let w = word.to_ascii_lowercase();
    matches!(w.as_str(), "mr" | "mrs" | "ms" | "dr" | "st" | "vs" | "e.g" | "i.e" | "etc" | "approx" | "no")
        || (w.len() == 1 && w.chars().all(|c| c.is_ascii_alphabetic()))
}

/// What a voice should not read out: markdown emphasis, headings, list bullets,
/// code ticks, emoji. Returns None for pieces with nothing speakable left.
pub fn clean(piece: &str) -> Option<String> {
    let mut out = String::with_capacity(piece.len());
    for c in piece.chars() {
        match c {
            '*' | '#' | '`' | '_' | '~' | '>' | '|' => {}
            c if is_emoji(c) => {}
            c if c.is_whitespace() => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    let trimmed = out.trim().trim_start_matches(['-', '•']).trim();
    trimmed.chars().any(char::is_alphanumeric).then(|| trimmed.to_string())
}

fn is_emoji(c: char) -> bool {
    matches!(c as u32, 0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0xFE0F | 0x200D)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str]) -> Vec<String> {
        let mut s = Splitter::default();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_their_end_is_certain() {
        let mut s = Splitter::default();
        assert!(s.push("The capital").is_empty());
        assert_eq!(s.push(" is Paris."), vec!["The capital is Paris."], "a word and a dot end a sentence");
        assert!(s.push(" It is 3.").is_empty(), "a dot after a digit may be a decimal point");
        assert!(s.push("5").is_empty());
        assert_eq!(s.push(" degrees! Nice"), vec!["It is 3.5 degrees!"]);
        assert!(s.push(" to see Dr.").is_empty(), "an abbreviation waits");
        assert_eq!(s.push(" Who? Me"), vec!["Nice to see Dr. Who?"]);
        assert_eq!(s.finish().as_deref(), Some("Me"));
    }

    #[test]
    fn a_long_first_clause_is_spoken_early_but_later_clauses_wait() {
        let out = split(&["Sure thing, my friend, ", "the kitchen", " lights are on, ", "and the fan", " too. Anything else?"]);
        assert_eq!(out, vec!["Sure thing, my friend,", "the kitchen lights are on, and the fan too.", "Anything else?"]);
    }

    #[test]
    fn the_first_piece_may_be_a_phrase_cut_before_a_word_that_starts_one() {
        let phrases = |tokens: &[&str]| {
            let mut s = Splitter::new(3);
            let mut out: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
            out.extend(s.finish());
            out
        };
        assert_eq!(phrases(&["The", " capital", " of", " Italy", " is", " Rome", "."]), vec!["The capital of Italy", "is Rome."]);
        assert_eq!(phrases(&["The kitchen lights", " are turned on."]), vec!["The kitchen lights", "are turned on."]);
        assert_eq!(phrases(&["It is", " on. The", " door is", " locked."]), vec!["It is on.", "The door is locked."], "only the first piece; two words are too few");
        assert_eq!(phrases(&["The sunrise is at 6 AM."]), vec!["The sunrise is at 6 AM."], "no piece ends in a word that leans on the next");
        assert_eq!(phrases(&["I set a timer for 10 minutes."]), vec!["I set a timer", "for 10 minutes."]);
        assert_eq!(phrases(&["Sure, the lights", " are on, and", " more."]), vec!["Sure, the lights", "are on, and more."], "a short clause is no piece, a phrase may be");
        assert_eq!(split(&["The capital of Italy is Rome."]), vec!["The capital of Italy is Rome."], "off by default");
        let mut s = Splitter::new(3);
        assert!(s.push("The capital of").is_empty(), "\"of\" starts no phrase");
        assert_eq!(s.push(" Italy is"), vec!["The capital of Italy"], "cut as soon as the next word is seen");
        assert!(s.first_runs_on(), "the first piece runs on into the next");
        let mut s = Splitter::new(3);
        assert_eq!(s.push("Here is what I found\nIt"), vec!["Here is what I found"]);
        assert!(!s.first_runs_on(), "a line ends where it ends, though without punctuation");
        let (pieces, s) = Splitter::whole("I set a timer for 10 minutes. Anything else?", 3);
        assert_eq!(pieces, vec!["I set a timer", "for 10 minutes.", "Anything else?"], "a text known at once is cut as if generated");
        assert!(s.first_runs_on());
    }

    #[test]
    fn numbers_and_abbreviations_do_not_split() {
        let out = split(&["It is 3.5 degrees", " warmer, e.g. in Dr. Smith's room. ", "Done."]);
        assert_eq!(out, vec!["It is 3.5 degrees warmer,", "e.g. in Dr. Smith's room.", "Done."]);
    }

    #[test]
    fn markdown_and_emoji_are_not_read_out() {
        assert_eq!(clean("**Sure!** 😀").as_deref(), Some("Sure!"));
        assert_eq!(clean("- item one").as_deref(), Some("item one"));
        assert_eq!(clean(" 🎉 ** "), None);
    }
}
