//! One validated, immutable set of operator files.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::engine::catalog::{Catalog, Handoff};
use crate::engine::entities::EntityExtractor;
use crate::engine::fusion::FusionConfig;
use crate::engine::keywords::KeywordLayer;
use crate::policy::compliance::BannedWords;
use crate::policy::config::OperatorConfig;
use crate::policy::playbook::ConfigSource;
use crate::policy::templates::Calendar;

/// Everything the operator configures, as loaded together (see the module doc).
#[derive(Debug)]
pub struct OperatorSnapshot {
    /// intents.yml: the intents, their display names and handoff flags.
    pub catalog: Catalog,
    /// rules.yml plus the training-data synonyms, regexes and lookups.
    pub keywords: KeywordLayer,
    /// Entity extractors: built-in patterns, the training data's lookup tables and synonyms,
    /// the operator's regex entities (entities.yml).
    pub entities: EntityExtractor,
    /// How model scores and keyword hits combine (from the server configuration).
    pub fusion: FusionConfig,
    /// The policy's files: playbook.yml, replies.yml, banned_words.txt, calendar.yml. Shared
    /// with the playbook, which reads it through [`LiveOperator`].
    pub policy: Arc<OperatorConfig>,
    /// Hash over the files' bytes: tells operators which version is live.
    pub config_hash: String,
}

impl OperatorSnapshot {
    /// What a person calls `intent` (the id itself when the catalog does not know it).
    pub fn display_name(&self, intent: &str) -> String {
        self.catalog
            .display_name(intent)
            .unwrap_or(intent)
            .to_string()
    }

    /// Whether intents.yml sends every message with `intent` to a human.
    pub fn always_handoff(&self, intent: &str) -> bool {
        self.catalog.handoff(intent) == Some(Handoff::Always)
    }

    pub fn banned_words(&self) -> &BannedWords {
        &self.policy.banned
    }

    pub fn calendar(&self) -> &Calendar {
        &self.policy.calendar
    }
}

/// The snapshot in service: requests load it, a reload stores a new one. The playbook reads its
/// policy part from here too, so one store changes everything at once.
pub type LiveOperator = ArcSwap<OperatorSnapshot>;

impl ConfigSource for LiveOperator {
    fn current(&self) -> Arc<OperatorConfig> {
        self.load().policy.clone()
    }
}
