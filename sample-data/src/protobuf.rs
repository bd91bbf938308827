//! A protobuf writer for the generator, which encodes its OTLP requests as it draws them.
//!
//! The generator is the load generator of the benchmarks and runs on the same cores as the
//! collector it measures: every microsecond it spends per span is taken from the collector.
//! Building the request as `opentelemetry-proto` structs cost a heap allocation per key and
//! per value, a pass to size every message, a pass to encode it and one more to free it all.
//! Writing the wire format directly costs one append per field.
//!
//! A nested message's length is known only once it is written: [`ProtoWriter::begin`]
//! leaves one byte for it, which is enough below 128 bytes (most attributes), and
//! [`ProtoWriter::end`] moves the body up when the length needs more. The output is canonical
//! protobuf, what `prost` encodes for the same fields in field-number order (a test checks
//! it by decoding and re-encoding).

use std::io::Write as _;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// Fields of the OTLP messages that the generator writes, by message.
pub(crate) mod field {
    pub(crate) const REQUEST_RESOURCE_SPANS: u32 = 1;
    pub(crate) const RESOURCE_SPANS_RESOURCE: u32 = 1;
    pub(crate) const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
    pub(crate) const RESOURCE_ATTRIBUTES: u32 = 1;
    pub(crate) const SCOPE_SPANS_SCOPE: u32 = 1;
    pub(crate) const SCOPE_SPANS_SPANS: u32 = 2;
    pub(crate) const SCOPE_NAME: u32 = 1;
    pub(crate) const SCOPE_VERSION: u32 = 2;
    pub(crate) const SPAN_TRACE_ID: u32 = 1;
    pub(crate) const SPAN_SPAN_ID: u32 = 2;
    pub(crate) const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub(crate) const SPAN_NAME: u32 = 5;
    pub(crate) const SPAN_KIND: u32 = 6;
    pub(crate) const SPAN_START: u32 = 7;
    pub(crate) const SPAN_END: u32 = 8;
    pub(crate) const SPAN_ATTRIBUTES: u32 = 9;
    pub(crate) const SPAN_EVENTS: u32 = 11;
    pub(crate) const SPAN_STATUS: u32 = 15;
    pub(crate) const EVENT_TIME: u32 = 1;
    pub(crate) const EVENT_NAME: u32 = 2;
    pub(crate) const EVENT_ATTRIBUTES: u32 = 3;
    pub(crate) const STATUS_MESSAGE: u32 = 2;
    pub(crate) const STATUS_CODE: u32 = 3;
}

const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_STRING: u32 = 1;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
const ARRAY_VALUES: u32 = 1;

/// Appends protobuf fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct ProtoWriter {
    pub(crate) buf: Vec<u8>,
}

/// Where a nested message's body starts, from [`ProtoWriter::begin`].
#[must_use = "a message begun must be ended"]
pub(crate) struct Open(usize);

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The encoded size of a length-delimited field `field` of `len` bytes.
pub(crate) fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

impl ProtoWriter {
    /// The key and length of a length-delimited field whose `len` bytes the caller appends.
    pub(crate) fn len_prefix(&mut self, field: u32, len: usize) {
        self.key(field, LEN);
        self.varint(len as u64);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    /// A varint field; proto3 leaves zero out.
    pub(crate) fn uint(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, VARINT);
            self.varint(value);
        }
    }

    /// A `fixed64` field; proto3 leaves zero out.
    pub(crate) fn fixed64(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.key(field, FIXED64);
            self.buf.extend_from_slice(&value.to_le_bytes());
        }
    }

    /// A `bytes` or `string` field; proto3 leaves it out when empty.
    pub(crate) fn bytes(&mut self, field: u32, value: &[u8]) {
        if !value.is_empty() {
            self.key(field, LEN);
            self.varint(value.len() as u64);
            self.buf.extend_from_slice(value);
        }
    }

    /// A `string` field written by `format_args!`, without a `String` in between.
    pub(crate) fn string_fmt(&mut self, field: u32, args: std::fmt::Arguments<'_>) {
        let open = self.begin(field);
        self.buf
            .write_fmt(args)
            .expect("writing to a Vec cannot fail");
        self.end(open);
    }

    /// Starts a nested message (or a string written piece by piece) as field `field`.
    pub(crate) fn begin(&mut self, field: u32) -> Open {
        self.key(field, LEN);
        self.buf.push(0);
        Open(self.buf.len())
    }

    /// Ends what [`begin`](Self::begin) started: writes its length in front of it.
    pub(crate) fn end(&mut self, Open(start): Open) {
        let len = self.buf.len() - start;
        let n = varint_len(len as u64);
        if n > 1 {
            let old = self.buf.len();
            self.buf.resize(old + n - 1, 0);
            self.buf.copy_within(start..old, start + n - 1);
        }
        let mut value = len as u64;
        for byte in &mut self.buf[start - 1..start - 1 + n] {
            *byte = value as u8 & 0x7f | if value >= 0x80 { 0x80 } else { 0 };
            value >>= 7;
        }
    }

    /// Appends what another writer wrote.
    pub(crate) fn append(&mut self, other: &ProtoWriter) {
        self.buf.extend_from_slice(&other.buf);
    }

    /// A `KeyValue` as field `field`: its key, and the `AnyValue` whose fields `value`
    /// writes.
    fn kv(&mut self, field: u32, key: &str, value: impl FnOnce(&mut Self)) {
        let kv = self.begin(field);
        self.bytes(KEY_VALUE_KEY, key.as_bytes());
        let any = self.begin(KEY_VALUE_VALUE);
        value(self);
        self.end(any);
        self.end(kv);
    }

    /// An `AnyValue`'s string member; written even when empty, as a oneof's member is.
    fn any_string(&mut self, value: &str) {
        self.key(ANY_STRING, LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value.as_bytes());
    }

    /// A `KeyValue` with a string value, as field `field`.
    pub(crate) fn kv_str(&mut self, field: u32, key: &str, value: &str) {
        self.kv(field, key, |w| w.any_string(value));
    }

    /// A `KeyValue` whose string value `write` appends, as field `field`.
    pub(crate) fn kv_str_with(&mut self, field: u32, key: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.kv(field, key, |w| {
            let text = w.begin(ANY_STRING);
            write(&mut w.buf);
            w.end(text);
        });
    }

    /// A `KeyValue` with a formatted string value, as field `field`.
    pub(crate) fn kv_fmt(&mut self, field: u32, key: &str, args: std::fmt::Arguments<'_>) {
        self.kv_str_with(field, key, |buf| {
            buf.write_fmt(args).expect("writing to a Vec cannot fail")
        });
    }

    /// A `KeyValue` with an integer value, as field `field`.
    pub(crate) fn kv_int(&mut self, field: u32, key: &str, value: i64) {
        self.kv(field, key, |w| {
            w.key(ANY_INT, VARINT);
            w.varint(value as u64);
        });
    }

    /// A `KeyValue` with a double value, as field `field`.
    pub(crate) fn kv_double(&mut self, field: u32, key: &str, value: f64) {
        self.kv(field, key, |w| {
            w.key(ANY_DOUBLE, FIXED64);
            w.buf.extend_from_slice(&value.to_bits().to_le_bytes());
        });
    }

    /// A `KeyValue` with an array of strings, as field `field`.
    pub(crate) fn kv_str_array(&mut self, field: u32, key: &str, values: &[&str]) {
        self.kv(field, key, |w| {
            let array = w.begin(ANY_ARRAY);
            for value in values {
                let item = w.begin(ARRAY_VALUES);
                w.any_string(value);
                w.end(item);
            }
            w.end(array);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_are_exact_at_every_boundary() {
        for bits in 0..64 {
            for value in [1u64 << bits, (1u64 << bits) - 1, (1u64 << bits) + 1] {
                let mut w = ProtoWriter::default();
                w.varint(value);
                assert_eq!(varint_len(value), w.buf.len(), "{value}");
            }
        }
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn nested_lengths_are_written_in_front_of_bodies_of_any_size() {
        use prost::Message;
        // Bodies of 0, 127 and 128 bytes and of 20 kB straddle the one-byte guess.
        for len in [0usize, 1, 120, 127, 128, 129, 16_383, 16_384, 20_000] {
            let value = "x".repeat(len);
            let mut w = ProtoWriter::default();
            w.kv_str(1, "key", &value);
            let decoded =
                opentelemetry_proto::tonic::resource::v1::Resource::decode(&w.buf[..]).unwrap();
            assert_eq!(decoded.encode_to_vec(), w.buf, "{len}");
            let mut w2 = ProtoWriter::default();
            w2.kv_str_with(1, "key", |buf| buf.extend_from_slice(value.as_bytes()));
            assert_eq!(w2.buf, w.buf, "{len}");
        }
    }
}
