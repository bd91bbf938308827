//! The built-in detectors: what each finds, and the checks that keep them from firing on the
//! look-alikes that agent traffic is full of (ids, timestamps, token counts, version numbers).
//!
//! A pattern finds candidates; a validator, where a checksum or a structural rule exists,
//! confirms them (Luhn for payment cards, mod-97 for IBANs, the area/group/serial rules for
//! SSNs, a parse for IP addresses, digit counts for phone numbers, entropy for secrets that
//! only a nearby word gives away). Patterns use ASCII classes only: `\d` in Unicode mode would
//! match every script's digits and grow the automaton for nothing.

use std::ops::Range;

/// What a validator gets: the whole text (for context) and the candidate's range. It returns
/// the range to redact (possibly narrower), or `None` to reject the candidate.
pub(crate) type Validator = fn(&str, Range<usize>) -> Option<Range<usize>>;

/// A built-in detector.
pub(crate) struct Builtin {
    /// The config name (`[redaction.actions]`) and, upper-cased, the placeholder's kind.
    pub(crate) name: &'static str,
    pub(crate) pattern: &'static str,
    /// The capture group that holds the secret when the pattern also matches its context
    /// (`Bearer <token>`, `password=<value>`); 0 for the whole match.
    pub(crate) group: usize,
    pub(crate) validate: Option<Validator>,
    /// The default action: hash where equal values must still join, mask otherwise.
    pub(crate) default_hash: bool,
}

/// ASCII word boundary.
macro_rules! wb {
    () => {
        r"(?-u:\b)"
    };
}

/// The built-ins in priority order: where two could match at the same place, the earlier wins
/// (an Anthropic key is also shaped like an OpenAI key; a key block contains base64 that looks
/// like anything).
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        pattern: r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?:(?s:.)*?-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\\ \t\r\n]*)",
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "jwt",
        pattern: concat!(
            wb!(),
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
        ),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "anthropic_key",
        pattern: concat!(wb!(), r"sk-ant-[a-z]{2,8}[0-9]{2}-[A-Za-z0-9_-]{20,}"),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "openai_key",
        pattern: concat!(
            wb!(),
            r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"
        ),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "github_token",
        pattern: concat!(
            wb!(),
            r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
        ),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "slack_token",
        pattern: concat!(
            wb!(),
            r"(?:xox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{8,})"
        ),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "aws_access_key",
        pattern: concat!(
            wb!(),
            r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}",
            wb!()
        ),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "google_api_key",
        pattern: concat!(wb!(), r"AIza[0-9A-Za-z_-]{35}"),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "stripe_key",
        pattern: concat!(wb!(), r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
        group: 0,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "bearer_token",
        pattern: r"(?i:bearer)[ \t]+([A-Za-z0-9\-._~+/]{8,}=*)",
        group: 1,
        validate: None,
        default_hash: false,
    },
    Builtin {
        name: "email",
        pattern: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
        group: 0,
        validate: None,
        default_hash: true,
    },
    Builtin {
        name: "iban",
        pattern: concat!(wb!(), r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}", wb!()),
        group: 0,
        validate: Some(valid_iban),
        default_hash: false,
    },
    Builtin {
        name: "payment_card",
        pattern: concat!(wb!(), r"[2-6](?:[ -]?[0-9]){12,18}", wb!()),
        group: 0,
        validate: Some(valid_card),
        default_hash: false,
    },
    Builtin {
        name: "ssn",
        pattern: concat!(wb!(), r"[0-9]{3}([- ])[0-9]{2}[- ][0-9]{4}", wb!()),
        group: 0,
        validate: Some(valid_ssn),
        default_hash: false,
    },
    Builtin {
        name: "phone",
        pattern: concat!(
            r"\+[1-9][0-9 .()\-]{6,22}[0-9]",
            "|",
            r"(?:\([0-9]{3}\) ?|",
            wb!(),
            r"[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",
            wb!(),
            "|",
            wb!(),
            r"0[0-9]{2,4}[ -][0-9]{3,4}[ -]?[0-9]{3,4}",
            wb!()
        ),
        group: 0,
        validate: Some(valid_phone),
        default_hash: false,
    },
    Builtin {
        name: "ipv6",
        pattern: r"(?i:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|(?i:[0-9a-f]{1,4}:){1,7}:(?i:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?|::(?i:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})",
        group: 0,
        validate: Some(valid_ipv6),
        default_hash: false,
    },
    Builtin {
        name: "ipv4",
        pattern: concat!(
            wb!(),
            r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}",
            wb!()
        ),
        group: 0,
        validate: Some(valid_ipv4),
        default_hash: false,
    },
    // `password=...`, `"api_key": "..."`, `token: ...`: the value after a secret-naming word
    // and an assignment, whatever it looks like. JSON inside JSON escapes its quotes: `\"`.
    Builtin {
        name: "secret",
        pattern: r#"(?i:passw(?:or)?d|passphrase|pwd|secret|token|api[ _-]?key|access[_-]?key|private[_-]?key|client[_-]?secret|credentials?)(?:\\*["'])?[ \t]*[:=][ \t]*(?:\\*["'])?([^ \t\r\n"'\\,;&}<>\])]{4,})"#,
        group: 1,
        validate: None,
        default_hash: false,
    },
    // "my api key is 9fA3kLm2...": a high-entropy word shortly after a secret-naming word.
    Builtin {
        name: "secret",
        pattern: concat!(
            r"(?i:password|passphrase|secret|token|api[ _-]?key|apikey|credential)[^\r\n]{0,24}?",
            wb!(),
            r"([A-Za-z0-9+/_-]{16,}={0,2})"
        ),
        group: 1,
        validate: Some(high_entropy),
        default_hash: false,
    },
];

/// Luhn-valid, with a length and prefix that a card network issues. Where the greedy match
/// took extra trailing digits, shorter prefixes of it are tried.
fn valid_card(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    // The first 19 digits (the most a card number has) and the byte offset just past each.
    let mut digits = [0u8; 19];
    let mut ends = [0usize; 19];
    let mut found = 0;
    for (i, b) in text.as_bytes()[range.clone()].iter().enumerate() {
        if b.is_ascii_digit() && found < digits.len() {
            digits[found] = b - b'0';
            ends[found] = range.start + i + 1;
            found += 1;
        }
    }
    for len in (13..=found).rev() {
        let end = ends[len - 1];
        // Cut only at a separator or at the end, never inside a run of digits.
        if end != range.end && text.as_bytes()[end].is_ascii_digit() {
            continue;
        }
        if card_network_length(&digits[..len]) && luhn(&digits[..len]) {
            return Some(range.start..end);
        }
    }
    None
}

fn card_network_length(d: &[u8]) -> bool {
    let n = d.len();
    let p2 = d[0] as u32 * 10 + d[1] as u32;
    let p4 = p2 * 100 + d[2] as u32 * 10 + d[3] as u32;
    debug_assert!(n >= 13);
    match d[0] {
        4 => matches!(n, 13 | 16 | 19),
        // Mastercard 51-55 and Maestro 50, 56-59: 16 to 19 digits.
        5 => (16..=19).contains(&n),
        2 => (2221..=2720).contains(&p4) && n == 16,
        3 => match p2 {
            34 | 37 => n == 15,
            35 => (16..=19).contains(&n),
            30 | 36 | 38 | 39 => (14..=19).contains(&n),
            _ => false,
        },
        6 => (16..=19).contains(&n),
        _ => false,
    }
}

pub(crate) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = d as u32;
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: moves the country code and check digits to the end, letters become 10..35,
/// and the number must be 1 mod 97. Trailing groups that the greedy match took are dropped
/// until it checks.
fn valid_iban(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = &text[range.clone()];
    let mut end = candidate.len();
    loop {
        let compact: Vec<u8> = candidate[..end].bytes().filter(|b| *b != b' ').collect();
        if compact.len() < 15 {
            return None;
        }
        if compact.len() <= 34 && iban_mod97(&compact) == 1 {
            return Some(range.start..range.start + end);
        }
        // Drop the last group (after the last space), or the last character if unspaced.
        end = match candidate[..end].rfind(' ') {
            Some(space) if space > 4 => space,
            _ => end - 1,
        };
    }
}

fn iban_mod97(compact: &[u8]) -> u32 {
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for &b in rearranged {
        let value = match b {
            b'0'..=b'9' => (b - b'0') as u32,
            b'A'..=b'Z' => (b - b'A') as u32 + 10,
            _ => return 0,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder
}

/// The SSA's rules: area not 000, 666 or 900-999; group not 00; serial not 0000; and one
/// separator style, not `123-45 6789`.
fn valid_ssn(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let s = text[range.clone()].as_bytes();
    if s[3] != s[6] {
        return None;
    }
    let num = |b: &[u8]| b.iter().fold(0u32, |n, d| n * 10 + (d - b'0') as u32);
    let (area, group, serial) = (num(&s[0..3]), num(&s[4..6]), num(&s[7..11]));
    let ok = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    ok.then_some(range)
}

/// 8 to 15 digits (E.164) for the international form, not glued to more digits; the national
/// forms are fixed by their patterns.
fn valid_phone(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = &text[range.clone()];
    // A national number is not a run of digit groups in something longer (an account
    // number, a failed IBAN): no digit group right before or after it.
    let bytes = text.as_bytes();
    let group_before = range.start >= 2
        && matches!(bytes[range.start - 1], b' ' | b'-' | b'.')
        && bytes[range.start - 2].is_ascii_alphanumeric();
    let group_after = matches!(bytes.get(range.end), Some(b' ' | b'-' | b'.'))
        && bytes.get(range.end + 1).is_some_and(u8::is_ascii_digit);
    if candidate.starts_with('+') {
        // The greedy match may have run on into following numbers or punctuation: try each
        // end after a digit, longest first, for 8 to 15 digits (E.164) with balanced
        // parentheses ("+1 (415) 555-0132").
        let mut digits = 0;
        let mut best = None;
        let (mut open, mut close) = (0, 0);
        for (i, b) in candidate.bytes().enumerate() {
            match b {
                b'(' => open += 1,
                b')' => close += 1,
                b'0'..=b'9' => {
                    digits += 1;
                    let end = range.start + i + 1;
                    let glued = bytes.get(end).is_some_and(u8::is_ascii_digit);
                    if (8..=15).contains(&digits) && open == close && open <= 1 && !glued {
                        best = Some(range.start..end);
                    }
                }
                _ => {}
            }
        }
        best
    } else {
        (!group_before && !group_after).then_some(range)
    }
}

/// A real address, not `1.2.3.4.5` (a version) or the middle of a dotted number.
fn valid_ipv4(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let dotted_before = range.start >= 2
        && bytes[range.start - 1] == b'.'
        && bytes[range.start - 2].is_ascii_digit();
    let dotted_after = bytes.get(range.end) == Some(&b'.')
        && bytes.get(range.end + 1).is_some_and(u8::is_ascii_digit);
    if dotted_before || dotted_after {
        return None;
    }
    text[range.clone()]
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|_| range)
}

/// Parses as an IPv6 address, has a digit (so that `abc::def` in a code path does not count),
/// and is not part of a longer hex-and-colon run.
fn valid_ipv6(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let glued = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_hexdigit() || *b == b':');
    if glued(range.start.checked_sub(1).map(|i| &bytes[i])) || glued(bytes.get(range.end)) {
        return None;
    }
    let candidate = &text[range.clone()];
    if !candidate.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    candidate.parse::<std::net::Ipv6Addr>().ok().map(|_| range)
}

/// A value that looks generated rather than written: letters mixed with digits or with both
/// cases (a random key need not hold a digit), and at least 3.5 bits of Shannon entropy per
/// character.
fn high_entropy(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let value = &text[range.clone()].as_bytes();
    let has_digit = value.iter().any(u8::is_ascii_digit);
    let has_upper = value.iter().any(u8::is_ascii_uppercase);
    let has_lower = value.iter().any(u8::is_ascii_lowercase);
    if !((has_upper || has_lower) && (has_digit || (has_upper && has_lower))) {
        return None;
    }
    (shannon_entropy(value) >= 3.5).then_some(range)
}

pub(crate) fn shannon_entropy(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}
