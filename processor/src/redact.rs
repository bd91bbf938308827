//! The redaction stage: what the redacted tier stores instead of personal data and secrets.
//!
//! It works on the span table's rows (an Arrow batch), after normalisation, so that one pass
//! covers every string a span carries: the span name, status message, typed columns derived
//! from attributes, attribute and resource-attribute values, and the JSON of events and links
//! (event names and attributes, link attributes). The collector runs it in the flusher's
//! lane of the redacted tier, on slices of a segment side by side, never on the receivers'
//! async threads. A redactor is shared by reference: it holds no per-call state.
//!
//! Two kinds of rules:
//! - **detectors** find values by their shape anywhere in a string (an email inside a prompt,
//!   a key inside tool arguments). All of them, built-in and custom, are compiled into one
//!   multi-pattern automaton, so a string is scanned once whatever the number of rules; a
//!   candidate is then confirmed by its detector's validator (Luhn, mod-97...).
//! - **key rules** act on the whole value of an attribute by its key (`*password*`,
//!   `user.id`), including keys inside JSON values, whatever the value looks like.
//!
//! Each span gets a summary of what was redacted: counts by kind, never values or keys.

mod config;
mod detectors;

use std::borrow::Cow;
use std::hash::BuildHasher as _;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Builder, MapArray, MapBuilder, RecordBatch, StringBuilder,
};
use arrow::error::ArrowError;
use hmac::{Hmac, KeyInit, Mac};
use regex_automata::meta::{Cache as MetaCache, Regex as MetaRegex};
use regex_automata::{Anchored, Input};
use runledger_schemas::{col, conventions};
use rustc_hash::{FxBuildHasher, FxHashMap};
use sha2::Sha256;

pub use config::{Action, CustomRule, KeyRule, RedactionConfig, DEFAULT_SECRET_KEYS};

use detectors::{Validator, BUILTINS};

/// Hex characters of the HMAC kept in a hash token: 64 bits, enough for joins and distinct
/// counts over any realistic number of values.
const HASH_HEX_CHARS: usize = 16;

/// An error building a redactor from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("redaction config: {0}")]
pub struct RedactionConfigError(String);

struct Detector {
    kind: usize,
    regex: MetaRegex,
    group: usize,
    validate: Option<Validator>,
    action: Action,
}

struct KeyDecision {
    action: Action,
    kind: usize,
}

/// The compiled rules. Cheap to share: the flusher holds it in an `Arc`.
pub struct Redactor {
    /// One automaton over the literals of the key rules (markers, see `marker_regex`), then
    /// every detector's pattern; the pattern id says which matched (with no pattern, it
    /// never matches).
    combined: MetaRegex,
    /// The number of markers: pattern `markers + i` of `combined` is detector `i`.
    markers: usize,
    /// The markers alone, to find one inside what a detector matched. `None` when some key
    /// rule has no literal: then `combined` has no markers, and every JSON value is parsed
    /// for its keys; with markers, only a value whose scan meets one.
    marker_regex: Option<MetaRegex>,
    /// The length of the longest marker.
    longest_marker: usize,
    /// Whether a marker tells by where it lies whether it is in a JSON object's key: no
    /// marker holds a quote or a backslash (see [`in_json_key`]). When one does, every marker
    /// is taken for a key's.
    markers_locate_keys: bool,
    /// Whether only `\u` escapes of ASCII characters can hide what the rules look for: true
    /// with the built-in detectors and ASCII key literals alone. A custom pattern may look
    /// for any character (`\p{L}`), and then any `\u` escape has a JSON value parsed.
    only_ascii_escapes_hide: bool,
    /// Search caches (the lazy DFAs' states), one set taken per batch and given back after.
    /// A regex's own pool serves the thread that first used it cheaply and any other thread
    /// from a stack picked by the thread's id, where a thread new to the redactor (blocking
    /// threads come and go) rarely finds the states that an earlier one built: it would
    /// build them again.
    caches: Mutex<Vec<SearchCaches>>,
    detectors: Vec<Detector>,
    /// Placeholder kinds, upper case; an index into this is a "kind".
    kinds: Vec<String>,
    key_globs: globset::GlobSet,
    key_decisions: Vec<KeyDecision>,
    mac: Hmac<Sha256>,
    /// Typed columns filled from attributes, with the keys they come from: a key rule on one
    /// of those keys applies to the column too.
    column_keys: Vec<(&'static str, Vec<String>)>,
}

/// What redaction did to a batch: total counts by kind, for metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RedactionTotals {
    /// `(kind, count)` for every kind with a non-zero count.
    pub by_kind: Vec<(String, u64)>,
}

/// How a string column is redacted.
#[derive(Clone, Copy)]
enum ColumnRedaction<'a> {
    /// The column is derived from a key with a rule: the rule applies to every value.
    KeyRule(&'a KeyDecision),
    /// The column holds JSON (events, links): key rules inside it, detectors on the rest.
    TextOrJson,
    /// The detectors, their action overridden when `Some` (run ids are always hashed).
    Detectors(Option<Action>),
}

#[derive(Clone)]
enum Edit {
    Keep,
    Replace(String),
    Drop,
}

impl Redactor {
    /// Compiles the rules. `customer_id_keys` are the processor's extra customer keys, hashed
    /// like `user.id`; `hmac_key` comes from [`RedactionConfig::resolve_hmac_key`].
    pub fn new(
        config: &RedactionConfig,
        customer_id_keys: &[String],
        hmac_key: &[u8],
    ) -> Result<Self, RedactionConfigError> {
        config.validate().map_err(RedactionConfigError)?;
        let mut kinds: Vec<String> = Vec::new();
        let mut kind_of = |name: &str| -> usize {
            let upper = name.to_ascii_uppercase();
            match kinds.iter().position(|k| *k == upper) {
                Some(i) => i,
                None => {
                    kinds.push(upper);
                    kinds.len() - 1
                }
            }
        };

        let mut patterns: Vec<String> = Vec::new();
        let mut detectors = Vec::new();
        let build = |pattern: &str| {
            MetaRegex::builder()
                .configure(MetaRegex::config().hybrid_cache_capacity(4 << 20))
                .build(pattern)
                .map_err(|e| RedactionConfigError(format!("pattern `{pattern}`: {e}")))
        };
        for builtin in BUILTINS {
            let action =
                config
                    .actions
                    .get(builtin.name)
                    .copied()
                    .unwrap_or(if builtin.default_hash {
                        Action::Hash
                    } else {
                        Action::Mask
                    });
            if action == Action::Allow {
                continue;
            }
            detectors.push(Detector {
                kind: kind_of(builtin.name),
                regex: build(builtin.pattern)?,
                group: builtin.group,
                validate: builtin.validate,
                action,
            });
            patterns.push(builtin.pattern.to_string());
        }
        for rule in &config.rules {
            detectors.push(Detector {
                kind: kind_of(&rule.name),
                regex: build(&rule.pattern)?,
                group: 0,
                validate: None,
                action: rule.action,
            });
            patterns.push(rule.pattern.clone());
        }
        // Key rules: the user's first, then customer ids (hashed), then secret-naming keys.
        let mut rules: Vec<(String, Action, usize)> = Vec::new();
        for rule in &config.keys {
            let kind = kind_of(rule.kind.as_deref().unwrap_or("redacted"));
            rules.push((rule.pattern.clone(), rule.action, kind));
        }
        let customer = kind_of("customer_id");
        for key in conventions::CUSTOMER_ID
            .iter()
            .copied()
            .chain(customer_id_keys.iter().map(String::as_str))
        {
            rules.push((key.to_string(), Action::Hash, customer));
        }
        let secret = kind_of("secret");
        for key in DEFAULT_SECRET_KEYS {
            rules.push((key.to_string(), Action::Mask, secret));
        }
        let mut globs = globset::GlobSetBuilder::new();
        let mut literals = Vec::new();
        let mut every_rule_has_literal = true;
        for (pattern, _, _) in &rules {
            let glob = globset::GlobBuilder::new(pattern)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|e| RedactionConfigError(format!("key rule `{pattern}`: {e}")))?;
            globs.add(glob);
            let literal = longest_literal(pattern);
            if literal.len() >= 3 {
                literals.push(literal);
            } else {
                every_rule_has_literal = false;
            }
        }
        let key_globs = globs
            .build()
            .map_err(|e| RedactionConfigError(format!("key rules: {e}")))?;
        // The markers ride on the detectors' scan, so a JSON value is read once, not once
        // for the literals and again for the detectors. They come first: where a detector
        // matches at the same place (`password": "x` is also the `secret` detector's), the
        // marker is seen and the scan tries the detectors there itself.
        let marker_patterns: Vec<String> = if every_rule_has_literal {
            literals
                .iter()
                .map(|l| format!("(?i:{})", regex::escape(l)))
                .collect()
        } else {
            Vec::new()
        };
        let markers = marker_patterns.len();
        let longest_marker = literals.iter().map(String::len).max().unwrap_or(0);
        let markers_locate_keys = literals.iter().all(|l| !l.contains(['"', '\\']));
        let only_ascii_escapes_hide =
            config.rules.is_empty() && literals.iter().all(|l| l.is_ascii());
        let marker_regex = if every_rule_has_literal {
            Some(
                MetaRegex::new_many(&marker_patterns)
                    .map_err(|e| RedactionConfigError(format!("key rule literals: {e}")))?,
            )
        } else {
            None
        };
        let combined = MetaRegex::builder()
            .configure(MetaRegex::config().hybrid_cache_capacity(16 << 20))
            .build_many(&[marker_patterns, patterns].concat())
            .map_err(|e| RedactionConfigError(format!("combined patterns: {e}")))?;
        let caches = Mutex::new(Vec::new());
        let key_decisions = rules
            .into_iter()
            .map(|(_, action, kind)| KeyDecision { action, kind })
            .collect();

        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(hmac_key)
            .map_err(|e| RedactionConfigError(format!("hmac key: {e}")))?;

        let owned = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let mut customer_keys = owned(conventions::CUSTOMER_ID);
        customer_keys.extend(customer_id_keys.iter().cloned());
        let mut agent_keys = owned(conventions::AGENT_NAME);
        agent_keys.push(conventions::SERVICE_NAME.to_string());
        let column_keys = vec![
            (
                col::SERVICE_NAME,
                vec![conventions::SERVICE_NAME.to_string()],
            ),
            (col::AGENT_NAME, agent_keys),
            (col::AGENT_ID, owned(conventions::AGENT_ID)),
            (col::WORKFLOW, owned(conventions::WORKFLOW)),
            (col::CUSTOMER_ID, customer_keys),
            (col::CONVERSATION_ID, owned(conventions::CONVERSATION_ID)),
            (col::TOOL_NAME, owned(conventions::TOOL_NAME)),
            (col::TOOL_CALL_ID, owned(conventions::TOOL_CALL_ID)),
            (col::ERROR_TYPE, owned(conventions::ERROR_TYPE)),
            (col::EXTERNAL_REF, vec![conventions::ACTION_REF.to_string()]),
            (col::OPERATION, owned(conventions::OPERATION)),
            (col::PROVIDER, owned(conventions::PROVIDER)),
            (col::REQUEST_MODEL, owned(conventions::REQUEST_MODEL)),
            (col::RESPONSE_MODEL, owned(conventions::RESPONSE_MODEL)),
        ];

        Ok(Self {
            combined,
            caches,
            detectors,
            kinds,
            key_globs,
            key_decisions,
            markers,
            marker_regex,
            longest_marker,
            markers_locate_keys,
            only_ascii_escapes_hide,
            mac,
            column_keys,
        })
    }

    /// The kinds that summaries and metrics name, upper case.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    /// The keyed hash of a value as the redacted tier stores it for `kind` (e.g.
    /// `customer_id`): what `erase` looks for.
    pub fn hash_token(&self, kind: &str, value: &str) -> String {
        format!(
            "<{}:{}>",
            kind.to_ascii_uppercase(),
            self.hmac_hex(value.as_bytes())
        )
    }

    fn hmac_hex(&self, value: &[u8]) -> String {
        let mut out = String::with_capacity(HASH_HEX_CHARS);
        self.push_hmac_hex(value, &mut out);
        out
    }

    /// Appends the first [`HASH_HEX_CHARS`] hex characters of the value's HMAC to `out`.
    fn push_hmac_hex(&self, value: &[u8], out: &mut String) {
        let mut mac = self.mac.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut hex = [0u8; HASH_HEX_CHARS];
        hex::encode_to_slice(&digest[..HASH_HEX_CHARS / 2], &mut hex)
            .expect("the slice holds two characters per byte");
        out.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
    }

    /// The placeholder of a value: `<KIND>`, or `<KIND:hmac>` for a keyed hash.
    fn replacement(&self, kind: usize, action: Action, value: &str) -> String {
        let name = &self.kinds[kind];
        let mut out = String::with_capacity(name.len() + HASH_HEX_CHARS + 3);
        out.push('<');
        out.push_str(name);
        if action == Action::Hash {
            out.push(':');
            self.push_hmac_hex(value.as_bytes(), &mut out);
        }
        out.push('>');
        out
    }

    /// Redacts one string with the detectors. `counts` (one slot per kind) is incremented
    /// for each value found.
    pub fn redact_str<'a>(&self, text: &'a str, counts: &mut [u32]) -> Cow<'a, str> {
        let edit = self.with_cache(|cache| self.scan(cache, text, counts, None));
        match edit {
            Edit::Keep => Cow::Borrowed(text),
            Edit::Replace(s) => Cow::Owned(s),
            Edit::Drop => Cow::Owned(String::new()),
        }
    }

    /// Calls `f` with a set of search caches, taken from the redactor's (or made) and given
    /// back after.
    fn with_cache<R>(&self, f: impl FnOnce(&mut SearchCaches) -> R) -> R {
        let lock = || {
            self.caches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        let taken = lock().pop();
        let mut caches = taken.unwrap_or_else(|| SearchCaches {
            combined: self.combined.create_cache(),
            markers: self.marker_regex.as_ref().map(MetaRegex::create_cache),
            detectors: self
                .detectors
                .iter()
                .map(|d| (d.regex.create_cache(), d.regex.create_captures()))
                .collect(),
        });
        let result = f(&mut caches);
        lock().push(caches);
        result
    }

    /// Runs the detectors over `text`. `force` overrides every detector's action (run ids
    /// are always hashed, so that two runs never merge into one placeholder).
    fn scan(
        &self,
        cache: &mut SearchCaches,
        text: &str,
        counts: &mut [u32],
        force: Option<Action>,
    ) -> Edit {
        self.scan_until_marker(cache, text, counts, force, false)
            .unwrap_or(Edit::Keep)
    }

    /// [`Self::scan`], which with `stop_at_marker` gives up at the first literal of a key
    /// rule, counting nothing, and returns `None`: the caller then reads the value as JSON.
    fn scan_until_marker(
        &self,
        cache: &mut SearchCaches,
        text: &str,
        counts: &mut [u32],
        force: Option<Action>,
        stop_at_marker: bool,
    ) -> Option<Edit> {
        // JSON escapes glue a value to the letter before it (`"\n4111..."`: no word
        // boundary between `n` and `4`). Detection runs over a copy of the same length whose
        // escape letters are spaces; the edits apply to the original at the same offsets.
        let shadow;
        let hay = if memchr_backslash(text) {
            let hiding;
            (shadow, hiding) = blank_escapes(text, self.only_ascii_escapes_hide);
            // A `\u` escape may spell what a key rule's literal or a detector looks for
            // (`"pass\u0077ord"`, `\u0040`), which the scan cannot see: the parser decodes.
            if hiding && stop_at_marker {
                return None;
            }
            shadow.as_str()
        } else {
            text
        };
        let mut scan = Scan {
            combined: &self.combined,
            cache,
            hay,
            text,
            counts,
            force,
            stop_at_marker,
            stopped_at_marker: false,
            found: Vec::new(),
            edits: Vec::new(),
        };
        if self.scan_range(&mut scan, 0, text.len()).is_break() {
            if !scan.stopped_at_marker {
                return Some(Edit::Drop);
            }
            for &kind in &scan.found {
                scan.counts[kind] -= 1;
            }
            return None;
        }
        if scan.edits.is_empty() {
            return Some(Edit::Keep);
        }
        Some(Edit::Replace(splice(text, &scan.edits)))
    }

    /// Finds what the detectors redact in `from..to` of the haystack (matches end by `to`;
    /// word boundaries still see past it) and records the edits in order. Breaks when a
    /// detector's action drops the whole value.
    fn scan_range(&self, scan: &mut Scan<'_, '_>, from: usize, to: usize) -> ControlFlow<()> {
        let hay = scan.hay;
        let mut at = from;
        while at < to {
            let Some(m) = scan
                .combined
                .search_with(&mut scan.cache.combined, &Input::new(hay).range(at..to))
            else {
                break;
            };
            let start = m.start();
            let caches = &mut *scan.cache;
            let hit = match m.pattern().as_usize().checked_sub(self.markers) {
                Some(first) => self
                    .confirm(caches, hay, first, start, m.end(), to)
                    .or_else(|| {
                        // The pattern that matched here did not validate: another may.
                        (0..self.detectors.len())
                            .filter(|&i| i != first)
                            .find_map(|i| self.confirm_anchored(caches, hay, i, start, to))
                    }),
                None if scan.stop_at_marker && self.marker_in_key(hay, m.end()) => {
                    scan.stopped_at_marker = true;
                    return ControlFlow::Break(());
                }
                // A key rule's literal, which has priority: any detector may match here too.
                // In a JSON value, one that is not in a key (`"content": "rotate the api_key"`)
                // is text like any other: the scan goes on, and the value is not parsed.
                None => (0..self.detectors.len())
                    .find_map(|i| self.confirm_anchored(caches, hay, i, start, to)),
            };
            if scan.stop_at_marker {
                if let Some((_, range, end)) = &hit {
                    // A literal inside what a detector takes (a key that holds an email).
                    if self.marker_within(caches, hay, start.min(range.start)..*end) {
                        scan.stopped_at_marker = true;
                        return ControlFlow::Break(());
                    }
                }
            }
            match hit {
                Some((i, range, end)) => {
                    // A detector that redacts a group (the value after `password is`) must
                    // not hide what lies between its match's start and that group.
                    let inner = next_char(hay, start);
                    if range.start > inner {
                        self.scan_range(scan, inner, range.start)?;
                    }
                    let detector = &self.detectors[i];
                    scan.counts[detector.kind] += 1;
                    scan.found.push(detector.kind);
                    let action = scan.force.unwrap_or(detector.action);
                    if action == Action::Drop {
                        return ControlFlow::Break(());
                    }
                    let replacement =
                        self.replacement(detector.kind, action, &scan.text[range.clone()]);
                    scan.edits.push((range, replacement));
                    at = end.max(start + 1);
                }
                None => at = next_char(hay, start),
            }
            at = ceil_char(hay, at);
        }
        ControlFlow::Continue(())
    }

    /// Whether a marker in a JSON object's key starts in `range` of the haystack.
    fn marker_within(
        &self,
        caches: &mut SearchCaches,
        hay: &str,
        range: std::ops::Range<usize>,
    ) -> bool {
        let (Some(regex), Some(cache)) = (&self.marker_regex, caches.markers.as_mut()) else {
            return false;
        };
        let to = (range.end + self.longest_marker).min(hay.len());
        let mut at = range.start;
        while at < range.end {
            let input = Input::new(hay).range(at..to);
            match regex.search_with(cache, &input) {
                Some(m) if m.start() < range.end => {
                    if self.marker_in_key(hay, m.end()) {
                        return true;
                    }
                    at = next_char(hay, m.start());
                }
                _ => return false,
            }
        }
        false
    }

    /// Whether the marker that ends at `end` of a JSON value's haystack is in an object's
    /// key (or may be: see [`in_json_key`]).
    fn marker_in_key(&self, hay: &str, end: usize) -> bool {
        !self.markers_locate_keys || in_json_key(hay.as_bytes(), end)
    }

    /// Confirms the combined automaton's match of detector `i` at `start..end`: returns the
    /// detector, the range to redact and where scanning resumes. Nothing past `to` is taken.
    fn confirm(
        &self,
        caches: &mut SearchCaches,
        text: &str,
        i: usize,
        start: usize,
        end: usize,
        to: usize,
    ) -> Option<(usize, std::ops::Range<usize>, usize)> {
        let detector = &self.detectors[i];
        let range = if detector.group == 0 {
            start..end
        } else {
            self.group_range(caches, text, i, start, to)?
        };
        let range = match detector.validate {
            Some(validate) => validate(text, range)?,
            None => range,
        };
        Some((i, range.clone(), end.max(range.end)))
    }

    fn confirm_anchored(
        &self,
        caches: &mut SearchCaches,
        text: &str,
        i: usize,
        start: usize,
        to: usize,
    ) -> Option<(usize, std::ops::Range<usize>, usize)> {
        let input = Input::new(text).range(start..to).anchored(Anchored::Yes);
        let m = self.detectors[i]
            .regex
            .search_with(&mut caches.detectors[i].0, &input)?;
        self.confirm(caches, text, i, start, m.end(), to)
    }

    fn group_range(
        &self,
        caches: &mut SearchCaches,
        text: &str,
        i: usize,
        start: usize,
        to: usize,
    ) -> Option<std::ops::Range<usize>> {
        let (cache, caps) = &mut caches.detectors[i];
        let input = Input::new(text).range(start..to).anchored(Anchored::Yes);
        self.detectors[i]
            .regex
            .search_captures_with(cache, &input, caps);
        caps.get_group(self.detectors[i].group).map(|s| s.range())
    }

    /// The index of the first key rule (in priority order) that matches `key`, if any.
    fn key_rule_index(&self, key: &str) -> Option<usize> {
        self.key_globs.matches(key).into_iter().min()
    }

    /// The first key rule that matches `key`, if any.
    fn key_rule(&self, key: &str) -> Option<&KeyDecision> {
        self.key_rule_index(key).map(|i| &self.key_decisions[i])
    }

    /// What a key rule does to the whole value of its key, counted once.
    fn apply_key_rule(&self, d: &KeyDecision, value: &str, counts: &mut [u32]) -> Edit {
        match d.action {
            Action::Allow => Edit::Keep,
            Action::Drop => {
                counts[d.kind] += 1;
                Edit::Drop
            }
            action => {
                counts[d.kind] += 1;
                Edit::Replace(self.replacement(d.kind, action, value))
            }
        }
    }

    /// Redacts an attribute value: its key's rule if one matches, else the detectors (and
    /// key rules on the keys inside a JSON value).
    #[allow(clippy::too_many_arguments)]
    fn redact_value<'b>(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        elements: &mut Memo<&'b str>,
        clean: &mut CleanValues<'b>,
        decision: Option<&KeyDecision>,
        value: &'b str,
        counts: &mut [u32],
    ) -> Edit {
        match decision {
            Some(d) => self.apply_key_rule(d, value, counts),
            None => self.redact_text_or_json(cache, keys, elements, clean, value, counts),
        }
    }

    /// A value that may hold JSON. A long JSON array is redacted element by element, each
    /// element once per batch (`elements`): a conversation's history (`gen_ai.input.messages`)
    /// is resent whole with every model call of a run, one message longer each time.
    fn redact_text_or_json<'b>(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        elements: &mut Memo<&'b str>,
        clean: &mut CleanValues<'b>,
        value: &'b str,
        counts: &mut [u32],
    ) -> Edit {
        // Text that is not JSON is scanned whole, as `redact_text_or_json_whole` would.
        if !looks_like_json(value) {
            return self.scan_memo_clean(cache, clean, value, counts, None);
        }
        if value.len() >= MEMO_MIN_BYTES {
            if let Some(items) = json_array_elements(value) {
                return self.redact_elements(cache, keys, elements, value, &items, counts);
            }
        }
        self.redact_text_or_json_whole(cache, keys, value, counts)
    }

    /// [`Self::scan`], remembering the short values that it leaves as they are: most of a
    /// span's values are short and repeat across the spans of a batch (operation and model
    /// names, finish reasons, token counts), and a search costs far more than a lookup. A
    /// value that is kept had nothing found in it (every finding is an edit), so a repeat is
    /// kept and counts nothing, as its scan would.
    fn scan_memo_clean<'b>(
        &self,
        cache: &mut SearchCaches,
        clean: &mut CleanValues<'b>,
        value: &'b str,
        counts: &mut [u32],
        force: Option<Action>,
    ) -> Edit {
        if value.len() > CLEAN_MEMO_MAX_BYTES {
            return self.scan(cache, value, counts, force);
        }
        // Hashed once: for the lookup and, when the value is new and clean, its insertion.
        let hash = FxBuildHasher.hash_one(value);
        if clean.find(hash, |v| *v == value).is_some() {
            return Edit::Keep;
        }
        let edit = self.scan(cache, value, counts, force);
        if matches!(edit, Edit::Keep) {
            clean.insert_unique(hash, value, |v| FxBuildHasher.hash_one(v));
        }
        edit
    }

    /// The elements of a JSON array (slices of `value`, separators and brackets between
    /// them), each redacted as a value of its own or taken from the batch's memo; the array
    /// is put back together only when some element changed. An element that a detector
    /// drops drops the whole value, as the scan of the whole text would have. As in a parsed
    /// JSON value, a detector sees one element at a time: context does not reach across (a
    /// secret-naming word at the end of one message does not flag a high-entropy word at the
    /// start of the next).
    fn redact_elements<'b>(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        elements: &mut Memo<&'b str>,
        value: &'b str,
        items: &[std::ops::Range<usize>],
        counts: &mut [u32],
    ) -> Edit {
        let mut edits = Vec::with_capacity(items.len());
        for range in items {
            let item = &value[range.clone()];
            let edit = memoized(elements, item, 0, item, counts, |counts| {
                self.redact_text_or_json_whole(cache, keys, item, counts)
            });
            match edit {
                Edit::Drop => return Edit::Drop,
                Edit::Keep => {}
                Edit::Replace(r) => edits.push((range.clone(), r)),
            }
        }
        if edits.is_empty() {
            return Edit::Keep;
        }
        Edit::Replace(splice(value, &edits))
    }

    /// A value that may hold JSON, redacted in one piece.
    fn redact_text_or_json_whole(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        value: &str,
        counts: &mut [u32],
    ) -> Edit {
        if !looks_like_json(value) {
            return self.scan(cache, value, counts, None);
        }
        // A JSON value is scanned as text until the first key rule's literal (or a `\u`
        // escape that may hide one, or what a detector looks for): without one, no key rule
        // applies inside it and the text scan is its redaction.
        if self.marker_regex.is_some() {
            if let Some(edit) = self.scan_until_marker(cache, value, counts, None, true) {
                return edit;
            }
        }
        match serde_json::from_str::<serde_json::Value>(value) {
            Ok(mut json) => {
                if self.redact_json(cache, keys, &mut json, counts) {
                    Edit::Replace(json.to_string())
                } else {
                    Edit::Keep
                }
            }
            Err(_) => self.scan(cache, value, counts, None),
        }
    }

    /// Walks a JSON value: key rules on object keys, detectors on keys, strings and numbers.
    /// Returns whether anything changed.
    fn redact_json(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        json: &mut serde_json::Value,
        counts: &mut [u32],
    ) -> bool {
        use serde_json::Value;
        match json {
            Value::String(s) => {
                let edit = self.scan(cache, s, counts, None);
                apply_to_json(json, edit)
            }
            Value::Number(n) => {
                let edit = self.scan(cache, &n.to_string(), counts, None);
                apply_to_json(json, edit)
            }
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.redact_json(cache, keys, item, counts);
                }
                changed
            }
            Value::Object(map) => {
                let mut changed = false;
                let entries = std::mem::take(map);
                for (key, mut value) in entries {
                    let info = self.key_info_cached(cache, keys, &key);
                    for &kind in &info.key_kinds {
                        counts[kind] += 1;
                    }
                    if info.key_dropped {
                        changed = true;
                        continue;
                    }
                    let rule = info.rule.map(|i| &self.key_decisions[i]);
                    let new_key = match &info.redacted_key {
                        None => key,
                        Some(r) => {
                            changed = true;
                            r.clone()
                        }
                    };
                    match rule {
                        Some(d) if d.action == Action::Allow => {}
                        Some(d) => {
                            let text = match &value {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            match self.apply_key_rule(d, &text, counts) {
                                Edit::Keep => {}
                                Edit::Replace(r) => value = Value::String(r),
                                Edit::Drop => {
                                    changed = true;
                                    continue;
                                }
                            }
                            changed = true;
                        }
                        None => changed |= self.redact_json(cache, keys, &mut value, counts),
                    }
                    map.insert(new_key, value);
                }
                changed
            }
            Value::Null | Value::Bool(_) => false,
        }
    }

    /// The redacted copy of a batch of span-table rows, with the `redactions` summary column
    /// filled, and the totals by kind. Columns that nothing matched are shared, not copied.
    pub fn redact_batch(
        &self,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, RedactionTotals), ArrowError> {
        self.with_cache(|cache| self.redact_batch_with(cache, batch))
    }

    fn redact_batch_with(
        &self,
        cache: &mut SearchCaches,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, RedactionTotals), ArrowError> {
        let rows = batch.num_rows();
        let kinds = self.kinds.len();
        let mut counts = vec![0u32; rows * kinds];
        let schema = batch.schema();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut key_cache = KeyCache::default();
        let mut clean = CleanValues::default();

        for (i, field) in schema.fields().iter().enumerate() {
            let name = field.name().as_str();
            let column = &batch.columns()[i];
            let replaced = match name {
                col::TRACE_ID
                | col::SPAN_ID
                | col::PARENT_SPAN_ID
                | col::KIND
                | col::STATUS_CODE
                | col::SIDE_EFFECT
                | col::OUTCOME
                | col::PRICE_VERSION
                | col::DATE
                | col::HOUR
                | col::REDACTIONS => None,
                col::ATTRIBUTES | col::RESOURCE_ATTRIBUTES | col::SCOPE_ATTRIBUTES => {
                    self.redact_map(cache, column, &mut counts, &mut key_cache, &mut clean)?
                }
                _ if field.data_type() == &arrow::datatypes::DataType::Utf8 => {
                    let rule = self
                        .column_keys
                        .iter()
                        .find(|(c, _)| *c == name)
                        .and_then(|(_, keys)| keys.iter().find_map(|k| self.key_rule(k)))
                        .filter(|d| d.action != Action::Allow);
                    let how = match rule {
                        Some(d) => ColumnRedaction::KeyRule(d),
                        None if matches!(name, col::EVENTS | col::LINKS) => {
                            ColumnRedaction::TextOrJson
                        }
                        None => ColumnRedaction::Detectors(
                            (name == col::RUN_ID).then_some(Action::Hash),
                        ),
                    };
                    let nullable = field.is_nullable();
                    let keys = &mut key_cache;
                    self.redact_strings(cache, keys, &mut clean, column, nullable, how, &mut counts)
                }
                _ => None,
            };
            if let Some(array) = replaced {
                columns[i] = array;
            }
        }

        // The per-span summary, and the batch totals.
        let mut totals = vec![0u64; kinds];
        let mut summary = MapBuilder::new(
            Some(crate::map_field_names()),
            StringBuilder::new(),
            Int32Builder::new(),
        );
        for row in 0..rows {
            for (kind, &n) in counts[row * kinds..(row + 1) * kinds].iter().enumerate() {
                if n > 0 {
                    summary.keys().append_value(&self.kinds[kind]);
                    summary.values().append_value(n as i32);
                    totals[kind] += n as u64;
                }
            }
            summary.append(true)?;
        }
        let summary: ArrayRef = Arc::new(summary.finish());
        let i = schema.index_of(col::REDACTIONS)?;
        columns[i] = arrow::compute::cast(&summary, schema.field(i).data_type())?;
        let by_kind = totals
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (self.kinds[k].clone(), n))
            .collect();
        Ok((
            RecordBatch::try_new(schema, columns)?,
            RedactionTotals { by_kind },
        ))
    }

    /// A string column: a key rule for the whole column (derived from a denied key), else
    /// the detectors on each value. `None` when nothing changed.
    #[allow(clippy::too_many_arguments)]
    fn redact_strings<'b>(
        &self,
        cache: &mut SearchCaches,
        keys: &mut KeyCache,
        clean: &mut CleanValues<'b>,
        column: &'b ArrayRef,
        nullable: bool,
        how: ColumnRedaction<'_>,
        counts: &mut [u32],
    ) -> Option<ArrayRef> {
        let strings = column.as_string::<i32>();
        let kinds = self.kinds.len();
        let mut edits: Vec<(usize, Option<String>)> = Vec::new();
        let mut memo = Memo::default();
        let mut elements = Memo::default();
        // Consecutive rows often hold the same value (the spans of a run share its id, its
        // service, agent and workflow): the previous value's redaction and findings are reused.
        let mut previous: Option<(&str, Edit, Found)> = None;
        let mut found = vec![0u32; kinds];
        for (row, value) in strings.iter().enumerate() {
            let Some(value) = value else { continue };
            let row_counts = &mut counts[row * kinds..(row + 1) * kinds];
            if let Some((last, edit, last_found)) = &previous {
                if *last == value {
                    add_found(row_counts, last_found);
                    push_string_edit(&mut edits, row, edit.clone(), nullable);
                    continue;
                }
            }
            let edit = memoized(
                &mut memo,
                value,
                MEMO_MIN_BYTES,
                value,
                &mut found,
                |counts| match how {
                    ColumnRedaction::KeyRule(d) => self.apply_key_rule(d, value, counts),
                    ColumnRedaction::TextOrJson => {
                        self.redact_text_or_json(cache, keys, &mut elements, clean, value, counts)
                    }
                    ColumnRedaction::Detectors(force) => {
                        self.scan_memo_clean(cache, clean, value, counts, force)
                    }
                },
            );
            let value_found = drain_found(&mut found);
            add_found(row_counts, &value_found);
            push_string_edit(&mut edits, row, edit.clone(), nullable);
            previous = Some((value, edit, value_found));
        }
        if edits.is_empty() {
            return None;
        }
        let edits = edits.iter().map(|(row, edit)| (*row, edit.as_deref()));
        Some(Arc::new(splice_strings(strings, 0..strings.len(), edits)))
    }

    /// An attribute map: key rules by key (decided once per distinct key in the batch), else
    /// detectors on the value. Entries whose action is drop are removed; a key that itself
    /// holds something a detector finds is redacted too.
    fn redact_map<'b>(
        &self,
        search_cache: &mut SearchCaches,
        column: &'b ArrayRef,
        counts: &mut [u32],
        key_cache: &mut KeyCache,
        clean: &mut CleanValues<'b>,
    ) -> Result<Option<ArrayRef>, ArrowError> {
        let map = column.as_map();
        let keys = map.keys().as_string::<i32>();
        let values = map.values().as_string::<i32>();
        let offsets = map.value_offsets();
        let kinds = self.kinds.len();
        // (entry, new key if changed, new value: None = drop, Some(None) = unchanged).
        let mut edits: Vec<(usize, Option<String>, Option<Option<String>>)> = Vec::new();
        let mut memo = Memo::default();
        let mut elements = Memo::default();
        // A row with the same entries as the one before it (the spans of one resource share
        // its attributes) gets that row's redaction: its edits and what this column counted.
        let entries = |row: usize| offsets[row] as usize..offsets[row + 1] as usize;
        let same_entries = |a: usize, b: usize| {
            entries(a).len() == entries(b).len()
                && entries(a).zip(entries(b)).all(|(x, y)| {
                    keys.value(x) == keys.value(y)
                        && values.is_null(x) == values.is_null(y)
                        && values.value(x) == values.value(y)
                })
        };
        let mut counted_before = vec![0u32; kinds];
        let mut previous_row_counts = vec![0u32; kinds];
        let mut previous_row_edits = 0..0;
        for row in 0..map.len() {
            let row_counts = &mut counts[row * kinds..(row + 1) * kinds];
            if row > 0 && same_entries(row - 1, row) {
                for (count, previous) in row_counts.iter_mut().zip(&previous_row_counts) {
                    *count += previous;
                }
                let shift = entries(row).start - entries(row - 1).start;
                let first = edits.len();
                for i in previous_row_edits.clone() {
                    let (entry, key, value) = edits[i].clone();
                    edits.push((entry + shift, key, value));
                }
                previous_row_edits = first..edits.len();
                continue;
            }
            counted_before.copy_from_slice(row_counts);
            let first_edit = edits.len();
            for entry in entries(row) {
                let info = self.key_info_cached(search_cache, key_cache, keys.value(entry));
                for &kind in &info.key_kinds {
                    row_counts[kind] += 1;
                }
                let rule = info.rule;
                let redacted_key = info.redacted_key.clone();
                let edit = if values.is_null(entry) {
                    Edit::Keep
                } else {
                    let value = values.value(entry);
                    let decision = rule.map(|i| &self.key_decisions[i]);
                    let key = (rule, value);
                    memoized(
                        &mut memo,
                        key,
                        MEMO_MIN_BYTES,
                        value,
                        row_counts,
                        |counts| {
                            let elements = &mut elements;
                            self.redact_value(
                                search_cache,
                                key_cache,
                                elements,
                                clean,
                                decision,
                                value,
                                counts,
                            )
                        },
                    )
                };
                let new_value = match edit {
                    Edit::Keep => Some(None),
                    Edit::Replace(s) => Some(Some(s)),
                    Edit::Drop => None,
                };
                if redacted_key.is_some() || !matches!(new_value, Some(None)) {
                    edits.push((entry, redacted_key, new_value));
                }
            }
            previous_row_edits = first_edit..edits.len();
            for (kind, previous) in previous_row_counts.iter_mut().enumerate() {
                *previous = row_counts[kind] - counted_before[kind];
            }
        }
        if edits.is_empty() {
            return Ok(None);
        }
        // Most often only values change: the keys, the offsets and the validity stay, and
        // the values are copied in runs between the edits.
        if edits
            .iter()
            .all(|(_, key, value)| key.is_none() && matches!(value, Some(Some(_))))
        {
            let first = offsets[0] as usize;
            let last = offsets[map.len()] as usize;
            let replaced = edits.iter().map(|(entry, _, value)| {
                (entry - first, value.as_ref().and_then(|v| v.as_deref()))
            });
            let values = splice_strings(values, first..last, replaced);
            let entries = map.entries();
            let keys = entries.column(0).slice(first, last - first);
            let entries = arrow::array::StructArray::try_new(
                entries.fields().clone(),
                vec![keys, Arc::new(values)],
                entries.nulls().map(|n| n.slice(first, last - first)),
            )?;
            let (field, keys_sorted) = match column.data_type() {
                arrow::datatypes::DataType::Map(field, sorted) => (field.clone(), *sorted),
                other => unreachable!("a map column has a map type, not {other}"),
            };
            let rebased = offsets.iter().map(|o| o - offsets[0]).collect::<Vec<i32>>();
            let array = MapArray::try_new(
                field,
                arrow::buffer::OffsetBuffer::new(rebased.into()),
                entries,
                map.nulls().cloned(),
                keys_sorted,
            )?;
            return Ok(Some(Arc::new(array)));
        }
        let mut builder = MapBuilder::new(
            Some(crate::map_field_names()),
            StringBuilder::with_capacity(keys.len(), keys.values().len()),
            StringBuilder::with_capacity(values.len(), values.values().len()),
        );
        let mut next = edits.iter().peekable();
        for row in 0..map.len() {
            for entry in offsets[row] as usize..offsets[row + 1] as usize {
                let original = (!values.is_null(entry)).then(|| values.value(entry));
                let (key, value) = match next.peek() {
                    Some((e, new_key, new_value)) if *e == entry => {
                        next.next();
                        let Some(new_value) = new_value else { continue };
                        (
                            new_key.as_deref().unwrap_or(keys.value(entry)),
                            new_value.as_deref().or(original),
                        )
                    }
                    _ => (keys.value(entry), original),
                };
                builder.keys().append_value(key);
                builder.values().append_option(value);
            }
            builder.append(!map.is_null(row))?;
        }
        let built: MapArray = builder.finish();
        // Keep the exact field definitions (nullability) of the table's schema.
        let array = arrow::compute::cast(&built, column.data_type())?;
        Ok(Some(array))
    }

    /// What the rules decide about `key`, from the batch's cache or worked out once.
    fn key_info_cached<'k>(
        &self,
        cache: &mut SearchCaches,
        keys: &'k mut KeyCache,
        key: &str,
    ) -> &'k KeyInfo {
        keys.entry_ref(key)
            .or_insert_with(|| self.key_info(cache, key))
    }

    fn key_info(&self, cache: &mut SearchCaches, key: &str) -> KeyInfo {
        let mut kind_counts = vec![0u32; self.kinds.len()];
        let edit = self.scan(cache, key, &mut kind_counts, None);
        let key_dropped = matches!(edit, Edit::Drop);
        let redacted_key = match edit {
            Edit::Keep => None,
            Edit::Replace(s) => Some(s),
            Edit::Drop => Some("<REDACTED>".to_string()),
        };
        let key_kinds = kind_counts
            .iter()
            .enumerate()
            .flat_map(|(kind, &n)| std::iter::repeat_n(kind, n as usize))
            .collect();
        KeyInfo {
            rule: self.key_rule_index(key),
            redacted_key,
            key_dropped,
            key_kinds,
        }
    }
}

/// Values at most this long that the detectors leave unchanged are remembered per batch
/// (see [`Redactor::scan_memo_clean`]).
const CLEAN_MEMO_MAX_BYTES: usize = 64;

/// Short values that the detectors found nothing in, in one batch, by their
/// [`FxBuildHasher`] hash (which [`Redactor::scan_memo_clean`] computes once per value).
type CleanValues<'b> = hashbrown::HashTable<&'b str>;

/// Whether a value is read as JSON (an object or an array), not as text.
fn looks_like_json(value: &str) -> bool {
    matches!(value.trim_start().as_bytes().first(), Some(b'{' | b'['))
}

/// Values at least this long are redacted once per batch and the answer reused: agents
/// resend the same system instructions, tool definitions and retrieved documents with every
/// model call, and scanning them again is most of what redaction costs on such traffic.
const MEMO_MIN_BYTES: usize = 256;

/// The redactions of a batch's long values, by what decides them (the key rule and the
/// value of an attribute; the value of a column): the edit, and the kinds it found with
/// their counts. Redaction is a function of the rule and the value alone, so a repeat gets
/// exactly what a second scan would give.
type Memo<K> = FxHashMap<K, (Edit, Found)>;

/// The kinds that the redaction of a value found, with their counts.
type Found = Vec<(usize, u32)>;

/// The edit of `value` from `memo`, or from `redact` (which adds its findings to the counts
/// it is given) when the value is short or new; `counts` gets the findings either way.
fn memoized<K: std::hash::Hash + Eq>(
    memo: &mut Memo<K>,
    key: K,
    min_bytes: usize,
    value: &str,
    counts: &mut [u32],
    redact: impl FnOnce(&mut [u32]) -> Edit,
) -> Edit {
    if value.len() < min_bytes {
        return redact(counts);
    }
    let (edit, found) = memo.entry(key).or_insert_with(|| {
        let mut scratch = vec![0u32; counts.len()];
        let edit = redact(&mut scratch);
        (edit, drain_found(&mut scratch))
    });
    add_found(counts, found);
    edit.clone()
}

/// The strings `range` of `strings` (indexes into it), with the entries of `edits` replaced
/// (indexes relative to `range.start`, in order; `None` is a null). The strings between two
/// edits are copied as one run of bytes, not one by one.
fn splice_strings<'e>(
    strings: &arrow::array::StringArray,
    range: std::ops::Range<usize>,
    edits: impl Iterator<Item = (usize, Option<&'e str>)>,
) -> arrow::array::StringArray {
    let old_offsets = strings.value_offsets();
    let old_bytes = strings.values().as_slice();
    let len = range.len();
    let mut offsets: Vec<i32> = Vec::with_capacity(len + 1);
    offsets.push(0);
    let mut bytes: Vec<u8> = Vec::with_capacity(
        (old_offsets[range.end] - old_offsets[range.start]) as usize + len.min(1 << 16),
    );
    let mut valid = arrow::array::BooleanBufferBuilder::new(len);
    let mut any_null = false;
    // Appends the unchanged strings `from..to` (relative to `range.start`).
    let copy_run = |from: usize,
                    to: usize,
                    offsets: &mut Vec<i32>,
                    bytes: &mut Vec<u8>,
                    valid: &mut arrow::array::BooleanBufferBuilder|
     -> bool {
        if from == to {
            return false;
        }
        let (start, end) = (range.start + from, range.start + to);
        let base = bytes.len() as i32 - old_offsets[start];
        bytes.extend_from_slice(&old_bytes[old_offsets[start] as usize..old_offsets[end] as usize]);
        offsets.extend(old_offsets[start + 1..=end].iter().map(|o| o + base));
        match strings.nulls() {
            Some(nulls) => {
                let nulls = nulls.slice(start, end - start);
                valid.append_buffer(nulls.inner());
                nulls.null_count() > 0
            }
            None => {
                valid.append_n(end - start, true);
                false
            }
        }
    };
    let mut copied = 0;
    for (at, edit) in edits {
        any_null |= copy_run(copied, at, &mut offsets, &mut bytes, &mut valid);
        match edit {
            Some(text) => bytes.extend_from_slice(text.as_bytes()),
            None => any_null = true,
        }
        valid.append(edit.is_some());
        offsets.push(bytes.len() as i32);
        copied = at + 1;
    }
    any_null |= copy_run(copied, len, &mut offsets, &mut bytes, &mut valid);
    let nulls = any_null.then(|| arrow::buffer::NullBuffer::new(valid.finish()));
    let offsets = arrow::buffer::OffsetBuffer::new(offsets.into());
    // SAFETY: the offsets grow from 0 to the bytes' length, and each string between two of
    // them is a whole string of a valid array or a `&str`, so valid UTF-8; validating the
    // bytes again would cost as much as copying them.
    unsafe { arrow::array::StringArray::new_unchecked(offsets, bytes.into(), nulls) }
}

/// `text` with each range replaced (ranges in order, not overlapping).
fn splice(text: &str, edits: &[(std::ops::Range<usize>, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (range, replacement) in edits {
        out.push_str(&text[copied..range.start]);
        out.push_str(replacement);
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The non-zero counts of `counts` as findings, each slot reset to zero.
fn drain_found(counts: &mut [u32]) -> Found {
    counts
        .iter_mut()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| (kind, std::mem::take(n)))
        .collect()
}

/// Adds findings to a row's counts.
fn add_found(counts: &mut [u32], found: &[(usize, u32)]) {
    for &(kind, n) in found {
        counts[kind] += n;
    }
}

/// Records the edit of a string column's row (a drop is a null where the column allows it).
fn push_string_edit(
    edits: &mut Vec<(usize, Option<String>)>,
    row: usize,
    edit: Edit,
    nullable: bool,
) {
    match edit {
        Edit::Keep => {}
        Edit::Replace(s) => edits.push((row, Some(s))),
        Edit::Drop if nullable => edits.push((row, None)),
        Edit::Drop => edits.push((row, Some("<REDACTED>".to_string()))),
    }
}

/// The search caches of one thread at a time: the combined automaton's, and each detector's
/// with its captures (for the confirmations of the combined automaton's matches).
struct SearchCaches {
    combined: MetaCache,
    markers: Option<MetaCache>,
    detectors: Vec<(MetaCache, regex_automata::util::captures::Captures)>,
}

/// One scan of one string: its haystack (escapes blanked), the original, and what was found.
struct Scan<'s, 'c> {
    combined: &'s MetaRegex,
    cache: &'c mut SearchCaches,
    hay: &'s str,
    text: &'s str,
    counts: &'c mut [u32],
    force: Option<Action>,
    /// Give up at the first key-rule literal (see [`Redactor::scan_until_marker`]).
    stop_at_marker: bool,
    stopped_at_marker: bool,
    /// The kinds counted so far, to take back when the scan gives up.
    found: Vec<usize>,
    /// Ranges of `text` to replace, in order, not overlapping.
    edits: Vec<(std::ops::Range<usize>, String)>,
}

/// What the redactor decided about attribute and JSON keys in a batch, by key.
type KeyCache = hashbrown::HashMap<String, KeyInfo, FxBuildHasher>;

/// What the redactor decided about one attribute or JSON key, cached per batch: keys repeat
/// on every span.
struct KeyInfo {
    rule: Option<usize>,
    /// The key as a map stores it when a detector found something in it (`<REDACTED>` when
    /// the detector's action is drop).
    redacted_key: Option<String>,
    /// A detector in the key drops it: inside JSON the entry goes.
    key_dropped: bool,
    /// Kinds found in the key itself, once per finding.
    key_kinds: Vec<usize>,
}

/// The byte ranges of the top-level elements of a JSON array (`[a, {"b": [c]}]`: `a` and
/// ` {"b": [c]}`, with the whitespace around them), found by following strings, escapes and
/// nesting; `None` when `text` is not one array with nothing after it. The elements are not
/// validated: each is redacted as a value of its own, JSON or not.
///
/// From a string's opening quote the scan jumps to its closing one ([`closing_quote`]).
fn json_array_elements(text: &str) -> Option<Vec<std::ops::Range<usize>>> {
    let bytes = text.as_bytes();
    let open = text.len() - text.trim_start().len();
    if bytes.get(open) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    let mut item_start = open + 1;
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = closing_quote(bytes, i + 1)?,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    items.push(item_start..i);
                    return text[i + 1..].trim().is_empty().then_some(items);
                }
            }
            b',' if depth == 1 => {
                items.push(item_start..i);
                item_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Applies a detector's edit to a JSON scalar; whether it changed.
fn apply_to_json(json: &mut serde_json::Value, edit: Edit) -> bool {
    match edit {
        Edit::Keep => false,
        Edit::Replace(r) => {
            *json = serde_json::Value::String(r);
            true
        }
        Edit::Drop => {
            *json = serde_json::Value::Null;
            true
        }
    }
}

/// Whether the string of a JSON text that holds byte `at` is an object's key: the quote that
/// closes it (the next one not escaped by a backslash) is followed by a colon. A key rule's
/// literal is always inside a string in valid JSON (outside strings there are only numbers,
/// punctuation, `true`, `false` and `null`). Where no closing quote follows (not JSON, or cut
/// short), it answers yes, so that the value is parsed and the parser decides, as it would
/// without this test.
fn in_json_key(text: &[u8], at: usize) -> bool {
    // `at` ends a marker, which holds no backslash: it is not inside an escape.
    closing_quote(text, at).is_none_or(|quote| {
        text[quote + 1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b':')
    })
}

/// The offset of the quote that closes the JSON string that `from` is inside of (not in the
/// middle of an escape): the first one that no backslash escapes; `None` when there is none.
/// It jumps from one quote or backslash to the next (`memchr2`, many bytes at a time): nearly
/// all of a conversation's bytes are inside strings, which hold no structure.
fn closing_quote(text: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at <= text.len() {
        let found = at + memchr::memchr2(b'"', b'\\', &text[at..])?;
        if text[found] == b'"' {
            return Some(found);
        }
        // The escaped character, whatever it is, is skipped.
        at = found + 2;
    }
    None
}

fn memchr_backslash(text: &str) -> bool {
    text.as_bytes().contains(&b'\\')
}

/// `text` with the letter of each JSON escape (`\n`, `\t`, `\r`, `\b`, `\f`, `\/`) and the
/// hex digits of `\uXXXX` replaced by spaces: same length, same char boundaries. And whether
/// a `\u` escape spells a character that the rules may look for: with `ascii_only`, only a
/// printable ASCII one (`\u0040` for `@`); escapes of other characters (what `ensure_ascii`
/// encoders write for `é`) cannot hide what the built-in detectors and ASCII key literals
/// look for.
fn blank_escapes(text: &str, ascii_only: bool) -> (String, bool) {
    let mut bytes = text.as_bytes().to_vec();
    let mut hiding = false;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'n' | b't' | b'r' | b'b' | b'f' | b'/' => bytes[i + 1] = b' ',
            b'u' if i + 6 <= bytes.len()
                && bytes[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
            {
                let hex = std::str::from_utf8(&bytes[i + 2..i + 6]).expect("hex digits");
                let code = u16::from_str_radix(hex, 16).expect("hex digits");
                hiding |= !ascii_only || (0x20..0x7f).contains(&code);
                bytes[i + 1..i + 6].fill(b' ');
                i += 4;
            }
            _ => {}
        }
        i += 2;
    }
    // Only ASCII bytes were replaced by ASCII bytes.
    (String::from_utf8(bytes).expect("still UTF-8"), hiding)
}

fn next_char(text: &str, at: usize) -> usize {
    ceil_char(text, at + 1)
}

fn ceil_char(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// The longest run of literal characters in a glob, lower case: `*api_key*` -> `api_key`;
/// every key the glob matches contains it. Empty for a glob with alternatives (`{a,b}`: no
/// literal is shared by both), a character class (`[abc]` is one character, not a literal)
/// or an escape: the caller then parses every JSON value for that rule.
fn longest_literal(glob: &str) -> String {
    if glob.contains(['[', ']', '{', '}', '\\']) {
        return String::new();
    }
    glob.split(['*', '?'])
        .max_by_key(|s| s.len())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
