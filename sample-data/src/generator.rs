//! The traffic generator.

use std::collections::BTreeMap;
use std::io::Write as _;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, ScopeSpans, Span};
use prost::Message as _;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::protobuf::{field, field_len, ProtoWriter};

/// A tool an agent can call.
#[derive(Debug, Clone, Copy)]
struct Tool {
    name: &'static str,
    write: bool,
    /// Prefix of the external ref a successful write leaves (refund id, ticket...).
    ref_prefix: &'static str,
    /// USD per call, for paid APIs.
    cost_usd: Option<f64>,
    /// Probability that a call fails.
    error_rate: f64,
}

/// A model an agent can call.
#[derive(Debug, Clone, Copy)]
struct Model {
    provider: &'static str,
    request: &'static str,
    response: &'static str,
    reasoning: bool,
}

/// A workflow and the agent that runs it.
#[derive(Debug, Clone, Copy)]
struct Workflow {
    name: &'static str,
    agent: &'static str,
    service: &'static str,
    /// Whether the root span names the workflow with `gen_ai.workflow.name` (the others rely
    /// on the root span's name, as older instrumentation does).
    names_workflow: bool,
    /// The attribute that carries the customer id.
    customer_key: &'static str,
    models: &'static [Model],
    tools: &'static [Tool],
    /// The agent's system instructions, sent with every model call.
    instructions: &'static str,
}

const fn tool(name: &'static str, write: bool, ref_prefix: &'static str, error_rate: f64) -> Tool {
    Tool {
        name,
        write,
        ref_prefix,
        cost_usd: None,
        error_rate,
    }
}

const GPT_4O: Model = Model {
    provider: "openai",
    request: "gpt-4o",
    response: "gpt-4o-2024-08-06",
    reasoning: false,
};
const GPT_4O_MINI: Model = Model {
    provider: "openai",
    request: "gpt-4o-mini",
    response: "gpt-4o-mini-2024-07-18",
    reasoning: false,
};
const O3_MINI: Model = Model {
    provider: "openai",
    request: "o3-mini",
    response: "o3-mini-2025-01-31",
    reasoning: true,
};
const SONNET: Model = Model {
    provider: "anthropic",
    request: "claude-sonnet-4-5",
    response: "claude-sonnet-4-5-20250929",
    reasoning: false,
};
const HAIKU: Model = Model {
    provider: "anthropic",
    request: "claude-haiku-4-5",
    response: "claude-haiku-4-5-20251001",
    reasoning: false,
};
const GEMINI_PRO: Model = Model {
    provider: "gcp.gemini",
    request: "gemini-2.5-pro",
    response: "gemini-2.5-pro",
    reasoning: true,
};
const GEMINI_FLASH: Model = Model {
    provider: "gcp.gemini",
    request: "gemini-2.5-flash",
    response: "gemini-2.5-flash",
    reasoning: false,
};
const MISTRAL: Model = Model {
    provider: "mistral_ai",
    request: "mistral-large-latest",
    response: "mistral-large-2411",
    reasoning: false,
};
const LLAMA: Model = Model {
    provider: "groq",
    request: "llama-3.3-70b-versatile",
    response: "llama-3.3-70b-versatile",
    reasoning: false,
};

/// The workflows of the generated company.
pub const WORKFLOWS: &[&str] = &[
    "refunds",
    "support_triage",
    "incident_remediation",
    "sales_ops",
];

const ALL_WORKFLOWS: &[Workflow] = &[
    Workflow {
        name: "refunds",
        agent: "refund-agent",
        service: "refund-service",
        names_workflow: true,
        customer_key: "enduser.id",
        instructions: "You are the refund agent of an online store. Decide whether an order qualifies for a refund under the policy: items reported damaged or not delivered within 30 days are refunded in full; change-of-mind returns within 14 days are refunded minus shipping. Always look up the order before acting, check the policy, and never refund more than the order total. Refunds above 500 USD need a human reviewer. After a refund, email the customer a confirmation. Be concise and never reveal internal notes.",
        models: &[GPT_4O, GPT_4O_MINI],
        tools: &[
            tool("lookup_order", false, "", 0.02),
            tool("check_refund_policy", false, "", 0.01),
            tool("issue_refund", true, "re_", 0.03),
            tool("send_email", true, "msg_", 0.02),
        ],
    },
    Workflow {
        name: "support_triage",
        agent: "triage-agent",
        service: "support-bot",
        names_workflow: true,
        customer_key: "customer.id",
        instructions: "You are the support triage agent. Read the customer's ticket, search the knowledge base for known issues, classify the ticket by product area and severity (S1 outage, S2 degraded, S3 question), and create a ticket in the right queue with a one-paragraph summary. Escalate S1 tickets to the on-call engineer. Quote knowledge-base articles by id. Do not promise timelines.",
        models: &[SONNET, HAIKU],
        tools: &[
            Tool {
                name: "search_kb",
                write: false,
                ref_prefix: "",
                cost_usd: Some(0.002),
                error_rate: 0.03,
            },
            tool("classify_ticket", false, "", 0.0),
            tool("create_ticket", true, "TCK-", 0.02),
        ],
    },
    Workflow {
        name: "incident_remediation",
        agent: "sre-agent",
        service: "sre-copilot",
        names_workflow: true,
        customer_key: "customer.id",
        instructions: "You are the SRE copilot. Given an alert, query the metrics and logs of the affected service, find the most likely cause, and propose the smallest safe remediation. You may restart a service only if the runbook allows it and error rates are above the threshold for ten minutes; any configuration change goes through a pull request. Record every action with its id. Stop and escalate if two remediations fail.",
        models: &[O3_MINI, GEMINI_PRO],
        tools: &[
            tool("query_metrics", false, "", 0.05),
            tool("fetch_logs", false, "", 0.05),
            tool("restart_service", true, "deploy-", 0.06),
            tool("open_pull_request", true, "PR-", 0.04),
        ],
    },
    Workflow {
        name: "sales_ops",
        agent: "sales-ops-agent",
        service: "sales-ops",
        names_workflow: false,
        customer_key: "customer.id",
        instructions: "You are the sales operations agent. Keep the CRM accurate: look up the lead, enrich it with firmographic data, update the opportunity stage and next step, and send the follow-up email the account executive asked for. Never change deal amounts without an explicit instruction. Use the customer's language and keep emails under 120 words.",
        models: &[MISTRAL, LLAMA, GEMINI_FLASH],
        tools: &[
            tool("crm_lookup", false, "", 0.02),
            Tool {
                name: "enrich_lead",
                write: false,
                ref_prefix: "",
                cost_usd: Some(0.01),
                error_rate: 0.04,
            },
            tool("update_crm", true, "opp-", 0.02),
            tool("send_email", true, "msg_", 0.02),
        ],
    },
];

const FIRST_NAMES: &[&str] = &[
    "jane", "omar", "li", "maria", "kwame", "anna", "raj", "sofia", "tom", "yuki",
];
const LAST_NAMES: &[&str] = &[
    "doe", "haddad", "wei", "garcia", "mensah", "kowalska", "patel", "rossi", "baker", "sato",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "corp.example.net"];
const PHONES: &[&str] = &[
    "+44 20 7946 0958",
    "+1 (415) 555-0132",
    "+49 30 901820",
    "+33 1 42 68 53 00",
    "+81 3-1234-5678",
    "415-555-0199",
];
/// Test card numbers that pass the Luhn check.
const CARDS: &[&str] = &[
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "378282246310005",
    "6011111111111117",
];
const IBANS: &[&str] = &[
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "FR1420041010050500013M02606",
];

/// How the generator spreads runs in time.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorOptions {
    /// The seed: the same seed gives the same runs.
    pub seed: u64,
    /// The latest start time, in Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Runs start uniformly in `[end - spread, end]`, in nanoseconds (0: all at `end`).
    pub spread_nanos: u64,
    /// How many customers the traffic comes from.
    pub customers: u32,
}

/// One generated run: its spans and what it is.
#[derive(Debug, Clone)]
pub struct GeneratedRun {
    /// The run id (`runledger.run.id`).
    pub run_id: String,
    /// The workflow.
    pub workflow: &'static str,
    /// The service that emitted it (its resource's `service.name`).
    pub service: &'static str,
    /// The spans, root first.
    pub spans: Vec<Span>,
}

/// The deterministic traffic generator.
#[derive(Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
    options: GeneratorOptions,
    /// A run's spans other than the root, written before it (kept for its allocation).
    children: ProtoWriter,
    /// The spans of the request being written, by service (kept for their allocations).
    by_service: BTreeMap<&'static str, ProtoWriter>,
}

/// Span kinds and status codes as their protobuf numbers.
const KIND_INTERNAL: u64 = SpanKind::Internal as u64;
const KIND_SERVER: u64 = SpanKind::Server as u64;
const KIND_CLIENT: u64 = SpanKind::Client as u64;
const STATUS_OK: u64 = StatusCode::Ok as u64;
const STATUS_ERROR: u64 = StatusCode::Error as u64;
const ERRORS: &[&str] = &[
    "TimeoutError",
    "HTTPError 503",
    "RateLimitError",
    "ValidationError",
];
/// A span's attributes.
const ATTR: u32 = field::SPAN_ATTRIBUTES;

/// Writes a span's fields that come before its attributes.
#[allow(clippy::too_many_arguments)]
fn span_header(
    w: &mut ProtoWriter,
    trace_id: &[u8],
    span_id: &[u8],
    parent_span_id: &[u8],
    name: std::fmt::Arguments<'_>,
    kind: u64,
    start: u64,
    end: u64,
) {
    w.bytes(field::SPAN_TRACE_ID, trace_id);
    w.bytes(field::SPAN_SPAN_ID, span_id);
    w.bytes(field::SPAN_PARENT_SPAN_ID, parent_span_id);
    w.string_fmt(field::SPAN_NAME, name);
    w.uint(field::SPAN_KIND, kind);
    w.fixed64(field::SPAN_START, start);
    w.fixed64(field::SPAN_END, end);
}

/// A span's status, with its message if it has one.
fn status(w: &mut ProtoWriter, code: u64, message: Option<std::fmt::Arguments<'_>>) {
    let open = w.begin(field::SPAN_STATUS);
    if let Some(message) = message {
        w.string_fmt(field::STATUS_MESSAGE, message);
    }
    w.uint(field::STATUS_CODE, code);
    w.end(open);
}

impl Generator {
    /// A generator with these options.
    pub fn new(options: GeneratorOptions) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
            children: ProtoWriter::default(),
            by_service: BTreeMap::new(),
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    /// A random id of `N` bytes, not all zero.
    fn id<const N: usize>(&mut self) -> [u8; N] {
        loop {
            let mut id = [0u8; N];
            self.rng.fill_bytes(&mut id);
            if id.iter().any(|b| *b != 0) {
                return id;
            }
        }
    }

    fn person(&mut self) -> (&'static str, &'static str, &'static str, u32) {
        let first = *self.pick(FIRST_NAMES);
        let last = *self.pick(LAST_NAMES);
        let domain = *self.pick(DOMAINS);
        (first, last, domain, self.rng.random_range(1..99))
    }

    /// A user message with the personal data real prompts carry.
    fn prompt(&mut self, workflow: &Workflow) -> String {
        let (first, last, domain, n) = self.person();
        let phone = *self.pick(PHONES);
        let order: u32 = self.rng.random_range(100_000..999_999);
        match workflow.name {
            "refunds" => {
                let card = *self.pick(CARDS);
                format!("Hi, this is {first} {last} ({first}.{last}{n}@{domain}, {phone}). Order #{order} arrived broken; please refund it to my card {card}.")
            }
            "support_triage" => format!(
                "Ticket from {first}.{last}{n}@{domain}: the export job fails since yesterday. Call me back on {phone}. Account {order}."
            ),
            "incident_remediation" => {
                let ip = format!("10.{}.{}.{}", self.rng.random_range(0..255), self.rng.random_range(0..255), self.rng.random_range(1..255));
                let key = format!("AKIA{}", self.upper_alnum(16));
                format!("Alert: p99 latency on checkout > 2s from host {ip}. Runbook says restart. Logs show aws_access_key_id={key} in env dump.")
            }
            _ => {
                let iban = *self.pick(IBANS);
                format!("Lead {first} {last} <{first}.{last}{n}@{domain}>, {phone}, wants a quote; billing IBAN {iban}.")
            }
        }
    }

    fn upper_alnum(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..n)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())] as char)
            .collect()
    }

    /// `n` random letters and digits, appended to `out`.
    fn token_into(&mut self, n: usize, out: &mut Vec<u8>) {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        out.extend((0..n).map(|_| CHARS[self.rng.random_range(0..CHARS.len())]));
    }

    /// Tool arguments, with personal data and now and then a credential, appended to `out`.
    fn tool_arguments(&mut self, tool: &Tool, out: &mut Vec<u8>) {
        let (first, last, domain, n) = self.person();
        let order: u32 = self.rng.random_range(100_000..999_999);
        let write = |out: &mut Vec<u8>, args: std::fmt::Arguments<'_>| {
            out.write_fmt(args).expect("writing to a Vec cannot fail")
        };
        match tool.name {
            "issue_refund" => {
                let (dollars, cents) =
                    (self.rng.random_range(5..500), self.rng.random_range(0..100));
                write(out, format_args!("{{\"order_id\": \"{order}\", \"amount\": {dollars}.{cents:02}, \"currency\": \"USD\", \"notify\": \"{first}.{last}{n}@{domain}\""));
            }
            "send_email" => write(
                out,
                format_args!("{{\"to\": \"{first}.{last}{n}@{domain}\", \"template\": \"update\""),
            ),
            _ => write(
                out,
                format_args!(
                    "{{\"query\": \"{} {order}\", \"requested_by\": \"{first}.{last}{n}@{domain}\"",
                    tool.name
                ),
            ),
        }
        match self.rng.random_range(0..20) {
            0 => {
                out.extend_from_slice(b", \"api_key\": \"sk-proj-");
                self.token_into(40, out);
                out.push(b'"');
            }
            1 => {
                out.extend_from_slice(b", \"authorization\": \"Bearer ");
                self.token_into(32, out);
                out.push(b'"');
            }
            2 => {
                let team = self.rng.random_range(100_000_000u64..999_999_999);
                write(
                    out,
                    format_args!(", \"slack_webhook_token\": \"xoxb-{team}-"),
                );
                self.token_into(24, out);
                out.push(b'"');
            }
            _ => {}
        }
        out.push(b'}');
    }

    /// What a successful tool call returns.
    fn tool_result(&mut self, tool: &Tool) -> String {
        let id: u32 = self.rng.random_range(100_000..999_999);
        match tool.name {
            "lookup_order" => format!(
                "{{\"order_id\": \"{id}\", \"status\": \"delivered\", \"total\": {}.{:02}, \"currency\": \"USD\", \"items\": [{{\"sku\": \"SKU-{}\", \"qty\": 1}}]}}",
                self.rng.random_range(5..900),
                self.rng.random_range(0..100),
                self.rng.random_range(1000..9999)
            ),
            "search_kb" => format!(
                "{{\"articles\": [{{\"id\": \"KB-{}\", \"title\": \"Export jobs fail after upgrade\", \"score\": 0.{}}}]}}",
                self.rng.random_range(100..999),
                self.rng.random_range(50..99)
            ),
            "query_metrics" | "fetch_logs" => format!(
                "{{\"service\": \"checkout\", \"p99_ms\": {}, \"error_rate\": 0.0{}, \"window\": \"15m\"}}",
                self.rng.random_range(200..4000),
                self.rng.random_range(1..9)
            ),
            _ => format!("{{\"ok\": true, \"id\": \"{id}\"}}"),
        }
    }

    /// The next run, as structs (tests and tools; the sender uses
    /// [`next_request_encoded`](Self::next_request_encoded)).
    pub fn next_run(&mut self) -> GeneratedRun {
        let workflow = *self.pick(ALL_WORKFLOWS);
        let mut spans = ProtoWriter::default();
        let (run_id, _) = self.write_run(&workflow, &mut spans);
        GeneratedRun {
            run_id,
            workflow: workflow.name,
            service: workflow.service,
            spans: ScopeSpans::decode(spans.buf.as_slice())
                .expect("the generator writes valid protobuf")
                .spans,
        }
    }

    /// Writes the next run of `workflow` into `out` as `ScopeSpans.spans` fields, root first;
    /// returns its run id and span count.
    fn write_run(&mut self, workflow: &Workflow, out: &mut ProtoWriter) -> (String, usize) {
        let trace_id = self.id::<16>();
        let run_id = format!("run-{}", hex::encode(self.id::<8>()));
        let customer = format!(
            "cust-{:04}",
            self.rng.random_range(0..self.options.customers.max(1))
        );
        let conversation = format!("conv-{}", hex::encode(self.id::<6>()));
        let offset = if self.options.spread_nanos == 0 {
            0
        } else {
            self.rng.random_range(0..self.options.spread_nanos)
        };
        let run_start = self.options.end_unix_nano.saturating_sub(offset);
        let root_id = self.id::<8>();
        let model = *self.pick(workflow.models);
        let runaway = self.rng.random_bool(0.01);
        let steps = if runaway {
            self.rng.random_range(25..60)
        } else {
            self.rng.random_range(1..4)
        };

        // The children are written first (the root's end and outcome depend on them) and
        // go after the root.
        let mut w = std::mem::take(&mut self.children);
        w.buf.clear();
        let mut t = run_start + self.rng.random_range(1_000_000..20_000_000);
        let mut failed_write = false;
        // The conversation so far: every model call is sent the whole history, as agents do.
        let prompt = serde_json::to_string(&self.prompt(workflow)).expect("strings serialise");
        let mut history: Vec<String> = vec![format!(
            r#"{{"role":"user","parts":[{{"type":"text","content":{prompt}}}]}}"#
        )];
        let instructions = format!(
            r#"[{{"type":"text","content":{}}}]"#,
            serde_json::to_string(workflow.instructions).expect("strings serialise")
        );
        let mut call_id = Vec::with_capacity(32);
        let mut spans = 1;
        for step in 0..steps {
            // A model call decides what to do next.
            let chat_id = self.id::<8>();
            let input: i64 = self.rng.random_range(400..8_000) + step as i64 * 300;
            let cache_read: i64 = if step > 0 || self.rng.random_bool(0.3) {
                input * self.rng.random_range(20..80) / 100
            } else {
                0
            };
            let cache_write: i64 = if cache_read == 0 && workflow.models[0].provider == "anthropic"
            {
                input / 2
            } else {
                0
            };
            let output: i64 = self.rng.random_range(40..900);
            let chat_ns = self.rng.random_range(300_000_000..4_000_000_000u64);
            let tool = *self.pick(workflow.tools);
            call_id.clear();
            call_id.extend_from_slice(b"call_");
            self.token_into(24, &mut call_id);
            let call_id = std::str::from_utf8(&call_id).expect("ASCII");
            let span = w.begin(field::SCOPE_SPANS_SPANS);
            span_header(
                &mut w,
                &trace_id,
                &chat_id,
                &root_id,
                format_args!("chat {}", model.request),
                KIND_CLIENT,
                t,
                t + chat_ns,
            );
            w.kv_str(ATTR, "gen_ai.operation.name", "chat");
            w.kv_str(ATTR, "gen_ai.provider.name", model.provider);
            w.kv_str(ATTR, "gen_ai.request.model", model.request);
            w.kv_str(ATTR, "gen_ai.response.model", model.response);
            w.kv_int(ATTR, "gen_ai.usage.input_tokens", input);
            w.kv_int(ATTR, "gen_ai.usage.output_tokens", output);
            w.kv_int(ATTR, "gen_ai.usage.cache_read.input_tokens", cache_read);
            w.kv_str(ATTR, "gen_ai.system_instructions", &instructions);
            w.kv_str_with(ATTR, "gen_ai.input.messages", |buf| {
                buf.push(b'[');
                for (i, message) in history.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(message.as_bytes());
                }
                buf.push(b']');
            });
            w.kv_fmt(
                ATTR,
                "gen_ai.output.messages",
                format_args!(
                    r#"[{{"role":"assistant","parts":[{{"type":"tool_call","id":"{call_id}","name":"{}"}}],"finish_reason":"tool_call"}}]"#,
                    tool.name
                ),
            );
            w.kv_str_array(ATTR, "gen_ai.response.finish_reasons", &["tool_call"]);
            if cache_write > 0 {
                w.kv_int(
                    ATTR,
                    "gen_ai.usage.cache_creation.input_tokens",
                    cache_write,
                );
            }
            if model.reasoning {
                let reasoning = output * self.rng.random_range(30..70) / 100;
                w.kv_int(ATTR, "gen_ai.usage.reasoning.output_tokens", reasoning);
            }
            w.kv_str(ATTR, "runledger.run.id", &run_id);
            w.end(span);
            spans += 1;
            t += chat_ns + self.rng.random_range(1_000_000..30_000_000);

            history.push(format!(
                r#"{{"role":"assistant","parts":[{{"type":"tool_call","id":"{call_id}","name":"{}"}}]}}"#,
                tool.name
            ));
            // Then the tool, retried after a failure.
            let mut attempt = 0;
            let mut last_result = String::new();
            loop {
                let tool_ns = self.rng.random_range(20_000_000..2_000_000_000u64);
                let fails = self
                    .rng
                    .random_bool(if runaway { 0.5 } else { tool.error_rate });
                let span_id = self.id::<8>();
                let span = w.begin(field::SCOPE_SPANS_SPANS);
                span_header(
                    &mut w,
                    &trace_id,
                    &span_id,
                    &root_id,
                    format_args!("execute_tool {}", tool.name),
                    KIND_INTERNAL,
                    t,
                    t + tool_ns,
                );
                w.kv_str(ATTR, "gen_ai.operation.name", "execute_tool");
                w.kv_str(ATTR, "gen_ai.tool.name", tool.name);
                w.kv_str(ATTR, "gen_ai.tool.call.id", call_id);
                w.kv_str_with(ATTR, "gen_ai.tool.call.arguments", |buf| {
                    self.tool_arguments(&tool, buf)
                });
                w.kv_str(
                    ATTR,
                    "runledger.action.side_effect",
                    if tool.write { "write" } else { "read" },
                );
                if attempt > 0 {
                    w.kv_int(ATTR, "runledger.retry.attempt", attempt);
                }
                if let Some(cost) = tool.cost_usd {
                    w.kv_double(ATTR, "runledger.cost.usd", cost);
                }
                let error = if fails {
                    let error = *self.pick(ERRORS);
                    w.kv_str(ATTR, "error.type", error);
                    Some(error)
                } else {
                    if tool.write && !tool.ref_prefix.is_empty() {
                        w.kv_str_with(ATTR, "runledger.action.ref", |buf| {
                            buf.extend_from_slice(tool.ref_prefix.as_bytes());
                            self.token_into(10, buf);
                        });
                    }
                    last_result = self.tool_result(&tool);
                    w.kv_str(ATTR, "gen_ai.tool.call.result", &last_result);
                    None
                };
                w.kv_str(ATTR, "runledger.run.id", &run_id);
                match error {
                    Some(error) => {
                        let event = w.begin(field::SPAN_EVENTS);
                        w.fixed64(field::EVENT_TIME, t + tool_ns);
                        w.bytes(field::EVENT_NAME, b"exception");
                        w.kv_str(field::EVENT_ATTRIBUTES, "exception.type", error);
                        w.kv_fmt(
                            field::EVENT_ATTRIBUTES,
                            "exception.message",
                            format_args!("{} failed: {error}", tool.name),
                        );
                        w.end(event);
                        status(
                            &mut w,
                            STATUS_ERROR,
                            Some(format_args!("{error} calling {}", tool.name)),
                        );
                    }
                    None => status(&mut w, STATUS_OK, None),
                }
                w.end(span);
                spans += 1;
                t += tool_ns + self.rng.random_range(1_000_000..10_000_000);
                if !fails {
                    break;
                }
                attempt += 1;
                if attempt > 2 {
                    failed_write |= tool.write;
                    break;
                }
            }
            let response = if last_result.is_empty() {
                "null".to_string()
            } else {
                serde_json::to_string(&last_result).expect("strings serialise")
            };
            history.push(format!(
                r#"{{"role":"tool","parts":[{{"type":"tool_call_response","id":"{call_id}","response":{response}}}]}}"#
            ));
            // Long loops keep the first message and the recent turns, as agents trim context.
            if history.len() > 9 {
                history.drain(1..history.len() - 8);
            }
        }

        let escalated = !failed_write && self.rng.random_bool(0.05);
        if escalated {
            let review_ns = self.rng.random_range(60..900) * 1_000_000_000u64;
            let span_id = self.id::<8>();
            let span = w.begin(field::SCOPE_SPANS_SPANS);
            span_header(
                &mut w,
                &trace_id,
                &span_id,
                &root_id,
                format_args!("human_review"),
                KIND_INTERNAL,
                t,
                t + review_ns,
            );
            w.kv_str(ATTR, "gen_ai.operation.name", "human_review");
            w.kv_double(
                ATTR,
                "runledger.review.seconds",
                (review_ns / 1_000_000_000) as f64,
            );
            w.kv_str(ATTR, "runledger.run.id", &run_id);
            w.end(span);
            spans += 1;
            t += review_ns;
        }
        let outcome = if failed_write || (runaway && self.rng.random_bool(0.7)) {
            "failure"
        } else if escalated {
            "escalated"
        } else {
            "success"
        };
        let root = out.begin(field::SCOPE_SPANS_SPANS);
        let (prefix, name) = if workflow.names_workflow {
            ("invoke_agent ", workflow.agent)
        } else {
            ("", workflow.name)
        };
        span_header(
            out,
            &trace_id,
            &root_id,
            &[],
            format_args!("{prefix}{name}"),
            KIND_SERVER,
            run_start,
            t + 2_000_000,
        );
        out.kv_str(ATTR, "gen_ai.operation.name", "invoke_agent");
        out.kv_str(ATTR, "gen_ai.agent.name", workflow.agent);
        out.kv_fmt(
            ATTR,
            "gen_ai.agent.id",
            format_args!("{}-v3", workflow.agent),
        );
        out.kv_str(ATTR, workflow.customer_key, &customer);
        out.kv_str(ATTR, "gen_ai.conversation.id", &conversation);
        out.kv_str(ATTR, "runledger.run.outcome", outcome);
        if workflow.names_workflow {
            out.kv_str(ATTR, "gen_ai.workflow.name", workflow.name);
        }
        out.kv_str(ATTR, "runledger.run.id", &run_id);
        let code = if outcome == "failure" {
            STATUS_ERROR
        } else {
            STATUS_OK
        };
        status(out, code, None);
        out.end(root);
        out.append(&w);
        self.children = w;
        (run_id, spans)
    }

    /// An export request holding `runs` runs, grouped by service as an SDK would batch them.
    /// Returns it with its span count.
    pub fn next_request(&mut self, runs: usize) -> (ExportTraceServiceRequest, usize) {
        let (encoded, spans) = self.next_request_encoded(runs);
        let request = ExportTraceServiceRequest::decode(encoded.as_slice())
            .expect("the generator writes valid protobuf");
        (request, spans)
    }

    /// An export request holding `runs` runs, as [`next_request`](Self::next_request), in
    /// its protobuf encoding: what the sender sends, written without building the structs.
    pub fn next_request_encoded(&mut self, runs: usize) -> (Vec<u8>, usize) {
        let mut by_service = std::mem::take(&mut self.by_service);
        let mut span_count = 0;
        for _ in 0..runs {
            let workflow = *self.pick(ALL_WORKFLOWS);
            let spans = by_service.entry(workflow.service).or_default();
            span_count += self.write_run(&workflow, spans).1;
        }
        let size = by_service.values().map(|s| s.buf.len() + 256).sum();
        let mut request = ProtoWriter {
            buf: Vec::with_capacity(size),
        };
        for (service, spans) in &mut by_service {
            if spans.buf.is_empty() {
                continue;
            }
            let mut resource = ProtoWriter::default();
            let open = resource.begin(field::RESOURCE_SPANS_RESOURCE);
            for (key, value) in [
                ("service.name", *service),
                ("service.version", "3.4.1"),
                ("deployment.environment.name", "production"),
                ("telemetry.sdk.language", "python"),
                ("telemetry.sdk.name", "opentelemetry"),
            ] {
                resource.kv_str(field::RESOURCE_ATTRIBUTES, key, value);
            }
            resource.end(open);
            let mut scope = ProtoWriter::default();
            let open = scope.begin(field::SCOPE_SPANS_SCOPE);
            scope.bytes(field::SCOPE_NAME, b"runledger.sample_data");
            scope.bytes(field::SCOPE_VERSION, env!("CARGO_PKG_VERSION").as_bytes());
            scope.end(open);
            // The two outer lengths are known: no need to move the spans once written.
            let scope_spans = scope.buf.len() + spans.buf.len();
            let resource_spans =
                resource.buf.len() + field_len(field::RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
            request.len_prefix(field::REQUEST_RESOURCE_SPANS, resource_spans);
            request.append(&resource);
            request.len_prefix(field::RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
            request.append(&scope);
            request.append(spans);
            spans.buf.clear();
        }
        self.by_service = by_service;
        (request.buf, span_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> GeneratorOptions {
        GeneratorOptions {
            seed,
            end_unix_nano: 1_800_000_000_000_000_000,
            spread_nanos: 3_600_000_000_000,
            customers: 50,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let a = Generator::new(options(7)).next_request(20);
        let b = Generator::new(options(7)).next_request(20);
        let c = Generator::new(options(8)).next_request(20);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn requests_are_written_as_prost_encodes_them() {
        for seed in 0..5 {
            let mut generator = Generator::new(options(seed));
            for runs in [1, 7, 80] {
                let (encoded, spans) = generator.next_request_encoded(runs);
                let decoded = ExportTraceServiceRequest::decode(encoded.as_slice()).unwrap();
                assert_eq!(decoded.encode_to_vec(), encoded, "seed {seed}, {runs} runs");
                let counted: usize = decoded
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                assert_eq!(counted, spans);
                assert!(decoded.resource_spans.iter().all(|r| r
                    .resource
                    .as_ref()
                    .is_some_and(|r| r.attributes.iter().any(|a| a.key == "service.name"))));
            }
        }
    }

    #[test]
    fn traffic_has_what_the_metrics_need() {
        let mut generator = Generator::new(options(1));
        let runs: Vec<GeneratedRun> = (0..2000).map(|_| generator.next_run()).collect();
        let spans: Vec<&Span> = runs.iter().flat_map(|r| &r.spans).collect();
        let has = |key: &str| {
            spans
                .iter()
                .filter(|s| s.attributes.iter().any(|a| a.key == key))
                .count()
        };
        assert!(has("runledger.retry.attempt") > 0, "retries");
        assert!(has("runledger.action.ref") > 0, "external refs");
        assert!(
            has("gen_ai.usage.reasoning.output_tokens") > 0,
            "reasoning tokens"
        );
        assert!(
            has("gen_ai.usage.cache_read.input_tokens") > 0,
            "cached tokens"
        );
        assert!(has("runledger.review.seconds") > 0, "human review");
        assert!(has("runledger.cost.usd") > 0, "paid tools");
        assert!(spans.iter().any(|s| s
            .status
            .as_ref()
            .is_some_and(|st| st.code == StatusCode::Error as i32)));
        assert!(spans.iter().any(|s| s
            .events
            .iter()
            .any(|e| e.name == "exception"
                && e.attributes.iter().any(|a| a.key == "exception.message"))));
        assert!(spans
            .iter()
            .any(|s| s.status.as_ref().is_some_and(|st| !st.message.is_empty())));
        for workflow in WORKFLOWS {
            assert!(runs.iter().any(|r| r.workflow == *workflow), "{workflow}");
        }
        assert!(runs.iter().any(|r| r.spans.len() > 40), "a runaway loop");
        for run in &runs {
            let root = &run.spans[0];
            assert!(root.parent_span_id.is_empty());
            for span in &run.spans {
                assert!(span.start_time_unix_nano >= root.start_time_unix_nano);
                assert!(span.end_time_unix_nano <= root.end_time_unix_nano);
                assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
            }
        }
    }
}
