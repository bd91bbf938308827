//! The OTLP trace protobuf, read in place.
//!
//! Decoding an export request into the generated structs allocates and copies every string
//! (attribute keys and values, names, ids), only for the normaliser to copy them once more into
//! Arrow builders and drop the structs: on the collector that was about a fifth of its CPU.
//! This module walks the wire format instead and hands out borrowed views (`&str` and `&[u8]`
//! into the request's buffer), so that a string is copied once, into its column.
//!
//! It is as strict as the generated decoder on what the span table stores: a truncated
//! message, a known field with the wrong wire type or a string that is not UTF-8 makes the
//! whole request malformed. Unknown fields are skipped, as protobuf requires.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`.

use opentelemetry_proto::tonic::common::v1::EntityRef;
use prost::Message as _;

/// Why a request is not valid protobuf of the OTLP trace schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf: {0}")]
pub struct WireError(String);

impl WireError {
    fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

type Result<T> = std::result::Result<T, WireError>;

/// One field's payload, by wire type.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    break;
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(WireError::new(format!("{}: invalid varint", self.message)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(WireError::new(format!(
                "{}: field of {n} bytes runs past the end of the message",
                self.message
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next field, or `None` at the end of the message. Groups (deprecated, never used
    /// by OTLP) are skipped whole.
    fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let number = key >> 3;
            if number == 0 || number > u64::from(u32::MAX >> 3) {
                return Err(WireError::new(format!(
                    "{}: invalid field number {number}",
                    self.message
                )));
            }
            let field = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => Field::Fixed64(u64::from_le_bytes(
                    self.take(8)?.try_into().expect("8 bytes"),
                )),
                2 => {
                    let len = self.varint()?;
                    let len = usize::try_from(len).map_err(|_| {
                        WireError::new(format!("{}: length {len} is too large", self.message))
                    })?;
                    Field::Len(self.take(len)?)
                }
                3 => {
                    self.skip_group(number)?;
                    continue;
                }
                5 => Field::Fixed32(u32::from_le_bytes(
                    self.take(4)?.try_into().expect("4 bytes"),
                )),
                other => {
                    return Err(WireError::new(format!(
                        "{}: invalid wire type {other}",
                        self.message
                    )))
                }
            };
            return Ok(Some((number as u32, field)));
        }
    }

    fn skip_group(&mut self, number: u64) -> Result<()> {
        loop {
            if self.buf.is_empty() {
                return Err(WireError::new(format!(
                    "{}: unterminated group",
                    self.message
                )));
            }
            let key = self.varint()?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len = self.varint()? as usize;
                    self.take(len)?;
                }
                3 => self.skip_group(key >> 3)?,
                4 if key >> 3 == number => return Ok(()),
                5 => {
                    self.take(4)?;
                }
                _ => {
                    return Err(WireError::new(format!(
                        "{}: invalid group end",
                        self.message
                    )))
                }
            }
        }
    }

    fn wrong_type(&self, number: u32) -> WireError {
        WireError::new(format!(
            "{}: field {number} has the wrong wire type",
            self.message
        ))
    }

    fn len(&self, number: u32, field: Field<'a>) -> Result<&'a [u8]> {
        match field {
            Field::Len(bytes) => Ok(bytes),
            _ => Err(self.wrong_type(number)),
        }
    }

    fn string(&self, number: u32, field: Field<'a>) -> Result<&'a str> {
        let bytes = self.len(number, field)?;
        simdutf8::basic::from_utf8(bytes).map_err(|_| {
            WireError::new(format!(
                "{}: field {number} is not valid UTF-8",
                self.message
            ))
        })
    }

    fn uint(&self, number: u32, field: Field<'a>) -> Result<u64> {
        match field {
            Field::Varint(v) => Ok(v),
            _ => Err(self.wrong_type(number)),
        }
    }

    fn fixed64(&self, number: u32, field: Field<'a>) -> Result<u64> {
        match field {
            Field::Fixed64(v) => Ok(v),
            _ => Err(self.wrong_type(number)),
        }
    }

    fn fixed32(&self, number: u32, field: Field<'a>) -> Result<u32> {
        match field {
            Field::Fixed32(v) => Ok(v),
            _ => Err(self.wrong_type(number)),
        }
    }
}

/// An attribute value, borrowed. Arrays and key-value lists stay encoded (they were
/// validated when read) and are expanded only when written out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Val<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(&'a [u8]),
    Kvlist(&'a [u8]),
    /// An index into a profiles string table: meaningless in traces, kept as a number.
    Strindex(i32),
}

/// A key and its value; `None` when the value (or its oneof) is absent.
pub(crate) type Kv<'a> = (&'a str, Option<Val<'a>>);

/// Reads an `AnyValue`. The last member of the oneof on the wire wins.
pub(crate) fn any_value(buf: &[u8]) -> Result<Option<Val<'_>>> {
    let mut fields = Fields::new(buf, "AnyValue");
    let mut value = None;
    while let Some((n, f)) = fields.next_field()? {
        value = Some(match n {
            1 => Val::Str(fields.string(n, f)?),
            2 => Val::Bool(fields.uint(n, f)? != 0),
            3 => Val::Int(fields.uint(n, f)? as i64),
            4 => Val::Double(f64::from_bits(fields.fixed64(n, f)?)),
            5 => {
                let bytes = fields.len(n, f)?;
                for_each_array_item(bytes, |_| Ok(()))?;
                Val::Array(bytes)
            }
            6 => {
                let bytes = fields.len(n, f)?;
                for_each_kvlist_entry(bytes, |_| Ok(()))?;
                Val::Kvlist(bytes)
            }
            7 => Val::Bytes(fields.len(n, f)?),
            8 => Val::Strindex(fields.uint(n, f)? as i32),
            _ => continue,
        });
    }
    Ok(value)
}

/// Reads a `KeyValue`.
pub(crate) fn key_value(buf: &[u8]) -> Result<Kv<'_>> {
    let mut fields = Fields::new(buf, "KeyValue");
    let mut key = "";
    let mut value = None;
    while let Some((n, f)) = fields.next_field()? {
        match n {
            1 => key = fields.string(n, f)?,
            2 => value = any_value(fields.len(n, f)?)?,
            3 => {
                fields.uint(n, f)?;
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// Calls `each` with every value of an encoded `ArrayValue`.
pub(crate) fn for_each_array_item<'a>(
    buf: &'a [u8],
    mut each: impl FnMut(Option<Val<'a>>) -> Result<()>,
) -> Result<()> {
    let mut fields = Fields::new(buf, "ArrayValue");
    while let Some((n, f)) = fields.next_field()? {
        if n == 1 {
            each(any_value(fields.len(n, f)?)?)?;
        }
    }
    Ok(())
}

/// Calls `each` with every entry of an encoded `KeyValueList`.
pub(crate) fn for_each_kvlist_entry<'a>(
    buf: &'a [u8],
    mut each: impl FnMut(Kv<'a>) -> Result<()>,
) -> Result<()> {
    let mut fields = Fields::new(buf, "KeyValueList");
    while let Some((n, f)) = fields.next_field()? {
        if n == 1 {
            each(key_value(fields.len(n, f)?)?)?;
        }
    }
    Ok(())
}

/// The encoded `ResourceSpans` of an `ExportTraceServiceRequest`.
pub(crate) fn resource_spans(request: &[u8]) -> Result<Vec<&[u8]>> {
    let mut fields = Fields::new(request, "ExportTraceServiceRequest");
    let mut out = Vec::new();
    while let Some((n, f)) = fields.next_field()? {
        if n == 1 {
            out.push(fields.len(n, f)?);
        }
    }
    Ok(out)
}

/// A `ResourceSpans`: the resource's attributes and its encoded `ScopeSpans`.
#[derive(Debug)]
pub(crate) struct ResourceSpansView<'a> {
    pub attributes: Vec<Kv<'a>>,
    pub scope_spans: Vec<&'a [u8]>,
}

impl<'a> ResourceSpansView<'a> {
    pub(crate) fn read(buf: &'a [u8]) -> Result<Self> {
        let mut attributes = Vec::new();
        let scope_spans = read_container(buf, "ResourceSpans", |resource| {
            // A message field repeated on the wire merges: its attributes add up.
            let mut resource = Fields::new(resource, "Resource");
            while let Some((n, f)) = resource.next_field()? {
                match n {
                    1 => attributes.push(key_value(resource.len(n, f)?)?),
                    2 => {
                        resource.uint(n, f)?;
                    }
                    3 => {
                        EntityRef::decode(resource.len(n, f)?)
                            .map_err(|e| WireError::new(format!("Resource.entity_refs: {e}")))?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })?;
        Ok(Self {
            attributes,
            scope_spans,
        })
    }
}

/// The shape that `ResourceSpans` and `ScopeSpans` share: field 1, a message (the resource,
/// the scope) handed to `first` each time it occurs; field 2, the repeated children, returned
/// encoded; field 3, the schema URL, only checked to be UTF-8.
fn read_container<'a>(
    buf: &'a [u8],
    message: &'static str,
    mut first: impl FnMut(&'a [u8]) -> Result<()>,
) -> Result<Vec<&'a [u8]>> {
    let mut children = Vec::new();
    let mut fields = Fields::new(buf, message);
    while let Some((n, f)) = fields.next_field()? {
        match n {
            1 => first(fields.len(n, f)?)?,
            2 => children.push(fields.len(n, f)?),
            3 => {
                fields.string(n, f)?;
            }
            _ => {}
        }
    }
    Ok(children)
}

/// A `ScopeSpans`: its instrumentation scope, if present, and its encoded spans.
#[derive(Debug, Default)]
pub(crate) struct ScopeSpansView<'a> {
    /// Whether the message carries a scope at all.
    pub has_scope: bool,
    pub name: &'a str,
    pub version: &'a str,
    pub attributes: Vec<Kv<'a>>,
    pub spans: Vec<&'a [u8]>,
}

impl<'a> ScopeSpansView<'a> {
    pub(crate) fn read(buf: &'a [u8]) -> Result<Self> {
        let (mut has_scope, mut name, mut version) = (false, "", "");
        let mut attributes = Vec::new();
        let spans = read_container(buf, "ScopeSpans", |scope| {
            has_scope = true;
            let mut scope = Fields::new(scope, "InstrumentationScope");
            while let Some((n, f)) = scope.next_field()? {
                match n {
                    1 => name = scope.string(n, f)?,
                    2 => version = scope.string(n, f)?,
                    3 => attributes.push(key_value(scope.len(n, f)?)?),
                    4 => {
                        scope.uint(n, f)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })?;
        Ok(Self {
            has_scope,
            name,
            version,
            attributes,
            spans,
        })
    }
}

/// A `Span`, borrowed. Reused from span to span: `read` clears it first.
#[derive(Debug, Default)]
pub(crate) struct SpanView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// The status code (`Unset` = 0 when there is no status).
    pub status_code: i32,
    pub status_message: &'a str,
    pub attributes: Vec<Kv<'a>>,
    pub events: Vec<EventView<'a>>,
    pub links: Vec<LinkView<'a>>,
}

impl<'a> SpanView<'a> {
    pub(crate) fn read(&mut self, buf: &'a [u8]) -> Result<()> {
        self.trace_id = &[];
        self.span_id = &[];
        self.parent_span_id = &[];
        self.name = "";
        self.kind = 0;
        self.start_time_unix_nano = 0;
        self.end_time_unix_nano = 0;
        self.status_code = 0;
        self.status_message = "";
        self.attributes.clear();
        self.events.clear();
        self.links.clear();
        let mut fields = Fields::new(buf, "Span");
        while let Some((n, f)) = fields.next_field()? {
            match n {
                1 => self.trace_id = fields.len(n, f)?,
                2 => self.span_id = fields.len(n, f)?,
                3 => {
                    fields.string(n, f)?;
                }
                4 => self.parent_span_id = fields.len(n, f)?,
                5 => self.name = fields.string(n, f)?,
                6 => self.kind = fields.uint(n, f)? as i32,
                7 => self.start_time_unix_nano = fields.fixed64(n, f)?,
                8 => self.end_time_unix_nano = fields.fixed64(n, f)?,
                9 => self.attributes.push(key_value(fields.len(n, f)?)?),
                10 | 12 | 14 => {
                    fields.uint(n, f)?;
                }
                11 => self.events.push(EventView::read(fields.len(n, f)?)?),
                13 => self.links.push(LinkView::read(fields.len(n, f)?)?),
                15 => {
                    let mut status = Fields::new(fields.len(n, f)?, "Status");
                    while let Some((n, f)) = status.next_field()? {
                        match n {
                            2 => self.status_message = status.string(n, f)?,
                            3 => self.status_code = status.uint(n, f)? as i32,
                            _ => {}
                        }
                    }
                }
                16 => {
                    fields.fixed32(n, f)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A span's `Event`, borrowed.
#[derive(Debug, Default)]
pub(crate) struct EventView<'a> {
    pub time_unix_nano: u64,
    pub name: &'a str,
    pub attributes: Vec<Kv<'a>>,
}

impl<'a> EventView<'a> {
    fn read(buf: &'a [u8]) -> Result<Self> {
        let mut view = Self::default();
        let mut fields = Fields::new(buf, "Span.Event");
        while let Some((n, f)) = fields.next_field()? {
            match n {
                1 => view.time_unix_nano = fields.fixed64(n, f)?,
                2 => view.name = fields.string(n, f)?,
                3 => view.attributes.push(key_value(fields.len(n, f)?)?),
                4 => {
                    fields.uint(n, f)?;
                }
                _ => {}
            }
        }
        Ok(view)
    }
}

/// A span's `Link`, borrowed.
#[derive(Debug, Default)]
pub(crate) struct LinkView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub trace_state: &'a str,
    pub attributes: Vec<Kv<'a>>,
}

impl<'a> LinkView<'a> {
    fn read(buf: &'a [u8]) -> Result<Self> {
        let mut view = Self::default();
        let mut fields = Fields::new(buf, "Span.Link");
        while let Some((n, f)) = fields.next_field()? {
            match n {
                1 => view.trace_id = fields.len(n, f)?,
                2 => view.span_id = fields.len(n, f)?,
                3 => view.trace_state = fields.string(n, f)?,
                4 => view.attributes.push(key_value(fields.len(n, f)?)?),
                5 => {
                    fields.uint(n, f)?;
                }
                6 => {
                    fields.fixed32(n, f)?;
                }
                _ => {}
            }
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests;
