//! The operator playbook as a pure decision engine: no network, no storage I/O.
//!
//! The server hands every classified message and every group event to a [`Playbook`]; the
//! playbook answers with a [`PolicyDecision`](crate::types::PolicyDecision) (reply, clarify,
//! handoff, block or ignore, plus when to send). The state the rules need (spacing, cooldowns,
//! open handoffs, pending welcomes, schedules) lives behind the [`PlaybookState`] trait (in
//! memory by default, [`MemoryState`]); the decisions themselves are pure functions of the
//! config, the state rows, the time and the input (`decide_message`, `decide_event`,
//! `decide_due`). Proactive sends (cron
//! schedules, countdowns, silence re-activation, merged welcomes, delayed pushes) are pulled with
//! [`Playbook::due`], which returns each item exactly once.
//!
//! Everything an operator may want to change lives in `config/operator/`:
//! `playbook.yml` (rules, per bot with per-group overrides), `replies.yml` (all reply texts),
//! `banned_words.txt` and `calendar.yml`. See [`config`] for the keys and their defaults.
//!
//! Time comes only from the injected clock; randomness (reply choice, jitter, A/B buckets) is
//! derived from a stable hash of the configured seed and the inputs, so a run is reproducible.
//!
//! # Reasons
//! `PolicyDecision::reason` is a stable machine string:
//!
//! | reason | action | meaning |
//! |---|---|---|
//! | `banned_word` | BLOCK | inbound text contains a banned word (after normalisation); review-queue entry |
//! | `<intent>` | BLOCK | the intent is one of `block_intents` (the shipped playbook: `spam_ads`); review-queue entry |
//! | `silent_intent` | IGNORE | the intent is configured as one the bot does not answer |
//! | `off_hours` | HANDOFF | outside service hours; off-hours reply once per user per closed period |
//! | `handoff:intent` | HANDOFF | the intent is handed to a human (`handoff.intents`, or `handoff: always` in intents.yml) |
//! | `handoff:not_understood` | HANDOFF | the user was not understood `handoff.not_understood_limit` times in a row |
//! | `clarify` | CLARIFY | not understood; asks the user to pick from the candidates |
//! | `cooldown` | IGNORE | same user, same intent answered within the cooldown |
//! | `faq` | REPLY | ordinary reply from the reply library |
//! | `rule:<id>` | REPLY | an attribute rule (tags / city / VIP / frequency) chose the reply |
//! | `ab:<experiment>` | REPLY | the reply variant came from an A/B experiment |
//! | `no_reply` | IGNORE | the intent has no usable reply |
//! | `banned_word:outbound` | IGNORE | every candidate reply rendered into a banned word |
//! | `merged:spacing` | IGNORE | a reply for the same intent is already queued in this group |
//! | `dropped:spacing_queue_full` | IGNORE | the group's send queue is full; recorded in [`Playbook::dropped_sends`] |
//! | `welcome` | REPLY | welcome sent now (merge window 0) |
//! | `welcome:queued` | REPLY | first join of a merge window; the welcome arrives via `due()` at window end (`send_after_ms`) |
//! | `merged_welcome` | IGNORE | a later join inside the window; listed in the pending welcome |
//! | `welcome:disabled` | IGNORE | welcomes are switched off for this group |
//! | `guidance:link` / `guidance:card` | REPLY | next-step guidance for a clicked link / shared card |
//! | `guidance:unknown_target` | IGNORE | no guidance configured for that link / card id |
//! | `member_left` / `activity` | IGNORE | bookkeeping events |

pub mod ab;
pub mod attributes;
pub mod bounded_queue;
pub mod compliance;
pub mod config;
pub mod cooldown;
pub mod decide_due;
pub mod decide_event;
pub mod decide_message;
pub mod decision;
pub mod events;
pub mod handoff;
mod hash;
pub mod hours;
pub mod operator_desk;
pub mod playbook;
pub mod preview;
pub mod replies;
pub mod scheduler;
pub mod spacing;
pub mod state;
pub mod state_journal;
pub mod state_memory;
pub mod state_persist;
#[doc(hidden)]
pub mod state_suite;
pub mod templates;
pub mod variables;

pub use compliance::ReviewItem;
pub use events::{EventDecision, EventInput, EventKind};
pub use playbook::{DroppedSend, Playbook};
pub use scheduler::{OutboundItem, OutboundKind};
pub use state::{PlaybookState, StateError};
pub use state_memory::{MemoryState, StateLimits};
