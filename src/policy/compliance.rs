//! Compliance: banned words on the way in (BLOCK + review) and on the way out (never sent).
//!
//! Matching runs on a normalised form so the usual tricks do not get through: NFKC folds
//! full-width letters and digits (`ＷＥＣＨＡＴ` → `WECHAT`), text is lower-cased, and everything
//! that is not a letter or digit is removed — spaces, punctuation, symbols, emoji and zero-width
//! characters inserted between the characters of a word (`微 信`, `微-信`, `微\u{200b}信`).
//! The banned words themselves are normalised the same way.

use aho_corasick::{AhoCorasick, MatchKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

use crate::data::{read_utf8, FileError};

/// The matching form of a text: NFKC, lower case, letters and digits only.
pub fn normalize(s: &str) -> String {
    s.nfkc()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// The banned-word list, ready to match normalised text.
#[derive(Debug, Clone)]
pub struct BannedWords {
    /// As written in the file (for review entries and errors).
    words: Vec<String>,
    matcher: Option<AhoCorasick>,
}

impl BannedWords {
    /// Build from words; a word that normalises to nothing is rejected.
    pub fn new<I, S>(words: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let words: Vec<String> = words.into_iter().map(Into::into).collect();
        let mut norm = Vec::with_capacity(words.len());
        for w in &words {
            let n = normalize(w);
            if n.is_empty() {
                return Err(format!("banned word '{w}' has no letters or digits"));
            }
            norm.push(n);
        }
        let matcher = if norm.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&norm)
                    .map_err(|e| format!("cannot build the banned-word matcher: {e}"))?,
            )
        };
        Ok(Self { words, matcher })
    }

    /// Load `banned_words.txt`: one word per line, `#` starts a comment line, blank lines skipped.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_utf8(path)?;
        let mut words = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let w = line.trim();
            if w.is_empty() || w.starts_with('#') {
                continue;
            }
            let n = normalize(w);
            if n.is_empty() {
                return Err(FileError::at_line(
                    path,
                    i + 1,
                    format!("banned word '{w}' has no letters or digits after normalisation"),
                ));
            }
            if let Some(prev) = seen.insert(n.clone(), i + 1) {
                return Err(FileError::at_line(
                    path,
                    i + 1,
                    format!("banned word '{w}' duplicates line {prev} after normalisation"),
                ));
            }
            words.push(w.to_string());
        }
        Self::new(words).map_err(|m| FileError::at_line(path, 1, m))
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The first banned word (as written in the list) found in `text`, if any.
    pub fn find(&self, text: &str) -> Option<&str> {
        let m = self.matcher.as_ref()?;
        let n = normalize(text);
        m.find(&n)
            .map(|hit| self.words[hit.pattern().as_usize()].as_str())
    }

    /// [`Self::find`], skipping the words a reviewer allowed (for one group).
    pub fn find_allowing(&self, text: &str, allowed: &BTreeSet<String>) -> Option<&str> {
        if allowed.is_empty() {
            return self.find(text);
        }
        let m = self.matcher.as_ref()?;
        let n = normalize(text);
        m.find_iter(&n)
            .map(|hit| self.words[hit.pattern().as_usize()].as_str())
            .find(|w| !allowed.contains(*w))
    }
}

/// An inbound message that compliance stopped, for a human to review. The text is already
/// PII-redacted, so the entry can be stored and shown as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewItem {
    pub at_ms: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
    pub message_id: String,
    pub text: String,
    /// The banned word that matched (empty for a blocked intent).
    pub matched: String,
    /// `banned_word`, or the blocked intent (`block_intents`).
    pub reason: String,
    /// What a reviewer decided (None: waiting for review). Entries stored before reviews
    /// could be decided read back as waiting.
    #[serde(default)]
    pub verdict: Option<ReviewVerdict>,
}

/// A reviewer's decision on a blocked message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewVerdict {
    /// True: a false positive, the message is answered after all. False: the block stands.
    pub approved: bool,
    /// The matched word is allowed from now on in the message's group.
    #[serde(default)]
    pub allowed_word: bool,
    pub by: String,
    pub at_ms: i64,
}

/// Why a review decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("no review item {0} (never queued, or past the review queue's limits)")]
    NotFound(u64),
    #[error("review item {id} was already {} by {by}", if *approved { "approved" } else { "confirmed" })]
    AlreadyDecided { id: u64, approved: bool, by: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> BannedWords {
        BannedWords::new(["微信", "wechat", "加V", "代开发票"]).unwrap()
    }

    #[test]
    fn obfuscations_are_caught() {
        let b = list();
        for text in [
            "加我微信聊",
            "加我微 信聊",
            "加我微-信聊",
            "加我微\u{200b}信聊",
            "加我微。信聊",
            "加我微★信聊",
            "联系ＷＥＣＨＡＴ",
            "联系 W e C h a T",
            "加ｖ详聊",
            "可以 代 开 发 票",
        ] {
            assert!(b.find(text).is_some(), "not caught: {text}");
        }
        assert_eq!(b.find("联系ＷＥＣＨＡＴ"), Some("wechat"));
        assert_eq!(b.find("加 v 详聊"), Some("加V"));
    }

    #[test]
    fn clean_text_passes() {
        let b = list();
        assert_eq!(b.find("这个多少钱？"), None);
        assert_eq!(b.find("微软的信箱"), None);
        assert_eq!(
            BannedWords::new(Vec::<String>::new()).unwrap().find("微信"),
            None
        );
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("Ｈｅｌｌｏ，世 界！ 123"), "hello世界123");
        assert!(BannedWords::new(["  !!  "]).is_err());
    }

    #[test]
    fn file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("banned_words.txt");
        std::fs::write(&p, "# comment\n微信\n\n微 信\n").unwrap();
        let e = BannedWords::load(&p).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "banned_words.txt:4: banned word '微 信' duplicates line 2 after normalisation"
            ),
            "{e}"
        );
        std::fs::write(&p, "# comment\n微信\n---\n").unwrap();
        let e = BannedWords::load(&p).unwrap_err();
        assert_eq!(e.line(), Some(3));
        std::fs::write(&p, "# c\n微信\nQQ号\n").unwrap();
        assert_eq!(BannedWords::load(&p).unwrap().len(), 2);
    }
}
