use super::*;
use crate::{Normalizer, ProcessorConfig};
use arrow::array::Array;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn redactor() -> Redactor {
    Redactor::new(&RedactionConfig::default(), &[], b"test key").unwrap()
}

/// A redactor with the `[redaction]` section `toml`.
fn redactor_from(toml: &str) -> Redactor {
    let config: RedactionConfig = toml::from_str(toml).unwrap();
    Redactor::new(&config, &[], b"k").unwrap()
}

fn redact(r: &Redactor, text: &str) -> String {
    let mut counts = vec![0; r.kinds().len()];
    r.redact_str(text, &mut counts).into_owned()
}

// ---------------------------------------------------------------------------------------
// Generators of personal data and secrets, in the many shapes they take in real traffic.
// Each returns (the text as it appears, the part that must never reach the redacted tier).

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn chars(rng: &mut ChaCha8Rng, alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    chars(rng, b"0123456789", n)
}

fn email(rng: &mut ChaCha8Rng) -> (String, String) {
    let first = pick(
        rng,
        &[
            "jane",
            "o.brien",
            "li.wei",
            "maria-jose",
            "x",
            "ADMIN",
            "kim_lee",
        ],
    );
    let tag = if rng.random_bool(0.3) { "+billing" } else { "" };
    let domain = pick(
        rng,
        &[
            "example.com",
            "mail.example.co.uk",
            "corp-1.io",
            "EXAMPLE.ORG",
            "uni.ac.jp",
        ],
    );
    let e = format!("{first}{tag}{}@{domain}", rng.random_range(0..1000));
    (e.clone(), e)
}

fn phone(rng: &mut ChaCha8Rng) -> (String, String) {
    let p = match rng.random_range(0..9) {
        0 => format!(
            "+1 ({}) {}-{}",
            200 + rng.random_range(0..800),
            200 + rng.random_range(0..800),
            digits(rng, 4)
        ),
        1 => format!("+44 20 {} {}", digits(rng, 4), digits(rng, 4)),
        2 => format!("+49-30-{}", digits(rng, 7)),
        3 => format!(
            "+33 1 {} {} {} {}",
            digits(rng, 2),
            digits(rng, 2),
            digits(rng, 2),
            digits(rng, 2)
        ),
        4 => format!("+81 3-{}-{}", digits(rng, 4), digits(rng, 4)),
        5 => format!("+86{}", digits(rng, 11)),
        6 => format!(
            "({}) {}-{}",
            200 + rng.random_range(0..800),
            200 + rng.random_range(0..800),
            digits(rng, 4)
        ),
        7 => format!(
            "{}.{}.{}",
            200 + rng.random_range(0..800),
            200 + rng.random_range(0..800),
            digits(rng, 4)
        ),
        _ => format!("+91 {} {}", digits(rng, 5), digits(rng, 5)),
    };
    (p.clone(), p)
}

fn luhn_complete(prefix: &str, len: usize, rng: &mut ChaCha8Rng) -> String {
    let mut number = format!("{prefix}{}", digits(rng, len - prefix.len() - 1));
    for check in 0..10 {
        let candidate = format!("{number}{check}");
        let d: Vec<u8> = candidate.bytes().map(|b| b - b'0').collect();
        if detectors::luhn(&d) {
            number = candidate;
            break;
        }
    }
    number
}

fn card(rng: &mut ChaCha8Rng) -> (String, String) {
    let (prefix, len) = *pick(
        rng,
        &[
            ("4", 16),
            ("4", 13),
            ("4", 19),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("2720", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("65", 16),
            ("3530", 16),
            ("36", 14),
        ],
    );
    let number = luhn_complete(prefix, len, rng);
    let shown = match rng.random_range(0..3) {
        0 => number.clone(),
        sep => {
            let sep = if sep == 1 { " " } else { "-" };
            number
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(sep)
        }
    };
    (shown.clone(), shown)
}

fn iban(rng: &mut ChaCha8Rng) -> (String, String) {
    let (country, bban) = match rng.random_range(0..4) {
        0 => ("DE", digits(rng, 18)),
        1 => (
            "GB",
            format!(
                "{}{}",
                chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                digits(rng, 14)
            ),
        ),
        2 => ("FR", digits(rng, 23)),
        _ => (
            "NL",
            format!(
                "{}{}",
                chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                digits(rng, 10)
            ),
        ),
    };
    let rearranged = format!("{bban}{country}00");
    let mut remainder = 0u32;
    for b in rearranged.bytes() {
        let v = if b.is_ascii_digit() {
            (b - b'0') as u32
        } else {
            (b - b'A') as u32 + 10
        };
        remainder = if v >= 10 {
            (remainder * 100 + v) % 97
        } else {
            (remainder * 10 + v) % 97
        };
    }
    let compact = format!("{country}{:02}{bban}", 98 - remainder);
    let shown = if rng.random_bool(0.5) {
        compact
    } else {
        compact
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    };
    (shown.clone(), shown)
}

fn ssn(rng: &mut ChaCha8Rng) -> (String, String) {
    let area = loop {
        let a = rng.random_range(1..900);
        if a != 666 {
            break a;
        }
    };
    let sep = if rng.random_bool(0.8) { "-" } else { " " };
    let s = format!(
        "{area:03}{sep}{:02}{sep}{:04}",
        rng.random_range(1..100),
        rng.random_range(1..10000)
    );
    (s.clone(), s)
}

fn ip(rng: &mut ChaCha8Rng) -> (String, String) {
    let s = match rng.random_range(0..3) {
        0 => format!(
            "{}.{}.{}.{}",
            rng.random_range(1..224),
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        1 => {
            let groups: Vec<String> = (0..8)
                .map(|_| format!("{:x}", rng.random_range(0..0x10000)))
                .collect();
            groups.join(":")
        }
        _ => format!(
            "2001:db8::{:x}:{}",
            rng.random_range(1..0xffff),
            rng.random_range(1..99)
        ),
    };
    (s.clone(), s)
}

fn b64url(rng: &mut ChaCha8Rng, n: usize) -> String {
    chars(
        rng,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        n,
    )
}

fn secret(rng: &mut ChaCha8Rng) -> (String, String) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match rng.random_range(0..14) {
        0 => {
            let header = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let payload = b64.encode(format!(
                r#"{{"sub":"{}","exp":{}}}"#,
                digits(rng, 6),
                digits(rng, 10)
            ));
            let t = format!("{header}.{payload}.{}", b64url(rng, 43));
            (t.clone(), t)
        }
        1 => {
            let token = b64url(rng, 40);
            (format!("Authorization: Bearer {token}"), token)
        }
        2 => {
            let kind = pick(rng, &["RSA ", "EC ", "OPENSSH ", ""]);
            let body: Vec<String> = (0..4)
                .map(|_| {
                    chars(
                        rng,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                        64,
                    )
                })
                .collect();
            let nl = if rng.random_bool(0.5) { "\n" } else { "\\n" };
            let block = format!(
                "-----BEGIN {kind}PRIVATE KEY-----{nl}{}{nl}-----END {kind}PRIVATE KEY-----",
                body.join(nl)
            );
            (block, body[1].clone())
        }
        3 => {
            let k = format!(
                "{}{}",
                pick(rng, &["AKIA", "ASIA"]),
                chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
            );
            (k.clone(), k)
        }
        4 => {
            let k = format!("sk-{}", chars(rng, ALNUM, 48));
            (k.clone(), k)
        }
        5 => {
            let k = format!("sk-proj-{}", b64url(rng, 64));
            (k.clone(), k)
        }
        6 => {
            let k = format!("sk-ant-api03-{}", b64url(rng, 93));
            (k.clone(), k)
        }
        7 => {
            let k = format!(
                "{}_{}",
                pick(rng, &["ghp", "gho", "ghs", "ghu"]),
                chars(rng, ALNUM, 36)
            );
            (k.clone(), k)
        }
        8 => {
            let k = format!("github_pat_{}", chars(rng, ALNUM, 82));
            (k.clone(), k)
        }
        9 => {
            let k = format!(
                "xoxb-{}-{}-{}",
                digits(rng, 12),
                digits(rng, 13),
                chars(rng, ALNUM, 24)
            );
            (k.clone(), k)
        }
        10 => {
            let v = format!(
                "{}{}",
                pick(rng, &["hunter", "Winter", "s3cr3t", "correct-horse"]),
                digits(rng, 3)
            );
            let form = pick(
                rng,
                &[
                    "password={v}",
                    "\"password\": \"{v}\"",
                    "db_passwd: {v}",
                    "{\\\"api_key\\\":\\\"{v}\\\"}",
                    "client_secret = '{v}'",
                    "PASSWORD:{v}",
                ],
            );
            (form.replace("{v}", &v), v)
        }
        11 => {
            let v = chars(rng, ALNUM, 32);
            let form = pick(
                rng,
                &[
                    "my api key is {v}",
                    "the secret for staging: {v}",
                    "use token {v} for the call",
                ],
            );
            (form.replace("{v}", &v), v)
        }
        12 => {
            let k = format!("AIza{}", b64url(rng, 35));
            (k.clone(), k)
        }
        _ => {
            let k = format!("sk_live_{}", chars(rng, ALNUM, 24));
            (k.clone(), k)
        }
    }
}

type Gen = fn(&mut ChaCha8Rng) -> (String, String);
const GENERATORS: &[Gen] = &[email, phone, card, iban, ssn, ip, secret];

const WORDS: &[&str] = &[
    "please",
    "refund",
    "the",
    "order",
    "for",
    "customer",
    "at",
    "call",
    "me",
    "on",
    "reached",
    "via",
    "and",
    "2024",
    "42",
    "tokens",
    "model",
    "gpt-4o-mini",
    "v1.2.3",
    "—",
    "é",
    "naïve",
    "(see",
    "ticket)",
    "#123",
    "ok.",
    "total:",
    "$19.99",
    "2024-07-18T10:32:11Z",
];

fn embed(rng: &mut ChaCha8Rng, sensitive: &str) -> String {
    let mut words: Vec<String> = (0..rng.random_range(0..6))
        .map(|_| pick(rng, WORDS).to_string())
        .collect();
    let left = pick(rng, &[" ", ": ", " (", " \"", "\n", "<", "="]);
    let right = pick(rng, &[" ", ").", "\" ", "\n", ">", ", ", ";"]);
    let at = rng.random_range(0..=words.len());
    words.insert(at, format!("{left}{sensitive}{right}"));
    words.join(" ")
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// `{"result": text}` in JSON that spells every ASCII letter and digit of `text`, and its
/// `@` and `.`, as a `\u` escape.
fn json_escaping_letters_and_digits(text: &str) -> String {
    let mut out = String::from(r#"{"result": ""#);
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '@' || c == '.' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            let quoted = serde_json::to_string(&c.to_string()).unwrap();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
    }
    out.push_str(r#""}"#);
    out
}

fn sv(text: &str) -> Value {
    Value::StringValue(text.to_string())
}

/// A request whose every string field carries `texts` (cycled): span name, status message,
/// attributes (plain, array, key-value list, JSON inside a string, content attributes), event
/// names and attributes, link attributes, resource and scope attributes.
/// Three spans (consecutive rows, as a run's spans arrive) that carry `texts` in every field
/// that holds a string; the first span's attributes are the ones tests add to.
fn request_carrying(texts: &[String]) -> ExportTraceServiceRequest {
    let t = |i: usize| texts[i % texts.len()].clone();
    // Long enough to be redacted element by element, with an element that repeats.
    let history = serde_json::json!([
        {"role": "system", "parts": [{"type": "text", "content": "You are the refunds agent. Look the order up, check the policy, and refund only what the policy allows; escalate to a human when the amount is above the limit or the customer disputes the decision."}]},
        {"role": "user", "parts": [{"type": "text", "content": t(7)}]},
        t(7),
        {"role": "user", "parts": [{"type": "text", "content": t(7)}]},
    ]);
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![1; 8],
        name: t(0),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        status: Some(Status {
            message: t(1),
            code: 2,
        }),
        attributes: vec![
            kv("note", sv(&t(2))),
            kv(
                "tags",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(sv(&t(3))),
                        },
                        AnyValue {
                            value: Some(sv(&t(4))),
                        },
                    ],
                }),
            ),
            kv(
                "request",
                Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("body", sv(&t(5))),
                        kv(
                            "nested",
                            Value::KvlistValue(KeyValueList {
                                values: vec![kv("deep", sv(&t(6)))],
                            }),
                        ),
                    ],
                }),
            ),
            kv("gen_ai.input.messages", sv(&history.to_string())),
            kv(
                "gen_ai.tool.call.arguments",
                sv(&serde_json::json!({"query": t(8), "limit": 5}).to_string()),
            ),
            // As an encoder that escapes every letter and digit writes it (`\u0061`).
            kv(
                "gen_ai.tool.call.result",
                sv(&json_escaping_letters_and_digits(&t(20))),
            ),
            kv("gen_ai.conversation.id", sv(&t(9))),
            kv("runledger.action.ref", sv(&t(10))),
            kv("gen_ai.agent.name", sv(&t(11))),
        ],
        events: vec![Event {
            name: t(12),
            time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![kv("exception.message", sv(&t(13)))],
            ..Default::default()
        }],
        links: vec![Link {
            trace_id: vec![8; 16],
            span_id: vec![2; 8],
            attributes: vec![kv("reason", sv(&t(14)))],
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", sv(&t(15))), kv("host.owner", sv(&t(16)))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: t(17),
                    version: t(18),
                    attributes: vec![kv("scope.note", sv(&t(19)))],
                    ..Default::default()
                }),
                spans: (1..=3u8)
                    .map(|id| Span {
                        span_id: vec![id; 8],
                        ..span.clone()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Every string a batch holds, column by column, map keys and values included.
fn all_text(batch: &RecordBatch) -> String {
    let mut out = String::new();
    for column in batch.columns() {
        if matches!(
            column.data_type(),
            arrow::datatypes::DataType::Timestamp(..)
        ) {
            continue;
        }
        let formatted = arrow::util::display::ArrayFormatter::try_new(
            column.as_ref(),
            &arrow::util::display::FormatOptions::default(),
        )
        .unwrap();
        for row in 0..column.len() {
            out.push_str(&formatted.value(row).to_string());
            out.push('\n');
        }
    }
    // The formatter escapes nothing, but JSON columns hold escaped text: unescape it too,
    // `\u` escapes of ASCII characters included.
    let unescaped = out
        .replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("\\\\", "\\");
    let unicode = regex::Regex::new(r"\\u(00[2-7][0-9a-fA-F])").unwrap();
    let decoded = unicode.replace_all(&unescaped, |c: &regex::Captures<'_>| {
        let code = u32::from_str_radix(&c[1], 16).unwrap();
        char::from_u32(code).unwrap().to_string()
    });
    out.push_str(&decoded);
    out
}

fn normalized(request: &ExportTraceServiceRequest) -> RecordBatch {
    Normalizer::new(&ProcessorConfig::default())
        .unwrap()
        .normalize(request, std::time::SystemTime::UNIX_EPOCH)
        .batch
        .expect("one span")
}

/// The text of a redacted batch of one span that carries `attributes` (string values) besides
/// the usual ones.
fn redacted_with_attributes(r: &Redactor, attributes: &[(&str, &str)]) -> String {
    let mut request = request_carrying(&["plain".to_string()]);
    let attrs = &mut request.resource_spans[0].scope_spans[0].spans[0].attributes;
    for (key, value) in attributes {
        attrs.push(kv(key, sv(value)));
    }
    let (batch, _) = r.redact_batch(&normalized(&request)).unwrap();
    all_text(&batch)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Personal data and secrets of every kind, in many formats, embedded in random text and
    /// placed in every field: none of them survives in the redacted batch, all of them are in
    /// the raw one.
    #[test]
    fn nothing_sensitive_reaches_the_redacted_tier(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let samples: Vec<(String, String)> = (0..20)
            .map(|_| pick(&mut rng, GENERATORS)(&mut rng))
            .collect();
        let texts: Vec<String> = samples.iter().map(|(s, _)| embed(&mut rng, s)).collect();
        let raw = normalized(&request_carrying(&texts));
        let (redacted, totals) = redactor().redact_batch(&raw).unwrap();
        let raw_text = all_text(&raw);
        let redacted_text = all_text(&redacted);
        for (shown, core) in &samples {
            let escaped = serde_json::to_string(shown).unwrap();
            let escaped = &escaped[1..escaped.len() - 1];
            prop_assert!(raw_text.contains(shown.as_str()) || raw_text.contains(escaped),
                "raw tier lost {shown:?}");
            if redacted_text.contains(core.as_str()) {
                let line = redacted_text.lines().find(|l| l.contains(core.as_str())).unwrap_or("");
                prop_assert!(false, "redacted tier holds {core:?} (from {shown:?}) in {line:?}");
            }
        }
        prop_assert!(!totals.by_kind.is_empty());
        // Rows that repeat the one before them get its redaction: the same summary.
        let summaries = redacted.column_by_name(col::REDACTIONS).unwrap().as_map();
        prop_assert!(summaries.value(0).num_columns() == 2 && summaries.value_length(0) > 0);
        prop_assert_eq!(summaries.value(1).clone(), summaries.value(0).clone());
        prop_assert_eq!(summaries.value(2).clone(), summaries.value(0).clone());
    }
}

#[test]
fn each_kind_is_masked_with_its_name() {
    let r = redactor();
    let cases = [
        (
            "write to jane.doe@example.com today",
            "write to <EMAIL:",
            "email hashed",
        ),
        (
            "card 4111 1111 1111 1111 please",
            "card <PAYMENT_CARD> please",
            "",
        ),
        ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN <IBAN>.", ""),
        ("ssn 123-45-6789", "ssn <SSN>", ""),
        ("call +44 20 7946 0958 now", "call <PHONE> now", ""),
        ("from 192.168.1.20:8080", "from <IPV4>:8080", ""),
        ("from fe80::1ff:fe23:4567:890a", "from <IPV6>", ""),
        (
            "Authorization: Bearer abcdef0123456789",
            "Authorization: Bearer <BEARER_TOKEN>",
            "",
        ),
        ("key AKIAIOSFODNN7EXAMPLE", "key <AWS_ACCESS_KEY>", ""),
        ("password=hunter22", "password=<SECRET>", ""),
    ];
    for (input, expected_prefix, _) in cases {
        let out = redact(&r, input);
        assert!(out.starts_with(expected_prefix), "{input:?} -> {out:?}");
    }
}

#[test]
fn invalid_checksums_and_reserved_numbers_are_not_redacted() {
    let r = redactor();
    for text in [
        "card 4111 1111 1111 1112",         // Luhn fails
        "IBAN DE89 3704 0044 0532 0130 01", // mod-97 fails
        "ssn 000-12-3456",
        "ssn 666-12-3456",
        "ssn 900-12-3456",
        "ssn 123-00-4567",
        "ssn 123-45-0000",
    ] {
        assert_eq!(redact(&r, text), text);
    }
}

/// What agent traffic is full of and must stay readable and joinable.
#[test]
fn look_alikes_stay_intact() {
    let r = redactor();
    for text in [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "550e8400-e29b-41d4-a716-446655440000",
        "run 9b2c1f0e-7a3d-4c5b-8e6f-1a2b3c4d5e6f finished",
        "2024-07-18T10:32:11.123456Z",
        "2024-07-18 10:32:11",
        "1732406400",
        "1732406400123",
        "1732406400123456789",
        "input_tokens=1532 output_tokens=211 cache_read_tokens=1024",
        "max_tokens: 4096",
        "gpt-4o-mini-2024-07-18",
        "claude-3-5-sonnet-20241022",
        "claude-sonnet-4-5@20250929",
        "meta-llama/Llama-3.1-405B-Instruct-Turbo",
        "gemini-1.5-pro-002",
        "mistral-large-2411",
        "version 1.2.3 and 10.0.22631",
        "took 1234 ms, 12.5 s, cost $0.0042",
        "The customer asked why the refund for order 88231 took three days; I explained the policy.",
        "Tokenization uses a secret sauce of heuristics; the password policy requires 12 characters.",
        "std::collections::HashMap",
        "10:32:11",
        "ticket INC-20240718-0042",
        "refund re_3NkQ2bLs8d7f6g5h",
    ] {
        assert_eq!(redact(&r, text), text, "a false positive");
    }
}

#[test]
fn keyed_hashes_are_stable_and_keyed() {
    let a = redactor();
    let b = redactor();
    let other = Redactor::new(&RedactionConfig::default(), &[], b"another key").unwrap();
    let one = redact(&a, "mail jane@example.com");
    assert_eq!(
        one,
        redact(&b, "mail jane@example.com"),
        "same key, same token"
    );
    assert_ne!(
        one,
        redact(&a, "mail john@example.com"),
        "other value, other token"
    );
    assert_ne!(
        one,
        redact(&other, "mail jane@example.com"),
        "other key, other token"
    );
    // Never an unsalted digest of the value.
    use sha2::Digest as _;
    let plain = hex::encode(sha2::Sha256::digest(b"jane@example.com"));
    assert!(!one.contains(&plain[..HASH_HEX_CHARS]));
    // The column and the attribute of a customer id carry the same token, which erase finds.
    let request = request_carrying(&["x".to_string()]);
    let mut request = request;
    request.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(kv("user.id", sv("cust-42")));
    let (batch, _) = a.redact_batch(&normalized(&request)).unwrap();
    let customer = batch
        .column_by_name(col::CUSTOMER_ID)
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_string();
    assert_eq!(customer, a.hash_token("customer_id", "cust-42"));
    assert!(all_text(&batch).contains(&format!("user.id: {customer}")));
}

#[test]
fn with_every_detector_allowed_only_key_rules_redact() {
    let mut config = RedactionConfig::default();
    for builtin in BUILTINS {
        config
            .actions
            .insert(builtin.name.to_string(), Action::Allow);
    }
    let r = Redactor::new(&config, &[], b"k").unwrap();
    let text = "mail a@b.co from 10.0.0.1, card 4111 1111 1111 1111";
    assert_eq!(redact(&r, text), text);

    let mut request = request_carrying(&[text.to_string()]);
    let attrs = &mut request.resource_spans[0].scope_spans[0].spans[0].attributes;
    attrs.push(kv("db.password", sv("hunter2")));
    let (batch, _) = r.redact_batch(&normalized(&request)).unwrap();
    let all = all_text(&batch);
    assert!(all.contains(text), "{all}");
    assert!(
        !all.contains("hunter2"),
        "the key rule still applies: {all}"
    );
}

#[test]
fn actions_key_rules_and_custom_rules_from_config() {
    let r = redactor_from(
        r#"
        actions = { email = "mask", ipv4 = "allow", phone = "drop" }
        [[rules]]
        name = "employee_id"
        pattern = "EMP-[0-9]{6}"
        [[rules]]
        name = "contract"
        pattern = "CT/[0-9]{4}/[A-Z]{2}"
        action = "hash"
        [[keys]]
        pattern = "internal.*"
        action = "drop"
        [[keys]]
        pattern = "debug.ip"
        action = "allow"
        [[keys]]
        pattern = "x-tenant"
        action = "hash"
        kind = "tenant"
        "#,
    );
    assert_eq!(redact(&r, "to a@b.co"), "to <EMAIL>");
    assert_eq!(redact(&r, "host 10.0.0.1"), "host 10.0.0.1");
    assert_eq!(redact(&r, "by EMP-123456"), "by <EMPLOYEE_ID>");
    assert!(redact(&r, "see CT/2024/AB").starts_with("see <CONTRACT:"));

    let text = redacted_with_attributes(
        &r,
        &[
            ("internal.note", "anything"),
            ("debug.ip", "call +44 20 7946 0958"),
            ("phone.note", "call +44 20 7946 0958"),
            ("x-tenant", "acme"),
            ("db.password", "plain words"),
        ],
    );
    assert!(!text.contains("internal.note"), "dropped by key rule");
    assert!(
        text.contains("debug.ip: call +44 20 7946 0958"),
        "allowed by key rule"
    );
    assert!(
        !text.contains("phone.note"),
        "drop action of a detector removes the attribute"
    );
    assert!(text.contains("x-tenant: <TENANT:"));
    assert!(text.contains("db.password: <SECRET>"), "default key rule");
}

#[test]
fn key_rules_apply_inside_json_values() {
    let text = redacted_with_attributes(
        &redactor(),
        &[(
            "gen_ai.tool.call.arguments",
            r#"{"user":"bob","credentials":{"Password":"correct horse battery staple"},"n":1}"#,
        )],
    );
    assert!(!text.contains("correct horse"));
    assert!(text.contains("<SECRET>"));
}

/// A key rule's literal that a detector also matches where it starts (`password": "` is the
/// start of the `secret` detector's `password: value`) still has the JSON value parsed, so
/// that the key's rule masks the whole value, not only the detector's first word. So does a
/// literal inside what a detector matched (a key that holds an email).
#[test]
fn key_rule_literals_that_detectors_also_match_still_apply_the_key_rules() {
    let text = redacted_with_attributes(
        &redactor(),
        &[
            (
                "gen_ai.tool.call.arguments",
                r#"{"password": "correct horse battery staple", "n": 1}"#,
            ),
            (
                "gen_ai.tool.call.result",
                r#"{"ops.password@example.com": "tabby kitten marmalade", "n": 2}"#,
            ),
        ],
    );
    for gone in [
        "horse",
        "battery",
        "staple",
        "kitten",
        "marmalade",
        "ops.password@",
    ] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
}

/// A key rule's literal that is not in a key (inside a string value, escaped quotes and all)
/// leaves the JSON value to the text scan: its layout is kept, where parsing it would have
/// written it anew. A literal in a key after such a mention still has the key's rule applied,
/// and so does one in a key of a value whose quotes are cut short.
#[test]
fn key_rule_literals_outside_keys_leave_json_values_as_text() {
    let text = redacted_with_attributes(
        &redactor(),
        &[
            (
                "a.mention",
                r#"{"content": "rotate the api_key, the Password and the secret",  "to":  "ann@example.com"}"#,
            ),
            (
                "a.escaped",
                r#"{"note": "say \"api_key\": now \\", "api_key" : "plain words here"}"#,
            ),
            ("a.cut", r#"{"note": "x", "api_key"#),
        ],
    );
    assert!(
        text.contains(
            r#"a.mention: {"content": "rotate the api_key, the Password and the secret",  "to":  "<EMAIL:"#
        ),
        "{text}"
    );
    assert!(!text.contains("ann@example.com"), "{text}");
    assert!(!text.contains("plain words"), "{text}");
    assert!(text.contains(r#""api_key":"<SECRET>""#), "{text}");
    assert!(text.contains(r#"a.cut: {"note": "x", "api_key"#), "{text}");
}

/// JSON may spell any character as a `\u` escape, a key's letters included: such a value is
/// read by the parser, which decodes them, since the text scan sees neither the key rule's
/// literal nor what the detectors look for through the escapes.
#[test]
fn unicode_escapes_hide_neither_keys_nor_values() {
    let text = redacted_with_attributes(
        &redactor(),
        &[
            (
                "a.key",
                r#"{"note": "hi", "pass\u0077ord": "tabby kitten marmalade"}"#,
            ),
            ("a.value", r#"{"to": "\u0061nn.lee\u0040example.com"}"#),
            ("a.text", r#"{"to": "caf\u00e9 for ann@example.com"}"#),
        ],
    );
    for gone in ["kitten", "nn.lee", "ann@example.com", r"\u0040"] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
    assert!(text.contains(r#""password":"<SECRET>""#), "{text}");
    // Escapes of letters outside ASCII alone do not have the value parsed: its layout stays.
    assert!(
        text.contains(r#"a.text: {"to": "caf\u00e9 for <EMAIL:"#),
        "{text}"
    );
}

/// With a custom pattern or a key rule whose literal is not ASCII, an escape of any
/// character has the JSON value parsed: `\u00df` is the `ß` that a rule may look for.
#[test]
fn unicode_escapes_hide_nothing_from_rules_beyond_ascii() {
    let r = redactor_from(
        r#"
        [[rules]]
        name = "street"
        pattern = "Straße [0-9]+"
        action = "mask"
        [[keys]]
        pattern = "*contraseña*"
        action = "mask"
        "#,
    );
    let text = redacted_with_attributes(
        &r,
        &[
            ("a.street", r#"{"to": "Stra\u00dfe 12, Berlin"}"#),
            ("a.key", r#"{"contrase\u00f1a": "tabby kitten marmalade"}"#),
        ],
    );
    assert!(
        text.contains(r#"a.street: {"to":"<STREET>, Berlin"}"#),
        "{text}"
    );
    assert!(!text.contains("kitten"), "{text}");
}

#[test]
fn json_keys_are_told_from_json_values() {
    let key = |text: &str, literal: &str| {
        let end = text.find(literal).unwrap() + literal.len();
        super::in_json_key(text.as_bytes(), end)
    };
    assert!(key(r#"{"api_key": 1}"#, "api_key"));
    assert!(key("{\"my_api_key_id\"\n\t :\"x\"}", "api_key"));
    assert!(!key(r#"{"a": "the api_key"}"#, "api_key"));
    assert!(!key(r#"["api_key", 1]"#, "api_key"));
    assert!(!key(r#"{"a": "api_key\": 1"}"#, "api_key"));
    assert!(key(r#"{"a\\": "x", "api_key\\": 1}"#, "api_key"));
    assert!(!key(r#"{"a": "api_key\\", "b": 1}"#, "api_key"));
    // No closing quote, or nothing after it: parsed, to be sure.
    assert!(key(r#"{"api_key"#, "api_key"));
    assert!(key(r#""api_key""#, "api_key"));
}

/// Key rules apply inside JSON values whatever their glob: the literal search that decides
/// whether a JSON value is parsed for its keys takes a glob's literal only where every key it
/// matches contains that literal, so a rule with alternatives (`{otp,pin}`) or a character
/// class (`x[0-9a-f]`) has the value parsed. A value that only mentions a secret key's word
/// keeps its text (its email hashed); one whose key matches a rule has that value masked.
#[test]
fn key_rules_of_any_glob_apply_inside_json_values() {
    let r = redactor_from(
        r#"
        [[keys]]
        pattern = "{otp,pin}"
        action = "mask"
        kind = "code"
        [[keys]]
        pattern = "x[0-9a-f]"
        action = "mask"
        kind = "code"
        "#,
    );
    let text = redacted_with_attributes(
        &r,
        &[
            ("a.mention", r#"{"note":"the password of ann@example.com"}"#),
            ("a.keyed", r#"{"note":"hi","db_password" : "hunter2"}"#),
            ("a.otp", r#"{"otp":"plain words","n":1}"#),
            ("a.pin", r#"{"pin":"plain words","n":1}"#),
            ("a.class", r#"{"x7":"plain words","n":1}"#),
        ],
    );
    assert!(
        text.contains(r#"a.mention: {"note":"the password of <EMAIL:"#),
        "{text}"
    );
    assert!(!text.contains("ann@example.com"), "{text}");
    assert!(
        !text.contains("hunter2") && text.contains("<SECRET>"),
        "{text}"
    );
    assert!(!text.contains("plain words"), "{text}");
    for key in ["otp", "pin", "x7"] {
        assert!(
            text.contains(&format!(r#""{key}":"<CODE>""#)),
            "{key}: {text}"
        );
    }
}

#[test]
fn the_summary_counts_kinds_and_names_no_value_or_key() {
    let r = redactor();
    let mut request = request_carrying(&["nothing here".to_string()]);
    let attrs = &mut request.resource_spans[0].scope_spans[0].spans[0].attributes;
    attrs.push(kv("contact", sv("a@example.com and b@example.com")));
    attrs.push(kv("api_key", sv("whatever")));
    let (batch, totals) = r.redact_batch(&normalized(&request)).unwrap();
    assert_eq!(
        first_summary(&batch),
        vec![("EMAIL".to_string(), 2), ("SECRET".to_string(), 1)]
    );
    let summary = batch.column_by_name(col::REDACTIONS).unwrap().as_map();
    let mut total: Vec<(String, u64)> = totals.by_kind.clone();
    total.sort();
    assert_eq!(
        total,
        vec![("EMAIL".to_string(), 2), ("SECRET".to_string(), 1)]
    );
    let text = format!("{:?}", summary);
    assert!(!text.contains("contact") && !text.contains("api_key") && !text.contains("example"));
}

/// The first span's redaction summary, sorted by kind.
fn first_summary(batch: &RecordBatch) -> Vec<(String, i32)> {
    let summary = batch.column_by_name(col::REDACTIONS).unwrap().as_map();
    let entries = summary.value(0);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries
        .column(1)
        .as_primitive::<arrow::datatypes::Int32Type>();
    let mut got: Vec<(String, i32)> = (0..keys.len())
        .map(|i| (keys.value(i).to_string(), values.value(i)))
        .collect();
    got.sort();
    got
}

/// The scan of a JSON value gives up at the first literal of a key rule (`session_token`),
/// and the value is then read as JSON: what the scan found before it is counted once, not
/// twice. In text that is not JSON such a literal is passed over: what follows it is found.
#[test]
fn key_rule_literals_neither_count_twice_nor_hide_what_follows() {
    let r = redactor();
    let mut request = request_carrying(&["nothing here".to_string()]);
    let attrs = &mut request.resource_spans[0].scope_spans[0].spans[0].attributes;
    attrs.push(kv(
        "gen_ai.tool.call.arguments",
        sv(r#"{"to":"c@example.com","Session_Token":"q8Zr2LmX"}"#),
    ));
    attrs.push(kv(
        "note",
        sv("the PASSWORD policy and the session_token rules: mail d@example.com"),
    ));
    let (batch, _) = r.redact_batch(&normalized(&request)).unwrap();
    assert_eq!(
        first_summary(&batch),
        vec![("EMAIL".to_string(), 2), ("SECRET".to_string(), 1)]
    );
    let text = all_text(&batch);
    for gone in ["c@example.com", "q8Zr2LmX", "d@example.com"] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
    assert!(text.contains("the PASSWORD policy and the session_token rules: mail <EMAIL"));
}

#[test]
fn untouched_columns_are_shared_not_copied() {
    let r = redactor();
    let raw = normalized(&request_carrying(&["nothing to see".to_string()]));
    let (redacted, _) = r.redact_batch(&raw).unwrap();
    let before = raw.column_by_name(col::NAME).unwrap();
    let after = redacted.column_by_name(col::NAME).unwrap();
    assert_eq!(
        before.to_data().buffers()[1].as_ptr(),
        after.to_data().buffers()[1].as_ptr()
    );
}

#[test]
fn a_random_key_without_digits_next_to_a_secret_word_is_masked() {
    // Found by the property test above (seed 12859825917608327087): letters only, both cases.
    let r = redactor();
    let out = redact(
        &r,
        "the secret for staging: ionCnXCpxqiVpWbfvdRYvvVyLalGsdYR",
    );
    assert!(!out.contains("ionCnXCpxqiVpWbfvdRYvvVyLalGsdYR"), "{out}");
    // Written words after a secret word stay as they are.
    let prose = "reset your password through the settings page";
    assert_eq!(redact(&r, prose), prose);
}

#[test]
fn what_lies_between_a_secret_word_and_its_secret_is_scanned_too() {
    // Found by the property test above (seed 10706980994666693372): the keyword detector
    // redacts only the value after `token`, and scanning used to resume after that value,
    // past the SSN in between.
    let r = redactor();
    for text in [
        "please tokens =378-78-6205> \\\"gh6Yq2LmZ8rT4wXv9kPb3nQs\\\" customer",
        "my token 4111 1111 1111 1111 9fA3kLm2Qx7Wz1Rt5Yu8",
        "the api key for jo@example.io is 9fA3kLm2Qx7Wz1Rt5Yu8",
    ] {
        let out = redact(&r, text);
        for sensitive in [
            "378-78-6205",
            "jo@example.io",
            "4111 1111 1111 1111",
            "gh6Yq2LmZ8rT4wXv9kPb3nQs",
            "9fA3kLm2Qx7Wz1Rt5Yu8",
        ] {
            assert!(!out.contains(sensitive), "{text} -> {out}");
        }
    }
}

/// A long value repeated across the spans of a batch is scanned once and redacted alike in
/// every span, with every span's summary counting it; the same value under a key with a rule
/// of its own gets that rule, not the memoised scan.
#[test]
fn repeated_long_values_are_redacted_in_every_span() {
    let r = redactor();
    let long = format!(
        "{} Contact jane.doe@example.com, key sk-proj-abcDEF1234567890abcdef1234567890XYZ.",
        "You are the refund agent of an online store; follow the policy. ".repeat(5)
    );
    assert!(long.len() >= 256);
    let mut request = request_carrying(&["plain".to_string()]);
    let template = request.resource_spans[0].scope_spans[0].spans[0].clone();
    let spans = &mut request.resource_spans[0].scope_spans[0].spans;
    spans.clear();
    for i in 0..4u8 {
        let mut span = template.clone();
        span.span_id = vec![i + 1; 8];
        let key = if i == 3 {
            "api_key"
        } else {
            "gen_ai.system_instructions"
        };
        span.attributes.push(kv(key, sv(&long)));
        spans.push(span);
    }
    let raw = normalized(&request);
    assert_eq!(raw.num_rows(), 4);
    let (batch, totals) = r.redact_batch(&raw).unwrap();
    let text = all_text(&batch);
    assert!(!text.contains("jane.doe@example.com"), "{text}");
    assert!(!text.contains("sk-proj-abcDEF"), "{text}");
    assert!(text.contains("You are the refund agent"));

    let summary = batch.column_by_name(col::REDACTIONS).unwrap().as_map();
    let count = |row: usize, kind: &str| -> i32 {
        let entries = summary.value(row);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>();
        (0..keys.len())
            .filter(|&i| keys.value(i) == kind)
            .map(|i| values.value(i))
            .sum()
    };
    for row in 0..3 {
        assert_eq!(count(row, "EMAIL"), count(0, "EMAIL"), "row {row}");
        assert_eq!(
            count(row, "OPENAI_KEY"),
            count(0, "OPENAI_KEY"),
            "row {row}"
        );
    }
    assert!(count(0, "EMAIL") >= 1 && count(0, "OPENAI_KEY") >= 1);
    // Under `api_key` the whole value is a secret: the key's rule, not the text scan.
    assert_eq!((count(3, "EMAIL"), count(3, "OPENAI_KEY")), (0, 0));
    assert!(count(3, "SECRET") >= 1);
    let email_total: u64 = totals
        .by_kind
        .iter()
        .filter(|(k, _)| k == "EMAIL")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(email_total, 3 * count(0, "EMAIL") as u64);
}

#[test]
fn spliced_strings_equal_the_strings_built_one_by_one() {
    use arrow::array::StringArray;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..200 {
        let len = rng.random_range(1..40);
        let text = |rng: &mut ChaCha8Rng, alphabet: &[char]| {
            let n = rng.random_range(0..8);
            (0..n).map(|_| *pick(rng, alphabet)).collect::<String>()
        };
        let values: Vec<Option<String>> = (0..len)
            .map(|_| {
                let valid = rng.random_bool(0.8);
                let value = text(&mut rng, &['a', 'é', '€', 'z', ' ']);
                valid.then_some(value)
            })
            .collect();
        let array = StringArray::from(values.clone());
        // A slice, as the flusher hands the redactor, and a range inside it.
        let offset = rng.random_range(0..len);
        let sliced = array.slice(offset, len - offset);
        let start = rng.random_range(0..sliced.len());
        let end = rng.random_range(start..=sliced.len());
        let mut edits: Vec<(usize, Option<String>)> = Vec::new();
        for at in 0..end - start {
            if rng.random_bool(0.3) {
                let valid = rng.random_bool(0.8);
                let replacement = text(&mut rng, &['<', 'E', 'M', '>', ':', '9']);
                edits.push((at, valid.then_some(replacement)));
            }
        }
        let spliced = splice_strings(
            &sliced,
            start..end,
            edits.iter().map(|(at, text)| (*at, text.as_deref())),
        );
        let expected: StringArray = (start..end)
            .map(|i| match edits.iter().find(|(at, _)| *at == i - start) {
                Some((_, text)) => text.clone(),
                None => values[offset + i].clone(),
            })
            .collect();
        assert_eq!(spliced, expected, "case {case}");
        spliced.to_data().validate_full().unwrap();
    }
}

/// The flusher redacts slices of a segment's batch, whose maps index into the whole batch's
/// entries: a slice is redacted exactly as the same rows in a batch of their own.
#[test]
fn a_slice_is_redacted_as_the_same_rows_on_their_own() {
    let r = redactor();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let samples: Vec<String> = (0..12)
        .map(|_| {
            let (shown, _) = pick(&mut rng, GENERATORS)(&mut rng);
            embed(&mut rng, &shown)
        })
        .collect();
    let mut request = request_carrying(&samples);
    let template = request.resource_spans[0].scope_spans[0].spans[0].clone();
    let spans = &mut request.resource_spans[0].scope_spans[0].spans;
    for i in 0..9u8 {
        let mut span = template.clone();
        span.span_id = vec![i + 2; 8];
        span.name = samples[i as usize % samples.len()].clone();
        // Rows of different lengths and keys, so that an entry read from the wrong row shows.
        for j in 0..=(i as usize % 3) {
            let text = &samples[(i as usize + j + 3) % samples.len()];
            span.attributes.push(kv(&format!("note.{i}.{j}"), sv(text)));
        }
        spans.push(span);
    }
    let raw = normalized(&request);
    assert!(raw.num_rows() >= 10);
    for (offset, len) in [(1, 4), (3, raw.num_rows() - 3), (0, raw.num_rows())] {
        let slice = raw.slice(offset, len);
        // `take` copies the rows into arrays of their own (a concatenation of one batch
        // would hand the slice back).
        let rows = arrow::array::UInt32Array::from_iter_values(0..len as u32);
        let copy = arrow::compute::take_record_batch(&slice, &rows).unwrap();
        let attributes = copy.column_by_name(col::ATTRIBUTES).unwrap().as_map();
        assert_eq!(attributes.value_offsets()[0], 0);
        let (from_slice, totals_slice) = r.redact_batch(&slice).unwrap();
        let (from_copy, totals_copy) = r.redact_batch(&copy).unwrap();
        for (field, (a, b)) in raw
            .schema()
            .fields()
            .iter()
            .zip(from_slice.columns().iter().zip(from_copy.columns()))
        {
            let column = field.name();
            assert_eq!(a, b, "{column} of rows {offset}..{}", offset + len);
        }
        assert_eq!(totals_slice, totals_copy);
        for column in from_slice.columns() {
            column.to_data().validate_full().unwrap();
        }
    }
}

/// A random JSON value whose strings hold quotes, backslashes, brackets and commas (escaped
/// by the serialiser), with nesting.
fn random_json(rng: &mut ChaCha8Rng, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    const ALPHABET: [char; 11] = ['a', '"', '\\', '[', ']', '{', '}', ',', ' ', 'é', '\n'];
    let string = |rng: &mut ChaCha8Rng| {
        let n = rng.random_range(0..12);
        (0..n).map(|_| *pick(rng, &ALPHABET)).collect::<String>()
    };
    match rng.random_range(0..if depth == 0 { 3 } else { 5 }) {
        0 => Value::String(string(rng)),
        1 => Value::from(rng.random_range(-1000..1000)),
        2 => Value::Null,
        3 => (0..rng.random_range(0..4))
            .map(|_| random_json(rng, depth - 1))
            .collect(),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (string(rng), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// The elements that the array splitter finds are those the JSON parser finds, whatever the
/// strings hold; a cut-short array, or one with something after it, is not split.
#[test]
fn json_arrays_split_into_the_parsers_elements() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for case in 0..2_000 {
        let items: Vec<serde_json::Value> = (0..rng.random_range(0..6))
            .map(|_| random_json(&mut rng, 3))
            .collect();
        let text = if rng.random_bool(0.5) {
            serde_json::to_string(&items).unwrap()
        } else {
            format!(" {} ", serde_json::to_string_pretty(&items).unwrap())
        };
        let ranges = json_array_elements(&text).expect("an array");
        let found: Vec<serde_json::Value> = ranges
            .iter()
            .filter(|range| !text[(*range).clone()].trim().is_empty())
            .map(|range| serde_json::from_str(&text[range.clone()]).unwrap())
            .collect();
        assert_eq!(found, items, "case {case}: {text}");
        let cut = ceil_char(&text, rng.random_range(0..text.trim_end().len()));
        assert_eq!(
            json_array_elements(&text[..cut]),
            None,
            "case {case}: {text}"
        );
        let trailing = format!("{text},1");
        assert_eq!(json_array_elements(&trailing), None, "case {case}");
    }
}
