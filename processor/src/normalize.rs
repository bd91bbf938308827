//! OTLP spans -> rows of the span table.
//!
//! One pass over each span's attributes: every attribute is copied into the `attributes` map
//! and, when its key is one of the conventions' keys, remembered in a slot with its rank, so
//! that the highest-ranked key present fills the typed column. Resource attributes fill the
//! same slots at a lower precedence than the span's own.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, MapBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use globset::{GlobSet, GlobSetBuilder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prost::Message as _;
use runledger_schemas::{conventions as conv, span_table_schema};
use rustc_hash::FxHashMap;

use crate::anyvalue::{as_i64, attributes_to_json, write_string};
use crate::wire::{self, ResourceSpansView, ScopeSpansView, SpanView, Val, WireError};
use crate::ProcessorConfig;

/// The typed columns that attributes fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Operation,
    Provider,
    RequestModel,
    ResponseModel,
    InputTokens,
    OutputTokens,
    CacheReadTokens,
    CacheWriteTokens,
    ReasoningTokens,
    AgentName,
    AgentId,
    Workflow,
    ConversationId,
    ToolName,
    ToolCallId,
    CustomerId,
    ErrorType,
    RunId,
    Outcome,
    SideEffect,
    ActionRef,
    RetryAttempt,
    ActionCorrect,
    ServiceName,
}
const SLOT_COUNT: usize = Slot::ServiceName as usize + 1;

/// The slots one span (or one resource) fills: for each, the rank of the key that filled it
/// and its value.
type Slots<'a> = [Option<(u8, Val<'a>)>; SLOT_COUNT];

/// The result of normalising one export request.
#[derive(Debug)]
pub struct NormalizedBatch {
    /// The accepted spans as rows of the span table; `None` when no span was accepted.
    pub batch: Option<RecordBatch>,
    /// How many spans were accepted.
    pub accepted_spans: usize,
    /// How many spans were rejected (invalid ids or timestamps).
    pub rejected_spans: usize,
    /// What was wrong with the rejected spans: the first few reasons, and how many more.
    pub error_message: String,
}

/// Normalises export requests into span-table batches. Built once from config, shared by all
/// receivers.
#[derive(Debug)]
pub struct Normalizer {
    /// Attribute key -> the slots it fills, each with the key's rank there (0 = first choice).
    keys: FxHashMap<String, Vec<(Slot, u8)>>,
    write_tools: GlobSet,
}

/// How many rejection reasons an error message lists before it only counts.
const MAX_LISTED_REJECTIONS: usize = 5;

impl Normalizer {
    /// Builds a normaliser. Fails when a configured glob does not compile.
    pub fn new(config: &ProcessorConfig) -> Result<Self, String> {
        config.validate()?;
        let mut keys: FxHashMap<String, Vec<(Slot, u8)>> = FxHashMap::default();
        let mut add = |list: &[&str], slot: Slot| {
            for (rank, key) in list.iter().enumerate() {
                let slots = keys.entry(key.to_string()).or_default();
                if !slots.iter().any(|(s, _)| *s == slot) {
                    slots.push((slot, rank as u8));
                }
            }
        };
        add(conv::OPERATION, Slot::Operation);
        add(conv::PROVIDER, Slot::Provider);
        add(conv::REQUEST_MODEL, Slot::RequestModel);
        add(conv::RESPONSE_MODEL, Slot::ResponseModel);
        add(conv::INPUT_TOKENS, Slot::InputTokens);
        add(conv::OUTPUT_TOKENS, Slot::OutputTokens);
        add(conv::CACHE_READ_TOKENS, Slot::CacheReadTokens);
        add(conv::CACHE_WRITE_TOKENS, Slot::CacheWriteTokens);
        add(conv::REASONING_TOKENS, Slot::ReasoningTokens);
        add(conv::AGENT_NAME, Slot::AgentName);
        add(conv::AGENT_ID, Slot::AgentId);
        add(conv::WORKFLOW, Slot::Workflow);
        add(conv::CONVERSATION_ID, Slot::ConversationId);
        add(conv::TOOL_NAME, Slot::ToolName);
        add(conv::TOOL_CALL_ID, Slot::ToolCallId);
        add(conv::ERROR_TYPE, Slot::ErrorType);
        add(&[conv::RUN_ID], Slot::RunId);
        add(&[conv::RUN_OUTCOME], Slot::Outcome);
        add(&[conv::SIDE_EFFECT], Slot::SideEffect);
        add(&[conv::ACTION_REF], Slot::ActionRef);
        add(conv::RETRY_ATTEMPT, Slot::RetryAttempt);
        add(&[conv::ACTION_CORRECT], Slot::ActionCorrect);
        add(&[conv::SERVICE_NAME], Slot::ServiceName);
        let customer_keys: Vec<&str> = conv::CUSTOMER_ID
            .iter()
            .copied()
            .chain(config.customer_id_keys.iter().map(String::as_str))
            .collect();
        add(&customer_keys, Slot::CustomerId);
        let mut write_tools = GlobSetBuilder::new();
        for pattern in &config.write_tools {
            write_tools.add(globset::Glob::new(pattern).map_err(|e| e.to_string())?);
        }
        Ok(Self {
            keys,
            write_tools: write_tools.build().map_err(|e| e.to_string())?,
        })
    }

    /// Normalises every valid span of a decoded request; invalid spans are counted and
    /// described. (The collector reads requests in place with `normalize_wire`; this form
    /// serves OTLP/JSON, which arrives decoded, and tests.)
    pub fn normalize(
        &self,
        request: &ExportTraceServiceRequest,
        received_at: SystemTime,
    ) -> NormalizedBatch {
        self.normalize_wire(&request.encode_to_vec(), received_at)
            .expect("an encoded request is valid protobuf")
    }

    /// Normalises every valid span of an `ExportTraceServiceRequest` in its protobuf wire
    /// form, read in place; invalid spans are counted and described. Fails, storing nothing,
    /// when the bytes are not a valid request.
    pub fn normalize_wire(
        &self,
        request: &[u8],
        received_at: SystemTime,
    ) -> Result<NormalizedBatch, WireError> {
        // The resources and scopes are read first (their spans stay encoded), which counts
        // the spans for the builders' capacity.
        let mut resources = Vec::new();
        for encoded in wire::resource_spans(request)? {
            let resource = ResourceSpansView::read(encoded)?;
            let scopes = resource
                .scope_spans
                .iter()
                .map(|encoded| ScopeSpansView::read(encoded))
                .collect::<Result<Vec<_>, _>>()?;
            resources.push((resource.attributes, scopes));
        }
        let span_count = resources
            .iter()
            .flat_map(|(_, scopes)| scopes)
            .map(|scope| scope.spans.len())
            .sum();
        let mut columns = Columns::with_capacity(span_count);
        let received_at_us = received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mut rejected = Vec::new();
        let mut rejected_spans = 0usize;
        let mut accepted_spans = 0usize;
        let mut scratch = Scratch::default();
        let mut span = SpanView::default();

        for (ri, (resource_attributes, scopes)) in resources.iter().enumerate() {
            let mut resource_slots: Slots = [None; SLOT_COUNT];
            let mut resource_map = Vec::with_capacity(resource_attributes.len());
            for &(key, value) in resource_attributes {
                self.fill_slot(&mut resource_slots, key, value);
                let mut text = String::new();
                write_string(value, &mut text);
                resource_map.push((key, text));
            }
            for (si, scope) in scopes.iter().enumerate() {
                let scope_map: Vec<(&str, String)> = scope
                    .attributes
                    .iter()
                    .map(|&(key, value)| {
                        let mut text = String::new();
                        write_string(value, &mut text);
                        (key, text)
                    })
                    .collect();
                for (pi, encoded) in scope.spans.iter().enumerate() {
                    span.read(encoded)?;
                    if let Err(reason) = validate(&span) {
                        rejected_spans += 1;
                        if rejected.len() < MAX_LISTED_REJECTIONS {
                            rejected.push(format!(
                                "resource_spans[{ri}].scope_spans[{si}].spans[{pi}]: {reason}"
                            ));
                        }
                        continue;
                    }
                    accepted_spans += 1;
                    columns.resource_attributes_from(&resource_map);
                    columns.scope_attributes_from(&scope_map);
                    columns.scope(
                        scope.has_scope.then_some(scope.name),
                        scope.has_scope.then_some(scope.version),
                    );
                    self.append_span(&mut columns, &mut scratch, &span, &resource_slots);
                    columns.received_at.append_value(received_at_us);
                }
            }
        }

        let mut error_message = rejected.join("; ");
        if rejected_spans > rejected.len() {
            error_message.push_str(&format!(
                "; and {} more rejected spans",
                rejected_spans - rejected.len()
            ));
        }
        Ok(NormalizedBatch {
            batch: (accepted_spans > 0).then(|| columns.finish()),
            accepted_spans,
            rejected_spans,
            error_message,
        })
    }

    fn fill_slot<'a>(&self, slots: &mut Slots<'a>, key: &str, value: Option<Val<'a>>) {
        let Some(value) = value else {
            return;
        };
        for &(slot, rank) in self.keys.get(key).into_iter().flatten() {
            let entry = &mut slots[slot as usize];
            if entry.is_none_or(|(r, _)| rank < r) {
                *entry = Some((rank, value));
            }
        }
    }

    fn append_span<'a>(
        &self,
        c: &mut Columns,
        scratch: &mut Scratch,
        span: &SpanView<'a>,
        resource: &Slots<'a>,
    ) {
        let mut slots: Slots = [None; SLOT_COUNT];
        for &(key, value) in &span.attributes {
            self.fill_slot(&mut slots, key, value);
            c.attributes.keys().append_value(key);
            match value {
                Some(Val::Str(text)) => c.attributes.values().append_value(text),
                _ => {
                    scratch.value.clear();
                    write_string(value, &mut scratch.value);
                    c.attributes.values().append_value(&scratch.value);
                }
            }
        }
        c.attributes.append(true).expect("map entries are balanced");

        let get = |slot: Slot| -> Option<Val<'a>> {
            slots[slot as usize]
                .or(resource[slot as usize])
                .map(|(_, v)| v)
        };

        // Ids are validated to 16 and 8 bytes: hex them on the stack.
        let mut trace_hex = [0u8; 32];
        let trace_id = hex_str(span.trace_id, &mut trace_hex);
        let is_root = span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|b| *b == 0);
        match get(Slot::RunId) {
            Some(v) => append_any_str(&mut c.run_id, Some(v), &mut scratch.value),
            None => c.run_id.append_value(trace_id),
        }
        c.trace_id.append_value(trace_id);
        let mut span_hex = [0u8; 16];
        c.span_id.append_value(hex_str(span.span_id, &mut span_hex));
        if is_root {
            c.parent_span_id.append_null();
        } else {
            let mut parent_hex = [0u8; 16];
            c.parent_span_id
                .append_value(hex_str(span.parent_span_id, &mut parent_hex));
        }
        let start_us = (span.start_time_unix_nano / 1_000) as i64;
        c.start_time.append_value(start_us);
        c.end_time
            .append_value((span.end_time_unix_nano / 1_000) as i64);
        c.duration_ns
            .append_value((span.end_time_unix_nano - span.start_time_unix_nano) as i64);
        c.name.append_value(span.name);
        c.kind.append_value(kind_name(span.kind));
        let status_code = span.status_code;
        let is_error = status_code == StatusCode::Error as i32;
        c.status_code
            .append_value(match StatusCode::try_from(status_code) {
                Ok(StatusCode::Ok) => "ok",
                Ok(StatusCode::Error) => "error",
                _ => "unset",
            });
        match span.status_message {
            "" => c.status_message.append_null(),
            m => c.status_message.append_value(m),
        }
        let marked_incorrect = match get(Slot::ActionCorrect) {
            Some(Val::Bool(correct)) => !correct,
            Some(Val::Str(s)) => s.eq_ignore_ascii_case("false"),
            _ => false,
        };
        match get(Slot::ErrorType) {
            Some(v) => append_any_str(&mut c.error_type, Some(v), &mut scratch.value),
            None if marked_incorrect => c.error_type.append_value(conv::INCORRECT_ERROR_TYPE),
            None => {
                let from_event = span
                    .events
                    .iter()
                    .filter(|e| e.name == "exception")
                    .flat_map(|e| &e.attributes)
                    .find(|(key, _)| *key == "exception.type")
                    .and_then(|&(_, value)| value);
                append_any_str(&mut c.error_type, from_event, &mut scratch.value)
            }
        }
        let service_name = resource[Slot::ServiceName as usize].map(|(_, v)| v);
        append_any_str(&mut c.service_name, service_name, &mut scratch.value);
        append_any_str(
            &mut c.agent_name,
            get(Slot::AgentName).or(service_name),
            &mut scratch.value,
        );
        append_any_str(&mut c.agent_id, get(Slot::AgentId), &mut scratch.value);
        match get(Slot::Workflow) {
            Some(v) => append_any_str(&mut c.workflow, Some(v), &mut scratch.value),
            None if is_root => c.workflow.append_value(span.name),
            None => c.workflow.append_null(),
        }
        append_any_str(
            &mut c.customer_id,
            get(Slot::CustomerId),
            &mut scratch.value,
        );
        append_any_str(
            &mut c.conversation_id,
            get(Slot::ConversationId),
            &mut scratch.value,
        );
        let operation = get(Slot::Operation).map(|v| {
            scratch.value.clear();
            write_string(Some(v), &mut scratch.value);
            normalize_operation(&scratch.value)
        });
        match &operation {
            Some(op) => c.operation.append_value(op),
            None => c.operation.append_null(),
        }
        append_any_str(&mut c.provider, get(Slot::Provider), &mut scratch.value);
        append_any_str(
            &mut c.request_model,
            get(Slot::RequestModel),
            &mut scratch.value,
        );
        append_any_str(
            &mut c.response_model,
            get(Slot::ResponseModel),
            &mut scratch.value,
        );
        let tool_name = get(Slot::ToolName).map(|v| {
            let mut s = String::new();
            write_string(Some(v), &mut s);
            s
        });
        match &tool_name {
            Some(t) => c.tool_name.append_value(t),
            None => c.tool_name.append_null(),
        }
        append_any_str(
            &mut c.tool_call_id,
            get(Slot::ToolCallId),
            &mut scratch.value,
        );
        match get(Slot::SideEffect) {
            Some(v) => {
                scratch.value.clear();
                write_string(Some(v), &mut scratch.value);
                scratch.value.make_ascii_lowercase();
                c.side_effect.append_value(&scratch.value);
            }
            None => match &tool_name {
                Some(t) if self.write_tools.is_match(t) => c.side_effect.append_value("write"),
                Some(_) => c.side_effect.append_null(),
                None if operation.as_deref() == Some("execute_tool") => c.side_effect.append_null(),
                None => c.side_effect.append_value("none"),
            },
        }
        append_any_str(
            &mut c.external_ref,
            get(Slot::ActionRef),
            &mut scratch.value,
        );
        c.retry_attempt.append_option(
            as_i64(get(Slot::RetryAttempt)).map(|v| v.clamp(0, i32::MAX as i64) as i32),
        );
        match get(Slot::Outcome) {
            Some(v) => {
                scratch.value.clear();
                write_string(Some(v), &mut scratch.value);
                scratch.value.make_ascii_lowercase();
                c.outcome.append_value(&scratch.value);
            }
            None if is_root => c
                .outcome
                .append_value(if is_error { "failure" } else { "success" }),
            None => c.outcome.append_null(),
        }
        c.input_tokens.append_option(as_i64(get(Slot::InputTokens)));
        c.output_tokens
            .append_option(as_i64(get(Slot::OutputTokens)));
        c.cache_read_tokens
            .append_option(as_i64(get(Slot::CacheReadTokens)));
        c.cache_write_tokens
            .append_option(as_i64(get(Slot::CacheWriteTokens)));
        c.reasoning_tokens
            .append_option(as_i64(get(Slot::ReasoningTokens)));
        // Costs are computed at flush time from the price table.
        c.cost_inference_usd.append_null();
        c.cost_tool_usd.append_null();
        c.cost_review_usd.append_null();
        c.price_version.append_null();

        if span.events.is_empty() {
            c.events.append_null();
        } else {
            let events: Vec<serde_json::Value> = span
                .events
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "time_unix_nano": e.time_unix_nano.to_string(),
                        "name": e.name,
                        "attributes": attributes_to_json(&e.attributes),
                    })
                })
                .collect();
            c.events
                .append_value(serde_json::Value::Array(events).to_string());
        }
        if span.links.is_empty() {
            c.links.append_null();
        } else {
            let links: Vec<serde_json::Value> = span
                .links
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "trace_id": hex::encode(l.trace_id),
                        "span_id": hex::encode(l.span_id),
                        "trace_state": l.trace_state,
                        "attributes": attributes_to_json(&l.attributes),
                    })
                })
                .collect();
            c.links
                .append_value(serde_json::Value::Array(links).to_string());
        }
        c.partition(span.start_time_unix_nano);
    }
}

/// Lowercase hex of `bytes` in `out`, which is exactly twice as long.
fn hex_str<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    hex::encode_to_slice(bytes, out).expect("ids are validated to their length");
    std::str::from_utf8(out).expect("hex is ASCII")
}

/// Why a span cannot be stored, or `Ok`.
fn validate(span: &SpanView) -> Result<(), String> {
    if span.trace_id.len() != 16 {
        return Err(format!(
            "trace_id must be 16 bytes, got {}",
            span.trace_id.len()
        ));
    }
    if span.trace_id.iter().all(|b| *b == 0) {
        return Err("trace_id is all zeros".into());
    }
    if span.span_id.len() != 8 {
        return Err(format!(
            "span_id must be 8 bytes, got {}",
            span.span_id.len()
        ));
    }
    if span.span_id.iter().all(|b| *b == 0) {
        return Err("span_id is all zeros".into());
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!(
            "parent_span_id must be empty or 8 bytes, got {}",
            span.parent_span_id.len()
        ));
    }
    if span.start_time_unix_nano == 0 {
        return Err("start_time_unix_nano is missing".into());
    }
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(format!(
            "end_time_unix_nano {} is before start_time_unix_nano {}",
            span.end_time_unix_nano, span.start_time_unix_nano
        ));
    }
    // Past 2262 a nanosecond count no longer fits the signed 64 bits of every engine.
    if span.end_time_unix_nano > i64::MAX as u64 {
        return Err("end_time_unix_nano is after the year 2262".into());
    }
    Ok(())
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

/// Maps the span kinds of OpenInference, Traceloop and `llm.request.type` onto GenAI operation
/// names; GenAI names pass through.
fn normalize_operation(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    match lower.as_str() {
        "llm" | "chat" => "chat",
        "completion" => "text_completion",
        "embedding" => "embeddings",
        "tool" => "execute_tool",
        "agent" => "invoke_agent",
        "retriever" => "retrieval",
        _ => return lower,
    }
    .to_string()
}

fn append_any_str(builder: &mut StringBuilder, value: Option<Val<'_>>, scratch: &mut String) {
    match value {
        Some(Val::Str(s)) => builder.append_value(s),
        Some(_) => {
            scratch.clear();
            write_string(value, scratch);
            builder.append_value(&*scratch);
        }
        None => builder.append_null(),
    }
}

#[derive(Default)]
struct Scratch {
    value: String,
}

/// Column builders in the order of the span-table schema.
struct Columns {
    run_id: StringBuilder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    start_time: TimestampMicrosecondBuilder,
    end_time: TimestampMicrosecondBuilder,
    duration_ns: Int64Builder,
    name: StringBuilder,
    kind: StringBuilder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    error_type: StringBuilder,
    service_name: StringBuilder,
    agent_name: StringBuilder,
    agent_id: StringBuilder,
    workflow: StringBuilder,
    customer_id: StringBuilder,
    conversation_id: StringBuilder,
    operation: StringBuilder,
    provider: StringBuilder,
    request_model: StringBuilder,
    response_model: StringBuilder,
    tool_name: StringBuilder,
    tool_call_id: StringBuilder,
    side_effect: StringBuilder,
    external_ref: StringBuilder,
    retry_attempt: Int32Builder,
    outcome: StringBuilder,
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    cache_read_tokens: Int64Builder,
    cache_write_tokens: Int64Builder,
    reasoning_tokens: Int64Builder,
    cost_inference_usd: Float64Builder,
    cost_tool_usd: Float64Builder,
    cost_review_usd: Float64Builder,
    price_version: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    attributes: MapBuilder<StringBuilder, StringBuilder>,
    resource_attributes: MapBuilder<StringBuilder, StringBuilder>,
    scope_attributes: MapBuilder<StringBuilder, StringBuilder>,
    events: StringBuilder,
    links: StringBuilder,
    received_at: TimestampMicrosecondBuilder,
    date: StringBuilder,
    hour: StringBuilder,
    /// The hour (since the epoch) whose `date` and `hour` strings were formatted last.
    last_hour: Option<(u64, String, String)>,
}

/// A map builder sized for `spans` rows of about `entries` entries of `value_bytes` each, so
/// that the buffers are not copied again and again as they grow.
fn map_builder(
    spans: usize,
    entries: usize,
    value_bytes: usize,
) -> MapBuilder<StringBuilder, StringBuilder> {
    let items = spans * entries;
    MapBuilder::with_capacity(
        Some(crate::map_field_names()),
        StringBuilder::with_capacity(items, items * 24),
        StringBuilder::with_capacity(items, items * value_bytes),
        spans,
    )
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        let s = || StringBuilder::with_capacity(n, n * 8);
        let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        Self {
            run_id: s(),
            trace_id: StringBuilder::with_capacity(n, n * 32),
            span_id: StringBuilder::with_capacity(n, n * 16),
            parent_span_id: StringBuilder::with_capacity(n, n * 16),
            start_time: ts(),
            end_time: ts(),
            duration_ns: Int64Builder::with_capacity(n),
            name: s(),
            kind: s(),
            status_code: s(),
            status_message: s(),
            error_type: s(),
            service_name: s(),
            agent_name: s(),
            agent_id: s(),
            workflow: s(),
            customer_id: s(),
            conversation_id: s(),
            operation: s(),
            provider: s(),
            request_model: s(),
            response_model: s(),
            tool_name: s(),
            tool_call_id: s(),
            side_effect: s(),
            external_ref: s(),
            retry_attempt: Int32Builder::with_capacity(n),
            outcome: s(),
            input_tokens: Int64Builder::with_capacity(n),
            output_tokens: Int64Builder::with_capacity(n),
            cache_read_tokens: Int64Builder::with_capacity(n),
            cache_write_tokens: Int64Builder::with_capacity(n),
            reasoning_tokens: Int64Builder::with_capacity(n),
            cost_inference_usd: Float64Builder::with_capacity(n),
            cost_tool_usd: Float64Builder::with_capacity(n),
            cost_review_usd: Float64Builder::with_capacity(n),
            price_version: s(),
            scope_name: s(),
            scope_version: s(),
            attributes: map_builder(n, 12, 64),
            resource_attributes: map_builder(n, 6, 16),
            scope_attributes: map_builder(n, 0, 16),
            events: s(),
            links: s(),
            received_at: ts(),
            date: s(),
            hour: s(),
            last_hour: None,
        }
    }

    fn resource_attributes_from(&mut self, entries: &[(&str, String)]) {
        for (k, v) in entries {
            self.resource_attributes.keys().append_value(k);
            self.resource_attributes.values().append_value(v);
        }
        self.resource_attributes
            .append(true)
            .expect("map entries are balanced");
    }

    fn scope_attributes_from(&mut self, entries: &[(&str, String)]) {
        for (k, v) in entries {
            self.scope_attributes.keys().append_value(k);
            self.scope_attributes.values().append_value(v);
        }
        self.scope_attributes
            .append(true)
            .expect("map entries are balanced");
    }

    fn scope(&mut self, name: Option<&str>, version: Option<&str>) {
        self.scope_name
            .append_option(name.filter(|s| !s.is_empty()));
        self.scope_version
            .append_option(version.filter(|s| !s.is_empty()));
    }

    fn partition(&mut self, start_unix_nano: u64) {
        let hour_index = start_unix_nano / 3_600_000_000_000;
        if self.last_hour.as_ref().map(|(h, _, _)| *h) != Some(hour_index) {
            let secs = (hour_index * 3600) as i64;
            let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
            self.last_hour = Some((
                hour_index,
                t.format(runledger_schemas::PARTITION_DATE_FORMAT)
                    .to_string(),
                t.format(runledger_schemas::PARTITION_HOUR_FORMAT)
                    .to_string(),
            ));
        }
        let (_, date, hour) = self.last_hour.as_ref().expect("set above");
        self.date.append_value(date);
        self.hour.append_value(hour);
    }

    fn finish(mut self) -> RecordBatch {
        let rows = arrow::array::ArrayBuilder::len(&self.date);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.run_id.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ns.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.error_type.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.agent_name.finish()),
            Arc::new(self.agent_id.finish()),
            Arc::new(self.workflow.finish()),
            Arc::new(self.customer_id.finish()),
            Arc::new(self.conversation_id.finish()),
            Arc::new(self.operation.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.request_model.finish()),
            Arc::new(self.response_model.finish()),
            Arc::new(self.tool_name.finish()),
            Arc::new(self.tool_call_id.finish()),
            Arc::new(self.side_effect.finish()),
            Arc::new(self.external_ref.finish()),
            Arc::new(self.retry_attempt.finish()),
            Arc::new(self.outcome.finish()),
            Arc::new(self.input_tokens.finish()),
            Arc::new(self.output_tokens.finish()),
            Arc::new(self.cache_read_tokens.finish()),
            Arc::new(self.cache_write_tokens.finish()),
            Arc::new(self.reasoning_tokens.finish()),
            Arc::new(self.cost_inference_usd.finish()),
            Arc::new(self.cost_tool_usd.finish()),
            Arc::new(self.cost_review_usd.finish()),
            Arc::new(self.price_version.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.resource_attributes.finish()),
            Arc::new(self.scope_attributes.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
            // Filled by the redaction stage, in the redacted tier only.
            arrow::array::new_null_array(&runledger_schemas::redaction_summary_type(), rows),
            Arc::new(self.received_at.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.hour.finish()),
        ];
        RecordBatch::try_new(span_table_schema(), columns)
            .expect("the builders follow the span-table schema")
    }
}

#[cfg(test)]
mod tests;
