//! Entities in a message: order numbers, phone numbers, amounts, dates and times (built-in
//! patterns), elements of the training data's `lookup` tables and their `synonym` variants, and
//! regex entities the operator declares in `config/operator/entities.yml`.
//!
//! Extraction is pure and deterministic: no model, no I/O, the time comes in as an argument
//! (the service passes its injectable clock's "now" in the bot's time zone).
//!
//! Every extractor proposes candidates; overlaps are resolved by one rule, in this order:
//! 1. the longer span wins (`订单号12345678901` is an order number, not a phone number inside
//!    it; `周五晚上8点` is one datetime, not a date and a time);
//! 2. at equal length the more specific source wins: operator regex, then lookup / synonym,
//!    then the built-in patterns (date/time, order number, phone, amount in that order);
//! 3. then the earlier span.
//!
//! Kept candidates come back in text order. Offsets are Unicode code points (Rasa's
//! convention), so `start..end` indexes `text.chars()`.

mod builtin;
mod chinese_numbers;
mod datetime;
mod lookup;
mod operator_regex;
pub mod score;

use chrono::DateTime;
use chrono_tz::Tz;

pub use builtin::BUILTIN_TYPES;
pub use lookup::LookupTable;
pub use operator_regex::{OperatorEntities, ENTITIES_FILE, MAX_COMPILED_BYTES, MAX_PATTERN_CHARS};

use crate::data::Dataset;
use crate::types::{Entity, EntitySource};

/// A proposed entity, in bytes of the text, before overlaps are resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub entity: String,
    pub start: usize,
    pub end: usize,
    pub canonical: String,
    pub source: EntitySource,
    /// Higher wins a tie in length (see the module doc).
    pub rank: u8,
}

/// Ranks at equal length: operator regex > lookup > date/time > order > phone > amount.
pub(crate) mod rank {
    pub const AMOUNT: u8 = 1;
    pub const PHONE: u8 = 2;
    pub const ORDER: u8 = 3;
    pub const DATETIME: u8 = 4;
    pub const LOOKUP: u8 = 5;
    pub const OPERATOR: u8 = 6;
}

/// All extractors, built once per operator snapshot.
#[derive(Debug, Default)]
pub struct EntityExtractor {
    lookup: LookupTable,
    operator: OperatorEntities,
}

impl EntityExtractor {
    pub fn new(lookup: LookupTable, operator: OperatorEntities) -> Self {
        Self { lookup, operator }
    }

    /// The lookup tables and synonyms of `nlu`, and the operator's regex entities.
    pub fn from_parts(nlu: &Dataset, operator: OperatorEntities) -> Self {
        Self::new(LookupTable::from_dataset(nlu), operator)
    }

    /// Every entity type this extractor can produce: the built-in ones, the lookup tables and
    /// the operator's regex entities (what reply templates may name).
    pub fn types(&self) -> Vec<String> {
        let mut t: Vec<String> = BUILTIN_TYPES.iter().map(|s| s.to_string()).collect();
        t.extend(self.lookup.names().map(str::to_string));
        t.extend(self.operator.names().map(str::to_string));
        t.sort();
        t.dedup();
        t
    }

    /// The entities of `text`, relative dates resolved against `now` (see the module doc).
    pub fn extract(&self, text: &str, now: DateTime<Tz>) -> Vec<Entity> {
        let mut cands = Vec::new();
        builtin::find(text, &mut cands);
        datetime::find(text, now, &mut cands);
        self.lookup.find(text, &mut cands);
        self.operator.find(text, &mut cands);
        let kept = resolve_overlaps(cands);
        let mut offsets = CharOffsets::new(text);
        kept.into_iter()
            .map(|c| {
                let value = text[c.start..c.end].to_string();
                let canonical = match c.source {
                    // Rasa's EntitySynonymMapper: an operator regex value that is a synonym
                    // variant gets the canonical term too.
                    EntitySource::Regex => self
                        .lookup
                        .synonym_of(&value)
                        .map(str::to_string)
                        .unwrap_or(c.canonical),
                    _ => c.canonical,
                };
                Entity {
                    entity: c.entity,
                    value,
                    canonical,
                    start: offsets.char_at(c.start),
                    end: offsets.char_at(c.end),
                    source: c.source,
                }
            })
            .collect()
    }
}

/// Longest first, then the higher rank, then the earlier start; a candidate overlapping one
/// already kept is dropped. Returns the kept ones in text order.
fn resolve_overlaps(mut cands: Vec<Candidate>) -> Vec<Candidate> {
    cands.retain(|c| c.end > c.start);
    cands.sort_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(b.rank.cmp(&a.rank))
            .then(a.start.cmp(&b.start))
            .then(a.entity.cmp(&b.entity))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    for c in cands {
        if kept.iter().all(|k| c.end <= k.start || c.start >= k.end) {
            kept.push(c);
        }
    }
    kept.sort_by_key(|c| c.start);
    kept
}

/// Byte offset → code point offset for increasing offsets of one text (the kept entities are
/// in text order and do not overlap), so a whole text costs one pass.
struct CharOffsets<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharOffsets<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            byte: 0,
            chars: 0,
        }
    }

    /// Matches start and end on character boundaries (the regexes and Aho-Corasick work on
    /// whole UTF-8 sequences); an offset before the last one asked restarts the count.
    fn char_at(&mut self, byte: usize) -> usize {
        let byte = byte.min(self.text.len());
        if byte < self.byte {
            self.byte = 0;
            self.chars = 0;
        }
        self.chars += match self.text.get(self.byte..byte) {
            Some(s) => s.chars().count(),
            // Not a boundary (never expected): count the characters starting in the range.
            None => self.text[self.byte..]
                .char_indices()
                .take_while(|(i, _)| self.byte + i < byte)
                .count(),
        };
        self.byte = byte;
        self.chars
    }
}

/// True for ASCII and full-width digits.
pub(crate) fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// Full-width digits (and the full-width comma / dot) as ASCII.
pub(crate) fn ascii_digits(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            '．' => '.',
            '，' => ',',
            c => c,
        })
        .collect()
}

/// The character just before byte `i` of `text`, if any.
pub(crate) fn char_before(text: &str, i: usize) -> Option<char> {
    text[..i].chars().next_back()
}

/// The character starting at byte `i` of `text`, if any.
pub(crate) fn char_after(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

#[cfg(test)]
mod tests;
