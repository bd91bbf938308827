//! The attribute keys that fill the span table's typed columns, in the order they are read.
//!
//! OpenTelemetry GenAI semantic conventions come first; then what older or other popular
//! instrumentations emit (OpenInference, OpenLLMetry/Traceloop, the pre-1.36 GenAI names);
//! then runledger's own namespace for what no standard names. The first key present wins.
//! The raw attribute is always kept in the `attributes` map as well.

/// `operation`: what the span does (chat, execute_tool, invoke_agent...).
pub const OPERATION: &[&str] = &[
    "gen_ai.operation.name",
    "openinference.span.kind",
    "traceloop.span.kind",
    "llm.request.type",
];
/// `provider`: the model provider.
pub const PROVIDER: &[&str] = &[
    "gen_ai.provider.name",
    "gen_ai.system",
    "llm.provider",
    "llm.system",
];
/// `request_model`.
pub const REQUEST_MODEL: &[&str] = &[
    "gen_ai.request.model",
    "llm.request.model_name",
    "llm.model_name",
];
/// `response_model`.
pub const RESPONSE_MODEL: &[&str] = &[
    "gen_ai.response.model",
    "llm.response.model_name",
    "llm.model_name",
];
/// `input_tokens` (OTel semantics: includes cached tokens).
pub const INPUT_TOKENS: &[&str] = &[
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
];
/// `output_tokens` (includes reasoning tokens).
pub const OUTPUT_TOKENS: &[&str] = &[
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
];
/// `cache_read_tokens`.
pub const CACHE_READ_TOKENS: &[&str] = &[
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
];
/// `cache_write_tokens`.
pub const CACHE_WRITE_TOKENS: &[&str] = &[
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
];
/// `reasoning_tokens`.
pub const REASONING_TOKENS: &[&str] = &[
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
];
/// An explicit cost in USD, which wins over the price table.
pub const EXPLICIT_COST_USD: &[&str] =
    &["gen_ai.usage.cost", "llm.cost.total", "runledger.cost.usd"];
/// `agent_name` (falls back to `service.name`).
pub const AGENT_NAME: &[&str] = &["gen_ai.agent.name", "agent.name"];
/// `agent_id`.
pub const AGENT_ID: &[&str] = &["gen_ai.agent.id", "agent.id"];
/// `workflow` (falls back to the root span's name).
pub const WORKFLOW: &[&str] = &["gen_ai.workflow.name", "traceloop.workflow.name"];
/// `conversation_id`.
pub const CONVERSATION_ID: &[&str] = &["gen_ai.conversation.id", "session.id"];
/// `tool_name`.
pub const TOOL_NAME: &[&str] = &["gen_ai.tool.name", "tool.name"];
/// `tool_call_id`.
pub const TOOL_CALL_ID: &[&str] = &["gen_ai.tool.call.id", "tool_call.id"];
/// `customer_id`: the standard keys; deployments add their own (e.g. `customer.id`) in config.
pub const CUSTOMER_ID: &[&str] = &["user.id", "enduser.id"];
/// `error_type`.
pub const ERROR_TYPE: &[&str] = &["error.type", "exception.type"];
/// `service_name` (a resource attribute).
pub const SERVICE_NAME: &str = "service.name";

/// `run_id`: one agent execution, propagated to every tool call (falls back to the trace id).
pub const RUN_ID: &str = "runledger.run.id";
/// `outcome`: success, failure or escalated, set on the run's root span (falls back to the root
/// span's status: ERROR = failure, else success).
pub const RUN_OUTCOME: &str = "runledger.run.outcome";
/// `side_effect`: read or write (falls back to the configured write-tool patterns).
pub const SIDE_EFFECT: &str = "runledger.action.side_effect";
/// `external_ref`: the id of the external side effect (refund, ticket, PR).
pub const ACTION_REF: &str = "runledger.action.ref";
/// `retry_attempt`: 0 for the first try, 1.. for retries.
pub const RETRY_ATTEMPT: &[&str] = &["runledger.retry.attempt", "http.request.resend_count"];
/// `false` when a reviewer (or a later check) marked this action incorrect: it then counts as
/// a failed action even though its status is OK, and `error_type` says so.
pub const ACTION_CORRECT: &str = "runledger.action.correct";
/// The `error_type` of a span marked incorrect by `runledger.action.correct = false`.
pub const INCORRECT_ERROR_TYPE: &str = "runledger.incorrect";
/// Human review time spent on this step, priced at the configured hourly rate.
pub const REVIEW_SECONDS: &str = "runledger.review.seconds";

/// Attributes that carry prompts, completions and tool payloads: large, free text, and where
/// personal data lives. Stored without dictionary encoding, never truncated.
pub const CONTENT: &[&str] = &[
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "input.value",
    "output.value",
];
