//! The traffic generator.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, SpanKind},
    status::StatusCode,
    ResourceSpans, ScopeSpans, Span, Status,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
}

fn kv(key: &str, value: impl Into<Value>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(value.into()),
        }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

fn i(v: i64) -> Value {
    Value::IntValue(v)
}

impl Generator {
    /// A generator with these options.
    pub fn new(options: GeneratorOptions) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn hex_id(&mut self, bytes: usize) -> Vec<u8> {
        loop {
            let id: Vec<u8> = (0..bytes).map(|_| self.rng.random()).collect();
            if id.iter().any(|b| *b != 0) {
                return id;
            }
        }
    }

    fn person(&mut self) -> (String, String) {
        let first = *self.pick(FIRST_NAMES);
        let last = *self.pick(LAST_NAMES);
        let domain = *self.pick(DOMAINS);
        let n: u32 = self.rng.random_range(1..99);
        (
            format!("{first} {last}"),
            format!("{first}.{last}{n}@{domain}"),
        )
    }

    /// A user message with the personal data real prompts carry.
    fn prompt(&mut self, workflow: &Workflow) -> String {
        let (name, email) = self.person();
        let phone = *self.pick(PHONES);
        let order: u32 = self.rng.random_range(100_000..999_999);
        match workflow.name {
            "refunds" => {
                let card = *self.pick(CARDS);
                format!("Hi, this is {name} ({email}, {phone}). Order #{order} arrived broken; please refund it to my card {card}.")
            }
            "support_triage" => format!(
                "Ticket from {email}: the export job fails since yesterday. Call me back on {phone}. Account {order}."
            ),
            "incident_remediation" => {
                let ip = format!("10.{}.{}.{}", self.rng.random_range(0..255), self.rng.random_range(0..255), self.rng.random_range(1..255));
                let key = format!("AKIA{}", self.upper_alnum(16));
                format!("Alert: p99 latency on checkout > 2s from host {ip}. Runbook says restart. Logs show aws_access_key_id={key} in env dump.")
            }
            _ => {
                let iban = *self.pick(IBANS);
                format!("Lead {name} <{email}>, {phone}, wants a quote; billing IBAN {iban}.")
            }
        }
    }

    fn upper_alnum(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..n)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())] as char)
            .collect()
    }

    fn token(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|_| CHARS[self.rng.random_range(0..CHARS.len())] as char)
            .collect()
    }

    /// Tool arguments, with personal data and now and then a credential.
    fn tool_arguments(&mut self, tool: &Tool) -> String {
        let (_, email) = self.person();
        let order: u32 = self.rng.random_range(100_000..999_999);
        let secret = match self.rng.random_range(0..20) {
            0 => format!(", \"api_key\": \"sk-proj-{}\"", self.token(40)),
            1 => format!(", \"authorization\": \"Bearer {}\"", self.token(32)),
            2 => format!(
                ", \"slack_webhook_token\": \"xoxb-{}-{}\"",
                self.rng.random_range(100_000_000u64..999_999_999),
                self.token(24)
            ),
            _ => String::new(),
        };
        match tool.name {
            "issue_refund" => format!("{{\"order_id\": \"{order}\", \"amount\": {}.{:02}, \"currency\": \"USD\", \"notify\": \"{email}\"{secret}}}", self.rng.random_range(5..500), self.rng.random_range(0..100)),
            "send_email" => format!("{{\"to\": \"{email}\", \"template\": \"update\"{secret}}}"),
            _ => format!("{{\"query\": \"{} {order}\", \"requested_by\": \"{email}\"{secret}}}", tool.name),
        }
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

    /// The next run.
    pub fn next_run(&mut self) -> GeneratedRun {
        let workflow = *self.pick(ALL_WORKFLOWS);
        let trace_id = self.hex_id(16);
        let run_id = format!("run-{}", hex::encode(self.hex_id(8)));
        let customer = format!(
            "cust-{:04}",
            self.rng.random_range(0..self.options.customers.max(1))
        );
        let conversation = format!("conv-{}", hex::encode(self.hex_id(6)));
        let offset = if self.options.spread_nanos == 0 {
            0
        } else {
            self.rng.random_range(0..self.options.spread_nanos)
        };
        let run_start = self.options.end_unix_nano.saturating_sub(offset);
        let root_id = self.hex_id(8);
        let model = *self.pick(workflow.models);
        let runaway = self.rng.random_bool(0.01);
        let steps = if runaway {
            self.rng.random_range(25..60)
        } else {
            self.rng.random_range(1..4)
        };

        let mut spans = Vec::new();
        let mut t = run_start + self.rng.random_range(1_000_000..20_000_000);
        let mut failed_write = false;
        // The conversation so far: every model call is sent the whole history, as agents do.
        // Messages are kept serialised: the generator is the load generator of the benchmarks
        // and must cost little next to the collector it measures.
        let prompt = serde_json::to_string(&self.prompt(&workflow)).expect("strings serialise");
        let mut history: Vec<String> = vec![format!(
            r#"{{"role":"user","parts":[{{"type":"text","content":{prompt}}}]}}"#
        )];
        let instructions = format!(
            r#"[{{"type":"text","content":{}}}]"#,
            serde_json::to_string(workflow.instructions).expect("strings serialise")
        );
        let common = |spans: &mut Vec<KeyValue>| {
            spans.push(kv("runledger.run.id", s(run_id.clone())));
        };
        for step in 0..steps {
            // A model call decides what to do next.
            let chat_id = self.hex_id(8);
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
            let call_id = format!("call_{}", self.token(24));
            let mut attributes = vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.provider.name", s(model.provider)),
                kv("gen_ai.request.model", s(model.request)),
                kv("gen_ai.response.model", s(model.response)),
                kv("gen_ai.usage.input_tokens", i(input)),
                kv("gen_ai.usage.output_tokens", i(output)),
                kv("gen_ai.usage.cache_read.input_tokens", i(cache_read)),
                kv("gen_ai.system_instructions", s(instructions.clone())),
                kv(
                    "gen_ai.input.messages",
                    s(format!("[{}]", history.join(","))),
                ),
                kv(
                    "gen_ai.output.messages",
                    s(format!(
                        r#"[{{"role":"assistant","parts":[{{"type":"tool_call","id":"{call_id}","name":"{}"}}],"finish_reason":"tool_call"}}]"#,
                        tool.name
                    )),
                ),
                kv(
                    "gen_ai.response.finish_reasons",
                    Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: vec![AnyValue {
                            value: Some(s("tool_call")),
                        }],
                    }),
                ),
            ];
            if cache_write > 0 {
                attributes.push(kv(
                    "gen_ai.usage.cache_creation.input_tokens",
                    i(cache_write),
                ));
            }
            if model.reasoning {
                let reasoning = output * self.rng.random_range(30..70) / 100;
                attributes.push(kv("gen_ai.usage.reasoning.output_tokens", i(reasoning)));
            }
            common(&mut attributes);
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: chat_id,
                parent_span_id: root_id.clone(),
                name: format!("chat {}", model.request),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: t,
                end_time_unix_nano: t + chat_ns,
                attributes,
                ..Default::default()
            });
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
                let mut attributes = vec![
                    kv("gen_ai.operation.name", s("execute_tool")),
                    kv("gen_ai.tool.name", s(tool.name)),
                    kv("gen_ai.tool.call.id", s(call_id.clone())),
                    kv("gen_ai.tool.call.arguments", s(self.tool_arguments(&tool))),
                    kv(
                        "runledger.action.side_effect",
                        s(if tool.write { "write" } else { "read" }),
                    ),
                ];
                if attempt > 0 {
                    attributes.push(kv("runledger.retry.attempt", i(attempt)));
                }
                if let Some(cost) = tool.cost_usd {
                    attributes.push(kv("runledger.cost.usd", Value::DoubleValue(cost)));
                }
                let mut events = Vec::new();
                let status = if fails {
                    let error = *self.pick(&[
                        "TimeoutError",
                        "HTTPError 503",
                        "RateLimitError",
                        "ValidationError",
                    ]);
                    attributes.push(kv("error.type", s(error)));
                    events.push(Event {
                        time_unix_nano: t + tool_ns,
                        name: "exception".into(),
                        attributes: vec![
                            kv("exception.type", s(error)),
                            kv(
                                "exception.message",
                                s(format!("{} failed: {error}", tool.name)),
                            ),
                        ],
                        ..Default::default()
                    });
                    Some(Status {
                        code: StatusCode::Error as i32,
                        message: format!("{error} calling {}", tool.name),
                    })
                } else {
                    if tool.write && !tool.ref_prefix.is_empty() {
                        let reference = format!("{}{}", tool.ref_prefix, self.token(10));
                        attributes.push(kv("runledger.action.ref", s(reference)));
                    }
                    last_result = self.tool_result(&tool);
                    attributes.push(kv("gen_ai.tool.call.result", s(last_result.clone())));
                    Some(Status {
                        code: StatusCode::Ok as i32,
                        message: String::new(),
                    })
                };
                common(&mut attributes);
                spans.push(Span {
                    trace_id: trace_id.clone(),
                    span_id: self.hex_id(8),
                    parent_span_id: root_id.clone(),
                    name: format!("execute_tool {}", tool.name),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: t,
                    end_time_unix_nano: t + tool_ns,
                    attributes,
                    events,
                    status,
                    ..Default::default()
                });
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
            let mut attributes = vec![
                kv("gen_ai.operation.name", s("human_review")),
                kv(
                    "runledger.review.seconds",
                    Value::DoubleValue((review_ns / 1_000_000_000) as f64),
                ),
            ];
            common(&mut attributes);
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: self.hex_id(8),
                parent_span_id: root_id.clone(),
                name: "human_review".into(),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: t,
                end_time_unix_nano: t + review_ns,
                attributes,
                ..Default::default()
            });
            t += review_ns;
        }
        let outcome = if failed_write || (runaway && self.rng.random_bool(0.7)) {
            "failure"
        } else if escalated {
            "escalated"
        } else {
            "success"
        };
        let mut attributes = vec![
            kv("gen_ai.operation.name", s("invoke_agent")),
            kv("gen_ai.agent.name", s(workflow.agent)),
            kv("gen_ai.agent.id", s(format!("{}-v3", workflow.agent))),
            kv(workflow.customer_key, s(customer)),
            kv("gen_ai.conversation.id", s(conversation)),
            kv("runledger.run.outcome", s(outcome)),
        ];
        if workflow.names_workflow {
            attributes.push(kv("gen_ai.workflow.name", s(workflow.name)));
        }
        common(&mut attributes);
        let root = Span {
            trace_id,
            span_id: root_id,
            name: if workflow.names_workflow {
                format!("invoke_agent {}", workflow.agent)
            } else {
                workflow.name.to_string()
            },
            kind: SpanKind::Server as i32,
            start_time_unix_nano: run_start,
            end_time_unix_nano: t + 2_000_000,
            attributes,
            status: Some(Status {
                code: if outcome == "failure" {
                    StatusCode::Error
                } else {
                    StatusCode::Ok
                } as i32,
                message: String::new(),
            }),
            ..Default::default()
        };
        spans.insert(0, root);
        GeneratedRun {
            run_id,
            workflow: workflow.name,
            service: workflow.service,
            spans,
        }
    }

    /// An export request holding `runs` runs, grouped by service as an SDK would batch them.
    /// Returns it with its span count.
    pub fn next_request(&mut self, runs: usize) -> (ExportTraceServiceRequest, usize) {
        let mut by_service: BTreeMap<&'static str, Vec<Span>> = BTreeMap::new();
        let mut span_count = 0;
        for _ in 0..runs {
            let run = self.next_run();
            span_count += run.spans.len();
            by_service.entry(run.service).or_default().extend(run.spans);
        }
        let resource_spans = by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s(service)),
                        kv("service.version", s("3.4.1")),
                        kv("deployment.environment.name", s("production")),
                        kv("telemetry.sdk.language", s("python")),
                        kv("telemetry.sdk.name", s("opentelemetry")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "runledger.sample_data".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        (ExportTraceServiceRequest { resource_spans }, span_count)
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
