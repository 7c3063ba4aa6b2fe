//! Free-text cleaning: what the clean options do to descriptions, comments, SR text and
//! graphic text (PS3.15 E.3.5: "replace with values of similar meaning known not to contain
//! identifying information").
//!
//! A [`TextCleaner`] is built per object from that object's own identifying values and finds,
//! in any text:
//! - those values in any spelling: case, accents and script folded (compatibility
//!   decomposition, marks dropped, lower case; `ß` as `ss`, `ä` also as `ae`), name components
//!   in any order, `^`, comma or space separated, initials next to a name, IDs with or without
//!   separators, the birth date in any date format;
//! - pattern classes that no attribute announces: dates (DICOM and common human formats),
//!   phone numbers, e-mail and web addresses, UID-like and ID-like tokens, person names after a
//!   title or after "patient"/"name", and capitalised given-name + surname pairs from the US
//!   Census 1990 lists (`data/census-1990-*.txt`).
//!
//! Matches become [`REMOVED`]; dates are shifted instead where retain-long-modified-dates asks
//! for it, written in the format they came in. This is a pattern engine, not a guarantee:
//! `docs/deid.md` says what it cannot see.

use std::collections::HashSet;
use std::sync::{LazyLock, OnceLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use regex::{Captures, Regex};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::dates::{is_valid_date, shift_ymd};

/// The neutral marker that stands where identifying text was.
pub const REMOVED: &str = "[removed]";

/// What happens to a date found inside free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePolicy {
    /// Replaced by [`REMOVED`] (the basic profile: dates are not retained).
    Remove,
    /// Moved by this many days, like the date attributes (retain-long-modified-dates).
    Shift(i64),
    /// Kept (retain-long-full-dates). The object's own birth date is removed all the same.
    Keep,
}

/// The identifying values of one object, as found in its attributes.
#[derive(Debug, Default, Clone)]
pub struct OwnValues {
    /// Person names (PN values, `^` and `=` structure intact).
    pub names: Vec<String>,
    /// Identifiers matched with or without separators (patient ID, accession, telephone...).
    pub ids: Vec<String>,
    /// Values matched as a whole phrase (institution, address, department).
    pub phrases: Vec<String>,
    /// Dates that identify (the birth date, DICOM DA): removed in every format under every policy.
    pub dates: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A name component long enough to stand alone.
    Name,
    /// A short name component (two letters, one ideograph): removed only next to a [`Kind::Name`].
    WeakName,
    /// Anything else that is removed.
    Other,
    /// Text left as it is (a kept date), so that no later pattern takes its digits.
    Keep,
    /// A shifted date.
    Shifted,
}

#[derive(Debug, Clone)]
struct Span {
    start: usize,
    end: usize,
    kind: Kind,
    replacement: String,
}

#[derive(Debug)]
struct NamePattern {
    strong: bool,
    /// Scripts written without spaces between words match anywhere, not only at word edges.
    unspaced: bool,
}

/// Finds and replaces identifying content in the free text of one object.
#[derive(Debug)]
pub struct TextCleaner {
    names: Matcher,
    name_info: Vec<NamePattern>,
    initials: Vec<char>,
    ids: Matcher,
    phrases: Matcher,
    own_dates: Vec<(i64, u32, u32)>,
    dates: DatePolicy,
}

impl TextCleaner {
    /// A cleaner for the given values and date policy.
    pub fn new(own: &OwnValues, dates: DatePolicy) -> Self {
        let mut name_patterns: Vec<(String, NamePattern)> = Vec::new();
        let mut initials = Vec::new();
        for value in own.names.iter().map(|v| matchable(v)) {
            for group in value.split('=') {
                for (index, component) in group.split('^').enumerate() {
                    // Prefix and suffix (Dr., Jr.) name nobody; matching them would remove
                    // every title in the text.
                    if index >= 3 {
                        continue;
                    }
                    for word in component.split([' ', ',', '\t']) {
                        let word = word.trim_matches(['.', '\'', '’', '(', ')', '"']);
                        if word.is_empty() {
                            continue;
                        }
                        if index >= 1
                            && let Some(c) = fold(word).chars().find(|c| c.is_alphanumeric())
                            && !initials.contains(&c)
                        {
                            initials.push(c);
                        }
                        let mut parts = vec![word.to_string()];
                        if word.contains(['-', '\'', '’']) {
                            parts.extend(word.split(['-', '\'', '’']).map(str::to_string));
                        }
                        for part in parts {
                            for variant in [part.clone(), expand_umlauts(&part)] {
                                let folded = fold(&variant);
                                let letters =
                                    folded.chars().filter(|c| c.is_alphanumeric()).count();
                                let unspaced = folded.chars().any(is_unspaced_script);
                                let (strong_min, weak_min) = if unspaced { (2, 1) } else { (3, 2) };
                                if letters < weak_min
                                    || name_patterns.iter().any(|(f, _)| *f == folded)
                                {
                                    continue;
                                }
                                name_patterns.push((
                                    folded,
                                    NamePattern {
                                        strong: letters >= strong_min,
                                        unspaced,
                                    },
                                ));
                            }
                        }
                    }
                }
            }
        }
        let (names, name_info): (Vec<String>, Vec<NamePattern>) = name_patterns.into_iter().unzip();
        let names = Matcher::new(names, MatchKind::LeftmostLongest);

        let mut ids: Vec<String> = own
            .ids
            .iter()
            .map(|v| compact(&matchable(v)))
            .filter(|c| c.chars().count() >= 3)
            .collect();
        ids.sort();
        ids.dedup();
        let mut phrases: Vec<String> = own
            .phrases
            .iter()
            .map(|v| {
                fold(&matchable(v))
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|f| f.chars().filter(|c| c.is_alphanumeric()).count() >= 4)
            .collect();
        phrases.sort();
        phrases.dedup();
        let own_dates = own
            .dates
            .iter()
            .filter_map(|d| {
                let d = d.trim();
                let num = |r: std::ops::Range<usize>| d.get(r)?.parse::<u32>().ok();
                let (y, m, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
                is_valid_date(i64::from(y), m, day).then_some((i64::from(y), m, day))
            })
            .collect();
        Self {
            names,
            name_info,
            initials,
            // Overlapping search: one ID may sit inside a longer candidate that fails its
            // boundary test.
            ids: Matcher::new(ids, MatchKind::Standard),
            phrases: Matcher::new(phrases, MatchKind::LeftmostLongest),
            own_dates,
            dates,
        }
    }

    /// Cleans `text` fully: the object's own values and every pattern class.
    pub fn clean(&self, text: &str) -> String {
        self.clean_with(text, true)
    }

    /// Removes only the object's own identifying values (names, IDs, birth date, institution):
    /// the safety net for text that no clean option covers but that is kept.
    pub fn clean_own(&self, text: &str) -> String {
        self.clean_with(text, false)
    }

    fn clean_with(&self, text: &str, patterns: bool) -> String {
        if text.trim().is_empty() {
            return text.to_string();
        }
        if text.contains(ESC) {
            // Text under ISO 2022 code extensions reaches us undecoded (the DICOM reader takes
            // only the first, empty, value of `\ISO 2022 IR 87`): clean it as the characters
            // it spells, and write it back in the same escapes. What cannot be decoded or
            // re-encoded is removed whole: no matcher can vouch for bytes it cannot read.
            return match decode_escaped(text) {
                Some(decoded) if !decoded.contains(ESC) => {
                    encode_escaped(&self.clean_with(&decoded, patterns))
                        .unwrap_or_else(|| REMOVED.to_string())
                }
                _ => REMOVED.to_string(),
            };
        }
        let mut spans: Vec<Span> = Vec::new();
        if patterns {
            for re in [&*EMAIL, &*URL, &*UID_LIKE] {
                for m in re.find_iter(text) {
                    add(&mut spans, m.start(), m.end(), Kind::Other);
                }
            }
        }
        self.find_dates(text, patterns, &mut spans);
        let folded = fold_mapped(text);
        if let Some(ac) = self.phrases.get() {
            for m in ac.find_iter(&folded.text) {
                if word_edges(&folded.text, m.start(), m.end()) {
                    let (s, e) = folded.source_range(text, m.start(), m.end());
                    add(&mut spans, s, e, Kind::Other);
                }
            }
        }
        self.find_ids(text, &mut spans);
        self.find_names(text, &folded, &mut spans);
        if patterns {
            find_patterns(text, &mut spans);
        }
        render(text, spans)
    }

    fn find_dates(&self, text: &str, patterns: bool, spans: &mut Vec<Span>) {
        for (re, layout) in DATE_PATTERNS.iter() {
            for caps in re.captures_iter(text) {
                let Some(date) = parse_date(&caps, *layout) else {
                    continue;
                };
                let whole = caps.get(0).expect("group 0 always matches");
                let own = self.own_dates.contains(&(date.y, date.m, date.d));
                let (kind, replacement) = match (own, patterns, self.dates) {
                    (true, _, _) => (Kind::Other, REMOVED.to_string()),
                    (false, false, _) => continue,
                    (false, true, DatePolicy::Remove) => (Kind::Other, REMOVED.to_string()),
                    (false, true, DatePolicy::Keep) => (Kind::Keep, whole.as_str().to_string()),
                    (false, true, DatePolicy::Shift(days)) => {
                        match shift_ymd(date.y, date.m, date.d, days) {
                            Some(shifted) => (Kind::Shifted, render_date(&caps, &date, shifted)),
                            // A shift beyond what the format can write: remove rather than keep.
                            None => (Kind::Other, REMOVED.to_string()),
                        }
                    }
                };
                push(spans, whole.start(), whole.end(), kind, replacement);
            }
        }
    }

    fn find_ids(&self, text: &str, spans: &mut Vec<Span>) {
        let Some(ac) = self.ids.get() else {
            return;
        };
        // The text's letters and digits alone, each with its source position, so that an ID
        // written with other separators (or none) still matches.
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut compact_text = String::new();
        let mut origin: Vec<usize> = Vec::new(); // compact byte -> index into `chars`
        for (ci, &(_, c)) in chars.iter().enumerate() {
            let mut folded_c = String::new();
            fold_char(c, &mut |f| folded_c.push(f));
            for f in folded_c.chars().filter(|f| f.is_alphanumeric()) {
                compact_text.push(f);
                origin.extend(std::iter::repeat_n(ci, f.len_utf8()));
            }
        }
        for m in ac.find_overlapping_iter(&compact_text) {
            let (first, last) = (origin[m.start()], origin[m.end() - 1]);
            // Between the matched characters only separators, and few of them: "12-345 678"
            // is the ID 12345678, "12 kV, 345678" is not.
            let gaps_ok = (first..last).all(|i| {
                let (a, b) = (chars[i].1, chars[i + 1].1);
                a.is_alphanumeric() || b.is_alphanumeric() || is_id_separator(a)
            }) && (first..=last)
                .filter(|&i| !chars[i].1.is_alphanumeric())
                .all(|i| is_id_separator(chars[i].1));
            if !gaps_ok || (last - first + 1) > 3 * (m.end() - m.start()) {
                continue;
            }
            // An ID glued to a label ("MRN12345") is still that ID; one inside a longer run of
            // the same class ("9912345") is another number.
            let before = first.checked_sub(1).map(|i| chars[i].1);
            let after = chars.get(last + 1).map(|&(_, c)| c);
            let same_class = |x: Option<char>, y: char| {
                x.is_some_and(|x| {
                    (x.is_numeric() && y.is_numeric()) || (x.is_alphabetic() && y.is_alphabetic())
                })
            };
            if same_class(before, chars[first].1) || same_class(after, chars[last].1) {
                continue;
            }
            let start = chars[first].0;
            let end = chars[last].0 + chars[last].1.len_utf8();
            add(spans, start, end, Kind::Other);
        }
    }

    fn find_names(&self, text: &str, folded: &Folded, spans: &mut Vec<Span>) {
        let Some(ac) = self.names.get() else {
            return;
        };
        for m in ac.find_iter(&folded.text) {
            let info = &self.name_info[m.pattern().as_usize()];
            if !info.unspaced && !word_edges(&folded.text, m.start(), m.end()) {
                continue;
            }
            let (mut s, mut e) = folded.source_range(text, m.start(), m.end());
            if info.strong {
                s = self.extend_initial_left(text, s);
                e = self.extend_initial_right(text, e);
            }
            add(
                spans,
                s,
                e,
                if info.strong {
                    Kind::Name
                } else {
                    Kind::WeakName
                },
            );
        }
    }

    fn is_initial(&self, c: char) -> bool {
        let mut f = String::new();
        fold_char(c, &mut |x| f.push(x));
        f.chars().next().is_some_and(|x| self.initials.contains(&x))
    }

    /// "J. Doe", "J Doe": takes in a given-name initial just before a name.
    fn extend_initial_left(&self, text: &str, start: usize) -> usize {
        let head = &text[..start];
        let trimmed = head.trim_end_matches([' ', '^']);
        if head.len() - trimmed.len() > 2 {
            return start;
        }
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        let mut rev = trimmed.chars().rev();
        match (rev.next(), rev.next()) {
            (Some(c), prev)
                if c.is_alphabetic()
                    && self.is_initial(c)
                    && !prev.is_some_and(char::is_alphanumeric) =>
            {
                trimmed.len() - c.len_utf8()
            }
            _ => start,
        }
    }

    /// "Doe, J.", "Doe^J": takes in a given-name initial just after a name.
    fn extend_initial_right(&self, text: &str, end: usize) -> usize {
        let tail = &text[end..];
        let rest = tail.trim_start_matches([' ', ',', '^']);
        let skipped = tail.len() - rest.len();
        if skipped == 0 || skipped > 2 {
            return end;
        }
        let mut it = rest.chars();
        match (it.next(), it.next()) {
            (Some(c), next)
                if c.is_alphabetic()
                    && self.is_initial(c)
                    && !next.is_some_and(char::is_alphanumeric) =>
            {
                let mut e = end + skipped + c.len_utf8();
                if next == Some('.') {
                    e += 1;
                }
                e
            }
            _ => end,
        }
    }
}

/// A set of patterns, compiled on first use: most objects have no free text left to clean
/// once the profile has removed or replaced it, and compiling took longer than de-identifying
/// a small image.
#[derive(Debug)]
struct Matcher {
    patterns: Vec<String>,
    kind: MatchKind,
    compiled: OnceLock<Option<AhoCorasick>>,
}

impl Matcher {
    fn new(patterns: Vec<String>, kind: MatchKind) -> Self {
        Matcher {
            patterns,
            kind,
            compiled: OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&AhoCorasick> {
        self.compiled
            .get_or_init(|| {
                if self.patterns.is_empty() {
                    return None;
                }
                // A handful of patterns per object: building never fails for them, and if it
                // ever did the patterns could not be matched at all, which the caller treats
                // like none. Run over a few short values, so the automaton cheapest to build
                // (no DFA, no prefilter), not the fastest to search.
                AhoCorasick::builder()
                    .match_kind(self.kind)
                    .kind(Some(AhoCorasickKind::NoncontiguousNFA))
                    .prefilter(false)
                    .build(&self.patterns)
                    .ok()
            })
            .as_ref()
    }
}

/// Adds a removal span. Where it overlaps spans found earlier, the earlier ones stand and the
/// parts of it they do not cover are added: a removal is never dropped because a neighbour
/// (an initial taken in from the next name, a kept date) reached into it.
fn add(spans: &mut Vec<Span>, start: usize, end: usize, kind: Kind) {
    let mut taken: Vec<(usize, usize)> = spans
        .iter()
        .filter(|s| s.start < end && start < s.end)
        .map(|s| (s.start, s.end))
        .collect();
    taken.sort_unstable();
    let mut at = start;
    for (s, e) in taken {
        push(spans, at, s.min(end), kind, REMOVED.to_string());
        at = at.max(e);
    }
    push(spans, at, end, kind, REMOVED.to_string());
}

/// Adds a span unless it overlaps one found earlier (earlier classes win).
fn push(spans: &mut Vec<Span>, start: usize, end: usize, kind: Kind, replacement: String) {
    if start >= end || spans.iter().any(|s| s.start < end && start < s.end) {
        return;
    }
    spans.push(Span {
        start,
        end,
        kind,
        replacement,
    });
}

/// Writes the text with its spans replaced; neighbouring removals become one marker, and
/// short name components that stand alone are left as they were.
fn render(text: &str, mut spans: Vec<Span>) -> String {
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_by_key(|s| s.start);
    let removal = |k: Kind| matches!(k, Kind::Name | Kind::WeakName | Kind::Other);
    // Groups of removal spans joined only by separators ("Doe, J." or "Jane DOE").
    let mut groups: Vec<Vec<Span>> = Vec::new();
    for span in spans {
        if let Some(last) = groups.last_mut() {
            let prev = last.last().expect("groups are never empty");
            let gap = &text[prev.end..span.start];
            if removal(prev.kind)
                && removal(span.kind)
                && gap.chars().count() <= 3
                && gap.chars().all(|c| " \t^=,.-'’/;:".contains(c))
            {
                last.push(span);
                continue;
            }
        }
        groups.push(vec![span]);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for group in groups {
        let (start, end) = (group[0].start, group[group.len() - 1].end);
        if group.iter().all(|s| s.kind == Kind::WeakName) {
            continue;
        }
        out.push_str(&text[at..start]);
        match group[0].kind {
            Kind::Keep | Kind::Shifted => out.push_str(&group[0].replacement),
            _ => out.push_str(REMOVED),
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// The escape that starts an ISO 2022 code extension (PS3.5 6.1.2.5).
const ESC: char = '\x1b';

/// The Japanese code extensions (ISO 2022 IR 87 with IR 6/IR 14 escapes) that DICOM text can
/// carry in ASCII bytes with escape sequences.
fn iso2022_jp() -> Option<SpecificCharacterSet> {
    SpecificCharacterSet::from_code("ISO 2022 IR 87")
}

/// `text` (escape sequences and 7-bit bytes, as read without the extensions) as Unicode.
fn decode_escaped(text: &str) -> Option<String> {
    // Only the escapes of JIS X 0208 and of ASCII / JIS X 0201 Roman: others (Korean,
    // Chinese, the 8-bit sets) the decoder would pass through as visible text.
    const KNOWN: [&str; 4] = ["\x1b$B", "\x1b$@", "\x1b(B", "\x1b(J"];
    let known = text
        .match_indices(ESC)
        .all(|(at, _)| KNOWN.iter().any(|k| text[at..].starts_with(k)));
    if !text.is_ascii() || !known {
        return None;
    }
    iso2022_jp()?
        .decode(text.as_bytes())
        .ok()
        .filter(|d| !d.contains('\u{FFFD}'))
}

/// Unicode back into escape sequences and 7-bit bytes, the form the reader gave.
fn encode_escaped(text: &str) -> Option<String> {
    let bytes = iso2022_jp()?.encode(text).ok()?;
    let mut out = String::from_utf8(bytes).ok().filter(|s| s.is_ascii())?;
    // PS3.5 6.1.2.5.3: a value ends in the default repertoire; the encoder leaves the last
    // extension open.
    if let Some(at) = out.rfind(ESC)
        && !out[at..].starts_with("\x1b(B")
        && !out[at..].starts_with("\x1b(J")
    {
        out.push_str("\x1b(B");
    }
    Some(out)
}

/// A value's text for matching: decoded where it carries ISO 2022 escapes.
fn matchable(value: &str) -> String {
    if value.contains(ESC) {
        decode_escaped(value).unwrap_or_else(|| value.to_string())
    } else {
        value.to_string()
    }
}

/// Case-, accent- and compatibility-folded form of `s`, for matching.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        fold_char(c, &mut |f| out.push(f));
    }
    out
}

fn fold_char(c: char, out: &mut dyn FnMut(char)) {
    let pair = |out: &mut dyn FnMut(char), a, b| {
        out(a);
        out(b);
    };
    // Letters that no decomposition splits but that people write without their stroke.
    match c {
        'ß' | 'ẞ' => pair(out, 's', 's'),
        'æ' | 'Æ' => pair(out, 'a', 'e'),
        'œ' | 'Œ' => pair(out, 'o', 'e'),
        'þ' | 'Þ' => pair(out, 't', 'h'),
        'ø' | 'Ø' => out('o'),
        'đ' | 'Đ' | 'ð' | 'Ð' => out('d'),
        'ł' | 'Ł' => out('l'),
        'ı' => out('i'),
        // Greek final sigma: lower-casing a capital Σ letter by letter never yields it.
        'ς' => out('σ'),
        // Typographic apostrophes as the plain one, so "O’Brien" matches "O'Brien".
        '’' | '‘' | 'ʼ' => out('\''),
        _ => decompose_compatible(c, |d| {
            if !is_combining_mark(d) {
                for l in d.to_lowercase() {
                    out(l);
                }
            }
        }),
    }
}

/// German and Scandinavian transliteration (Müller -> Mueller, Åse -> Aase, Ølberg ->
/// Oelberg), a second spelling people use where a keyboard or system lacks the letter.
fn expand_umlauts(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'Ä' => out.push_str("AE"),
            'Ö' => out.push_str("OE"),
            'Ü' => out.push_str("UE"),
            'å' => out.push_str("aa"),
            'Å' => out.push_str("AA"),
            'ø' => out.push_str("oe"),
            'Ø' => out.push_str("OE"),
            _ => out.push(c),
        }
    }
    out
}

/// An ID's letters and digits, folded: what two spellings of one ID share.
fn compact(s: &str) -> String {
    fold(s).chars().filter(|c| c.is_alphanumeric()).collect()
}

fn is_id_separator(c: char) -> bool {
    matches!(c, '-' | '.' | '/' | '_' | ' ' | ':' | '^' | '#')
}

/// Han, kana, Hangul and Thai: written without spaces between words, so no word edges.
fn is_unspaced_script(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0E7F | 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF)
}

struct Folded {
    text: String,
    /// For each byte of `text`, the source byte offset of the character it came from.
    src: Vec<usize>,
}

impl Folded {
    fn source_range(&self, source: &str, start: usize, end: usize) -> (usize, usize) {
        let s = self.src[start];
        let last = self.src[end - 1];
        let len = source[last..].chars().next().map_or(0, char::len_utf8);
        (s, last + len)
    }
}

fn fold_mapped(s: &str) -> Folded {
    let mut text = String::with_capacity(s.len());
    let mut src = Vec::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        fold_char(c, &mut |f| {
            text.push(f);
            src.extend(std::iter::repeat_n(i, f.len_utf8()));
        });
    }
    Folded { text, src }
}

fn word_edges(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

// ---------------------------------------------------------------------------------------------
// Dates

#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Groups y, m, d in that order of meaning; `/` with a first field <= 12 means M/D/Y.
    Numeric,
    /// Groups d, mon, y or mon, d, y with a month name.
    Named,
}

struct ParsedDate {
    y: i64,
    m: u32,
    d: u32,
}

const MONTHS: &str = "january|february|march|april|may|june|july|august|september|october|november|december|januar|februar|märz|maerz|mai|juni|juli|oktober|dezember|jan|feb|mar|mär|apr|jun|jul|aug|sept|sep|oct|okt|nov|dec|dez";

static DATE_PATTERNS: LazyLock<Vec<(Regex, Layout)>> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("the date patterns are fixed and tested");
    vec![
        // DICOM DA: 20261203.
        (
            re(r"\b(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})\b"),
            Layout::Numeric,
        ),
        // ISO and its relatives: 2026-12-03, 2026/12/03, 2026.12.03.
        (
            re(r"\b(?P<y>\d{4})(?P<s1>[-/.])(?P<m>\d{1,2})(?P<s2>[-/.])(?P<d>\d{1,2})\b"),
            Layout::Numeric,
        ),
        // Day first with dots or hyphens (03.12.2026), month first with slashes (12/03/2026).
        (
            re(r"\b(?P<a>\d{1,2})(?P<s1>[./-])(?P<b>\d{1,2})(?P<s2>[./-])(?P<y>\d{4}|\d{2})\b"),
            Layout::Numeric,
        ),
        // 3 Dec 2026, 3rd December 2026, 03-Dec-2026, 3. Dezember 2026.
        (
            re(&format!(
                r"(?i)\b(?P<d>\d{{1,2}})(?P<ord>st|nd|rd|th)?\.?[ \-]?(?P<mon>{MONTHS})\.?[ ,\-]+(?P<y>\d{{4}})\b"
            )),
            Layout::Named,
        ),
        // Dec 3, 2026; December 3rd 2026.
        (
            re(&format!(
                r"(?i)\b(?P<mon>{MONTHS})\.?[ ]+(?P<d>\d{{1,2}})(?P<ord>st|nd|rd|th)?,?[ ]+(?P<y>\d{{4}})\b"
            )),
            Layout::Named,
        ),
    ]
});

fn parse_date(caps: &Captures<'_>, layout: Layout) -> Option<ParsedDate> {
    let num = |name: &str| caps.name(name)?.as_str().parse::<u32>().ok();
    let ystr = caps.name("y")?.as_str();
    let mut y = i64::from(num("y")?);
    if ystr.len() == 2 {
        // Two-digit years: 00-49 are this century, like most software reads them.
        y += if y <= 49 { 2000 } else { 1900 };
    }
    let (m, d) = match layout {
        Layout::Named => (month_number(caps.name("mon")?.as_str())?.0, num("d")?),
        Layout::Numeric => match (caps.name("a"), caps.name("b")) {
            (Some(_), Some(_)) => {
                if caps.name("s1")?.as_str() != caps.name("s2")?.as_str() {
                    return None;
                }
                let (a, b) = (num("a")?, num("b")?);
                // Two-digit years only where both other fields have two digits too, so that
                // version numbers such as 1.2.26 are not taken for dates.
                if ystr.len() == 2 && (caps["a"].len() != 2 || caps["b"].len() != 2) {
                    return None;
                }
                if &caps["s1"] == "/" && a <= 12 {
                    (a, b)
                } else {
                    (b, a)
                }
            }
            _ => {
                if let (Some(s1), Some(s2)) = (caps.name("s1"), caps.name("s2"))
                    && s1.as_str() != s2.as_str()
                {
                    return None;
                }
                (num("m")?, num("d")?)
            }
        },
    };
    ((1800..=2199).contains(&y) && is_valid_date(y, m, d)).then_some(ParsedDate { y, m, d })
}

/// Month number, language (0 English, 1 German) and whether the name was written in full.
fn month_number(name: &str) -> Option<(u32, usize, bool)> {
    const EN: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    const DE: [&str; 12] = [
        "januar",
        "februar",
        "märz",
        "april",
        "mai",
        "juni",
        "juli",
        "august",
        "september",
        "oktober",
        "november",
        "dezember",
    ];
    let n = name.to_lowercase();
    let n = if n == "maerz" { "märz".to_string() } else { n };
    for (lang, names) in [EN, DE].iter().enumerate() {
        if let Some(i) = names.iter().position(|x| *x == n) {
            return Some((i as u32 + 1, lang, true));
        }
    }
    let abbrev = |n: &str| match n {
        "mär" => Some((3, 1)),
        "okt" => Some((10, 1)),
        "dez" => Some((12, 1)),
        "sept" => Some((9, 0)),
        _ => EN
            .iter()
            .position(|x| x.get(..3) == Some(n))
            .map(|i| (i as u32 + 1, 0)),
    };
    abbrev(&n).map(|(m, lang)| (m, lang, false))
}

fn month_name(m: u32, lang: usize, full: bool) -> &'static str {
    const EN: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DE: [&str; 12] = [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ];
    const EN3: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DE3: [&str; 12] = [
        "Jan", "Feb", "Mär", "Apr", "Mai", "Jun", "Jul", "Aug", "Sep", "Okt", "Nov", "Dez",
    ];
    let i = (m as usize).clamp(1, 12) - 1;
    match (lang, full) {
        (1, true) => DE[i],
        (1, false) => DE3[i],
        (_, true) => EN[i],
        (_, false) => EN3[i],
    }
}

/// The shifted date in the layout of the original: the same separators, field widths, month
/// name language, length and case.
fn render_date(caps: &Captures<'_>, orig: &ParsedDate, (y, m, d): (i64, u32, u32)) -> String {
    let whole = caps.get(0).expect("group 0 always matches");
    let base = whole.start();
    let text = whole.as_str();
    let width = |name: &str| caps.name(name).map_or(2, |g| g.as_str().len());
    let numeric = |v: u32, w: usize| {
        if w >= 2 {
            format!("{v:0w$}")
        } else {
            v.to_string()
        }
    };
    let mut fields: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut put = |name: &str, value: String| {
        if let Some(g) = caps.name(name) {
            fields.push((g.start() - base..g.end() - base, value));
        }
    };
    let ywidth = width("y");
    put(
        "y",
        if ywidth == 2 {
            format!("{:02}", y % 100)
        } else {
            format!("{y:04}")
        },
    );
    if let Some(mon) = caps.name("mon") {
        let written = mon.as_str();
        let (_, lang, full) = month_number(written).unwrap_or((orig.m, 0, false));
        let name = month_name(m, lang, full);
        let name = if written.chars().all(|c| !c.is_lowercase()) {
            name.to_uppercase()
        } else if written.chars().next().is_some_and(char::is_lowercase) {
            name.to_lowercase()
        } else {
            name.to_string()
        };
        put("mon", name);
        put("d", numeric(d, width("d")));
        if caps.name("ord").is_some() {
            let ord = match (d % 10, d) {
                (_, 11..=13) => "th",
                (1, _) => "st",
                (2, _) => "nd",
                (3, _) => "rd",
                _ => "th",
            };
            put("ord", ord.to_string());
        }
    } else if caps.name("a").is_some() {
        // The same reading as parse_date: which of a and b held the month.
        let month_first = caps.name("s1").is_some_and(|s| s.as_str() == "/")
            && caps["a"].parse::<u32>().ok() == Some(orig.m)
            && caps["b"].parse::<u32>().ok() == Some(orig.d);
        let (a, b) = if month_first { (m, d) } else { (d, m) };
        put("a", numeric(a, width("a")));
        put("b", numeric(b, width("b")));
    } else {
        put("m", numeric(m, width("m")));
        put("d", numeric(d, width("d")));
    }
    fields.sort_by_key(|(r, _)| r.start);
    let mut out = String::new();
    let mut at = 0;
    for (r, v) in fields {
        out.push_str(&text[at..r.start]);
        out.push_str(&v);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Pattern classes that no attribute announces

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{L}\p{N}._%+\-]+@[\p{L}\p{N}\-]+(?:\.[\p{L}\p{N}\-]+)+").expect("fixed")
});
static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:https?://|www\.)[^\s]+").expect("fixed"));
/// Five or more dot-separated numbers: an instance UID written into text.
static UID_LIKE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d+(?:\.\d+){4,}\b").expect("fixed"));
static PHONES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        // After a label: Tel. 030 1234567, Fax: (030) 123-45.
        r"(?i)\b(?:tel|phone|fax|mobile|cell|telefon|tél|handy|mob)\b\.?\s*:?\s*(?P<n>\+?[\d(][\d\s()./\-]{4,}\d)",
        // International: +49 30 1234567, +1 (555) 123-4567.
        r"(?P<n>\+\d{1,3}[\s.\-]?(?:\(\d{1,5}\)[\s.\-]?)?\d{1,5}(?:[\s./\-]?\d{2,}){1,5})",
        // North American: (555) 123-4567, 555-123-4567.
        r"(?P<n>\(\d{3}\)\s?\d{3}[\s.\-]\d{4}\b|\b\d{3}[.\-]\d{3}[.\-]\d{4}\b)",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("fixed"))
    .collect()
});
/// An ID after its label: MRN 4711, Pat.-Nr.: A-12, Accession# 99.
static LABELLED_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:mrn|pid|patient\s*id|pat\.?\s*-?\s*(?:id|nr|no)|patientennummer|fall\s*-?\s*nr|case\s*(?:no|nr|id|number)|acc(?:ession)?\.?\s*(?:no|nr|number|#)?|id)\.?\s*[:#=]?\s*(?P<id>[\p{L}\p{N}][\p{L}\p{N}./_\-]*)")
        .expect("fixed")
});
/// A word or a hyphenated ID; `/` and `_` separate words (512/512, ep2d_diff_b1000).
static TOKEN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}]+(?:-[\p{L}\p{N}]+)*").expect("fixed"));
static TITLE: LazyLock<Regex> = LazyLock::new(|| {
    // Title case with or without a period; capitals only with one, since DR and MR are
    // modalities.
    Regex::new(r"\b(?:(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof|Herr|Frau|Mme|Mlle|Dott|Dra|Sig|Sra)\.?|(?:DR|MR|MRS|MS|PROF|HERR|FRAU)\.)[ \t]+")
        .expect("fixed")
});
static PATIENT_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:patient(?:in)?|pat\.|pt\.?|paciente)[ \t]*[:=]?[ \t]+").expect("fixed")
});
/// "Name:" says a name follows as plainly as a title does.
static NAME_LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:name|patient\s*name|patientenname|nom)[ \t]*[:=][ \t]*").expect("fixed")
});
static NAME_WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\p{Lu}(?:\.|[\p{L}'’\-]*)").expect("fixed"));

fn find_patterns(text: &str, spans: &mut Vec<Span>) {
    for re in PHONES.iter() {
        for caps in re.captures_iter(text) {
            let n = caps.name("n").expect("every phone pattern has n");
            if n.as_str().chars().filter(char::is_ascii_digit).count() >= 7 {
                add(spans, n.start(), n.end(), Kind::Other);
            }
        }
    }
    for caps in LABELLED_ID.captures_iter(text) {
        let id = caps.name("id").expect("the pattern has id");
        if id.as_str().chars().any(|c| c.is_numeric()) {
            add(spans, id.start(), id.end(), Kind::Other);
        }
    }
    for m in TOKEN.find_iter(text) {
        let digits = m.as_str().chars().filter(|c| c.is_numeric()).count();
        let letters = m.as_str().chars().filter(|c| c.is_alphabetic()).count();
        let longest_run = m
            .as_str()
            .split(|c: char| !c.is_numeric())
            .map(|r| r.chars().count())
            .max()
            .unwrap_or(0);
        // Long digit runs (also hyphenated: 483-221-907) and MRN-like mixtures (A1234567);
        // clinical tokens (B70f, b1000, T2, 3D, 512x512) carry shorter runs.
        if (letters == 0 && digits >= 6) || (digits >= 5 && longest_run >= 4) {
            add(spans, m.start(), m.end(), Kind::Other);
        }
    }
    for m in TITLE.find_iter(text) {
        if let Some(end) = name_words_after(text, m.end(), true) {
            add(spans, m.end(), end, Kind::Other);
        }
    }
    for (re, after_title) in [(&*NAME_LABEL, true), (&*PATIENT_LABEL, false)] {
        for m in re.find_iter(text) {
            if let Some(end) = name_words_after(text, m.end(), after_title) {
                add(spans, m.end(), end, Kind::Other);
            }
        }
    }
    find_census_pairs(text, spans);
}

/// The end of the person's name that starts at `at` (up to three words), if one does. After
/// a title any capitalised word starts a name; after "patient" only a title-case word or a
/// listed name in capitals.
fn name_words_after(text: &str, at: usize, after_title: bool) -> Option<usize> {
    let mut pos = at;
    let mut end = None;
    let mut prev_initial_or_given = false;
    for i in 0..3 {
        let rest = &text[pos..];
        let skipped = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        if i > 0 && (skipped == 0 || skipped > 2) {
            break;
        }
        let word_at = pos + skipped;
        let Some(m) = NAME_WORD.find(&text[word_at..]) else {
            break;
        };
        let word = m.as_str().trim_end_matches(['-', '\'', '’']);
        let upper = word.to_uppercase();
        let initial = word.chars().count() == 2 && word.ends_with('.');
        let key = upper.trim_end_matches('.');
        if is_stopword(key) {
            break;
        }
        let listed = is_given_name(key) || is_surname(key);
        let title_case = word.chars().skip(1).any(char::is_lowercase);
        let accept = if i == 0 {
            initial
                || listed
                || (title_case && (after_title || !is_common_word(key)))
                || (after_title && word.chars().count() > 1)
        } else {
            initial
                || prev_initial_or_given
                || is_surname(key)
                || is_given_name(key)
                || (after_title && title_case && !is_common_word(key))
        };
        if !accept {
            break;
        }
        prev_initial_or_given = initial || is_given_name(key);
        pos = word_at + word.len();
        end = Some(pos);
    }
    end
}

/// "John Smith", "SMITH, JOHN", "J. Smith": capitalised words that the census lists know as
/// a given name and a surname, side by side.
fn find_census_pairs(text: &str, spans: &mut Vec<Span>) {
    let words: Vec<(usize, usize, &str)> = TOKEN
        .find_iter(text)
        .map(|m| (m.start(), m.end(), m.as_str()))
        .collect();
    let style = |w: &str| -> Option<bool> {
        // Some(true): capitals only; Some(false): title case; None: neither.
        let mut chars = w.chars();
        let first = chars.next()?;
        if !first.is_uppercase() {
            return None;
        }
        let rest: Vec<char> = chars.collect();
        if rest.iter().all(|c| !c.is_lowercase()) {
            Some(true)
        } else if rest.iter().all(|c| !c.is_uppercase()) {
            Some(false)
        } else {
            None
        }
    };
    for pair in words.windows(2) {
        let ((s1, e1, w1), (s2, e2, w2)) = (pair[0], pair[1]);
        let gap = &text[e1..s2];
        if gap.chars().count() > 3 || !gap.chars().all(|c| " \t,.^".contains(c)) {
            continue;
        }
        let (Some(st1), Some(st2)) = (style(w1), style(w2)) else {
            continue;
        };
        let (u1, u2) = (w1.to_uppercase(), w2.to_uppercase());
        if is_stopword(&u1) || is_stopword(&u2) {
            continue;
        }
        let comma = gap.contains(',');
        let initial_first = w1.chars().count() == 1 && gap.starts_with('.');
        let given_surname = !comma && is_given_name(&u1) && is_surname(&u2);
        let surname_given = comma && is_surname(&u1) && is_given_name(&u2);
        let initial_surname = initial_first && !st2 && w2.chars().count() > 2 && is_surname(&u2);
        if (st1 == st2 && (given_surname || surname_given)) || initial_surname {
            add(spans, s1, e1, Kind::Other);
            add(spans, s2, e2, Kind::Other);
        }
    }
}

static GIVEN_NAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| name_list(include_str!("../data/census-1990-given-names.txt")));
static SURNAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| name_list(include_str!("../data/census-1990-surnames.txt")));

fn name_list(text: &'static str) -> HashSet<&'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn is_given_name(upper: &str) -> bool {
    GIVEN_NAMES.contains(upper)
}

fn is_surname(upper: &str) -> bool {
    SURNAMES.contains(upper)
}

/// Words of imaging and reporting language that the census lists also hold as names, or that
/// follow "patient" or a title in clinical text: never taken for a name by a pattern. (The
/// object's own names are removed whatever they are.)
fn is_stopword(upper: &str) -> bool {
    const WORDS: &[&str] = &[
        "HEAD",
        "BRAIN",
        "MARK",
        "BONE",
        "HAND",
        "SHARP",
        "LONG",
        "SHORT",
        "WHITE",
        "BLACK",
        "GRAY",
        "GREY",
        "YOUNG",
        "KING",
        "HALL",
        "WOOD",
        "GREEN",
        "BROWN",
        "LEFT",
        "RIGHT",
        "CHEST",
        "NECK",
        "BACK",
        "FOOT",
        "KNEE",
        "HIP",
        "ARM",
        "LEG",
        "LUNG",
        "LIVER",
        "HEART",
        "BODY",
        "SPINE",
        "BREAST",
        "PELVIS",
        "ABDOMEN",
        "THORAX",
        "SKULL",
        "FACE",
        "EYE",
        "PATIENT",
        "POSITION",
        "POSITIONING",
        "ORIENTATION",
        "HISTORY",
        "COMMENTS",
        "AGE",
        "SEX",
        "WEIGHT",
        "SIZE",
        "PROTOCOL",
        "INFORMATION",
        "DATA",
        "SETUP",
        "SUPPORT",
        "TABLE",
        "MOTION",
        "PREPARATION",
        "ID",
        "NAME",
        "SUPINE",
        "PRONE",
        "STATUS",
        "DOSE",
        "REPORT",
        "STUDY",
        "SERIES",
        "IMAGE",
        "IMAGES",
        "CONTRAST",
        "PHASE",
        "FOLLOW",
        "SCAN",
        "SCOUT",
        "AXIAL",
        "SAGITTAL",
        "CORONAL",
        "STANDARD",
        "ROUTINE",
        "SOFT",
        "TISSUE",
        "FRONT",
        "LATERAL",
        "MEDIAL",
        "UPPER",
        "LOWER",
        "MAY",
        "WILL",
        "CAN",
        "SUMMER",
        "WINTER",
        "APRIL",
        "JUNE",
        "AUGUST",
        "MONDAY",
        "FRIDAY",
        "SUNDAY",
        "NORMAL",
        "CLEAR",
        "SMALL",
        "LARGE",
        "NEW",
        "OLD",
        "FIRST",
        "LAST",
        "CHANCE",
        "HOPE",
        "JOY",
        "MERCY",
        "FAITH",
        "GRACE",
        "WORTH",
        "PAGE",
        "CASE",
        "POST",
        "PRE",
        "WITH",
        "WITHOUT",
        "AND",
        "THE",
        "FOR",
        "OF",
        "IN",
        "ON",
        "AT",
        "TO",
        "NO",
        "NOT",
        "SEE",
        "RAY",
        "LEE",
        "VAN",
        "VON",
        "DE",
        "DA",
        "DI",
        "LA",
        "LE",
        "DEL",
        "DOSE",
        "FIELD",
        "FIELDS",
        "PARK",
        "PA",
        "AP",
        "LAT",
        "AX",
        "SAG",
        "COR",
        "CT",
        "MR",
        "PET",
        "SPECT",
        "US",
        "CR",
        "DX",
        "NM",
        "OT",
        "SC",
        "SR",
        "RT",
        "XA",
        "MG",
        "FLAIR",
        "STIR",
        "DWI",
        "ADC",
        "SWI",
        "TOF",
        "ANGIO",
        "CARDIAC",
        "LOCALIZER",
        "LOCALISER",
        "SURVEY",
        "PLANNING",
        "SUMMARY",
    ];
    WORDS.contains(&upper)
}

/// English words that start sentences in clinical text and are no names unless a title
/// precedes them.
fn is_common_word(upper: &str) -> bool {
    const WORDS: &[&str] = &[
        "WAS",
        "IS",
        "HAS",
        "HAD",
        "WITH",
        "WITHOUT",
        "WHO",
        "PRESENTS",
        "PRESENTED",
        "DENIES",
        "REPORTS",
        "UNDERWENT",
        "RECEIVED",
        "IDENTIFIER",
        "NUMBER",
        "CONSENT",
        "CONSENTED",
    ];
    WORDS.contains(&upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaner(dates: DatePolicy) -> TextCleaner {
        TextCleaner::new(
            &OwnValues {
                names: vec![
                    "MÜLLER-LÜDENSCHEIDT^Jürgen Hans".into(),
                    "Doe^Jane".into(),
                    "Li^Wei".into(),
                    "山田^太郎".into(),
                ],
                ids: vec!["MRN-4711-0815".into(), "ACC99812".into()],
                phrases: vec!["St. Elsewhere General Hospital".into()],
                dates: vec!["19610203".into()],
            },
            dates,
        )
    }

    #[test]
    fn own_names_in_any_case_order_accent_and_separator() {
        let c = cleaner(DatePolicy::Remove);
        for (input, want) in [
            ("CT HEAD MÜLLER-LÜDENSCHEIDT", "CT HEAD [removed]"),
            ("ct head Müller", "ct head [removed]"),
            ("MR for mueller, juergen", "MR for [removed]"),
            ("for Muller Jurgen follow-up", "for [removed] follow-up"),
            ("DOE^JANE", "[removed]"),
            (
                "Jane DOE, CT THORAX W/O CONTRAST",
                "[removed], CT THORAX W/O CONTRAST",
            ),
            ("seen by J. Doe today", "seen by [removed] today"),
            ("Doe, J. reviewed", "[removed] reviewed"),
            ("WEI LI chest", "[removed] chest"),
            ("Lithium 250 mA li", "Lithium 250 mA li"),
            ("山田太郎様の検査", "[removed]様の検査"),
            (
                "St. Elsewhere  general hospital",
                "St. Elsewhere  general hospital",
            ),
            ("at ST. ELSEWHERE GENERAL HOSPITAL", "at [removed]"),
        ] {
            assert_eq!(c.clean(input), want, "{input}");
        }
    }

    #[test]
    fn own_ids_with_and_without_separators() {
        let c = cleaner(DatePolicy::Remove);
        for input in [
            "MRN-4711-0815",
            "mrn 4711 0815",
            "MRN47110815",
            "id mrn/4711/0815.",
            "acc99812",
            "ACC-998-12",
        ] {
            let out = c.clean(input);
            assert!(
                !compact(&out).contains("47110815") && !compact(&out).contains("99812"),
                "{input} -> {out}"
            );
        }
        assert_eq!(c.clean("TR 4711 TE 0815 ms"), "TR 4711 TE 0815 ms");
    }

    #[test]
    fn clinical_words_stay() {
        let c = cleaner(DatePolicy::Remove);
        for input in [
            "CT THORAX W/O CONTRAST",
            "AX T2 FLAIR",
            "CHEST PA/LAT",
            "Lung 1.0 B70f",
            "ep2d_diff_b1000 TRACEW",
            "MR BRAIN WO CONTRAST",
            "Head 5.0 H30s",
            "Patient Position HFS",
            "DR CHEST PA",
            "MR HEAD ROUTINE",
            "t1_fl2d_tra 3 mm",
            "120 kV, 250 mAs, CTDIvol 12.5 mGy",
            "WW 400 WL 40",
            "Sag T1 TSE 512x512",
        ] {
            assert_eq!(c.clean(input), input);
        }
    }

    #[test]
    fn dates_in_every_format_are_removed_shifted_or_kept() {
        let r = cleaner(DatePolicy::Remove);
        for d in [
            "20261203",
            "2026-12-03",
            "03.12.2026",
            "12/03/2026",
            "3 Dec 2026",
            "December 3rd, 2026",
            "3. Dezember 2026",
            "03-DEC-2026",
        ] {
            assert_eq!(r.clean(&format!("seen {d}.")), "seen [removed].", "{d}");
        }
        let s = cleaner(DatePolicy::Shift(-365));
        for (d, want) in [
            ("20261203", "20251203"),
            ("2026-12-03", "2025-12-03"),
            ("03.12.2026", "03.12.2025"),
            ("3.12.2026", "3.12.2025"),
            ("12/03/2026", "12/03/2025"),
            ("25/03/2026", "25/03/2025"),
            ("3 Dec 2026", "3 Dec 2025"),
            ("03-DEC-2026", "03-DEC-2025"),
            ("December 3rd, 2026", "December 3rd, 2025"),
            ("3. Dezember 2026", "3. Dezember 2025"),
        ] {
            assert_eq!(
                s.clean(&format!("seen {d}.")),
                format!("seen {want}."),
                "{d}"
            );
        }
        let s = cleaner(DatePolicy::Shift(-40));
        assert_eq!(s.clean("on 2 Jan 2026"), "on 23 Nov 2025");
        assert_eq!(s.clean("on 1st March 2026"), "on 20th January 2026");
        // The birth date goes under every policy.
        let k = cleaner(DatePolicy::Keep);
        assert_eq!(
            k.clean("born 03.02.1961, seen 2026-12-03"),
            "born [removed], seen 2026-12-03"
        );
        assert_eq!(s.clean("DOB 1961-02-03"), "DOB [removed]");
        // Not dates: versions, invalid days, sizes.
        assert_eq!(
            r.clean("VE11 1.2.26 30.02.2026 512/512"),
            "VE11 1.2.26 30.02.2026 512/512"
        );
    }

    #[test]
    fn pattern_classes_no_attribute_announces() {
        let c = TextCleaner::new(&OwnValues::default(), DatePolicy::Remove);
        for (input, want) in [
            ("call +49 30 1234567 now", "call [removed] now"),
            ("Tel. 030 123 4567", "Tel. [removed]"),
            ("(555) 123-4567", "[removed]"),
            ("mail j.doe@example.org", "mail [removed]"),
            ("see https://pacs.example/x?id=1", "see [removed]"),
            ("MRN 4711", "MRN [removed]"),
            ("Pat.-Nr.: A-12", "Pat.-Nr.: [removed]"),
            ("ref 1234567890", "ref [removed]"),
            ("case AB12345X", "case [removed]"),
            ("uid 1.2.826.0.1.3680043.2.1125", "uid [removed]"),
            (
                "reviewed by Dr. Aldridge Quimby",
                "reviewed by Dr. [removed]",
            ),
            ("DR. QUIMBY signed", "DR. [removed] signed"),
            ("patient Hollis was seen", "patient [removed] was seen"),
            ("Name: Zyxwv Qbert", "Name: [removed]"),
            ("for John Smith follow-up", "for [removed] follow-up"),
            ("SMITH, MARY CT", "[removed] CT"),
            ("J. Smith", "[removed]"),
        ] {
            assert_eq!(c.clean(input), want, "{input}");
        }
    }

    #[test]
    fn safety_net_removes_own_values_only() {
        let c = cleaner(DatePolicy::Remove);
        assert_eq!(
            c.clean_own("Jane Doe 2026-12-03 +49 30 1234567 MRN4711-0815"),
            "[removed] 2026-12-03 +49 30 1234567 [removed]"
        );
        assert_eq!(c.clean_own("born 1961-02-03"), "born [removed]");
    }

    #[test]
    fn never_panics_on_odd_text() {
        let c = cleaner(DatePolicy::Shift(-1000));
        for input in [
            "",
            " ",
            "\u{0}",
            "ǅ",
            "İstanbul",
            "ﬀ",
            "٣٤٥٦٧٨٩",
            "99999999",
            "00000000",
            "31/12/9999",
            "1/1/1800",
            "Dr.",
            "patient",
            "+",
            "a@b",
            "🙂 Müller 🙂",
        ] {
            let _ = c.clean(input);
            let _ = c.clean_own(input);
        }
    }

    #[test]
    fn folding_maps_case_accents_and_ligatures() {
        assert_eq!(fold("MÜLLER-LÜDENSCHEIDT"), "muller-ludenscheidt");
        assert_eq!(fold("Straße Øre Łódź ﬁ"), "strasse ore lodz fi");
        assert_eq!(expand_umlauts("Müller"), "Mueller");
        assert_eq!(fold("ΠΑΠΑΔΌΠΟΥΛΟΣ"), fold("Παπαδόπουλος"));
    }
}

#[cfg(test)]
mod iso2022_tests {
    use super::*;

    /// The demo's Japanese patient (PS3.5 Annex H's example, longer names): before the text
    /// was decoded, 太郎 and the phonetic group survived in every description.
    #[test]
    fn names_written_in_iso2022_escapes_are_removed_from_text() {
        let name = "Yamadaya^Tarouemon=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let c = TextCleaner::new(
            &OwnValues {
                names: vec![name.into()],
                ..Default::default()
            },
            DatePolicy::Remove,
        );
        let out = c.clean(&format!("CT for {name}, follow-up"));
        assert_eq!(out, "CT for [removed], follow-up");
        // Other text in the same escapes keeps its meaning: 検査 ("examination").
        let exam = "\x1b$B8!::\x1b(B";
        assert_eq!(
            c.clean(&format!("{name} {exam}")),
            format!("[removed] {exam}")
        );
        // Escapes that are not the Japanese extensions cannot be read: the value goes whole.
        assert_eq!(c.clean("CT \x1b$)C\x0e\x21\x21"), REMOVED);
    }
}
