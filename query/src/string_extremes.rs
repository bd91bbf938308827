//! `min` and `max` of strings in grouped aggregations, registered in every session over the
//! lake in place of DataFusion's own; every other type, and every other use, goes to
//! DataFusion's.
//!
//! Why: the `runs` view folds the spans of each run with string maxima (workflow, agent,
//! outcome, each once from the root and once from any span) over millions of runs, and
//! DataFusion 55's string accumulator did a good share of that work the slow way: each group's
//! value in a `Vec<u8>` of its own (an allocation per group, per aggregate, in both the partial
//! and the final stage) and a hash map built for every batch to find each group's best value
//! of the batch. Here a group's value is an (offset, length) into one arena per aggregate: a
//! row is compared with it in place, and only a better value is copied (most rows of a run
//! carry the run's workflow again, or no value at all). The bytes of values that were
//! overtaken stay in the arena until they outweigh the live ones, and then it is rewritten.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray as _, BooleanArray, LargeStringBuilder, StringBuilder,
    StringViewBuilder,
};
use datafusion::arrow::compute::{nullif, prep_null_mask_filter};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{internal_err, Result, ScalarValue};
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};

/// `max`, with the string accumulator of this module.
pub(crate) fn max() -> AggregateUDF {
    AggregateUDF::new_from_impl(StringExtreme {
        builtin: max_udaf().as_ref().clone(),
        keep: Keep::Greatest,
    })
}

/// `min`, with the string accumulator of this module.
pub(crate) fn min() -> AggregateUDF {
    AggregateUDF::new_from_impl(StringExtreme {
        builtin: min_udaf().as_ref().clone(),
        keep: Keep::Least,
    })
}

/// Which value of a group an accumulator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Keep {
    Greatest,
    Least,
}

impl Keep {
    /// Whether `new` replaces `current`. Byte order is code point order in UTF-8, which is
    /// how DataFusion and DuckDB order strings.
    fn replaces(self, new: &[u8], current: &[u8]) -> bool {
        match self {
            Keep::Greatest => new > current,
            Keep::Least => new < current,
        }
    }
}

/// DataFusion's `min` or `max` (`builtin`) with this module's grouped accumulator for
/// strings. The name, signature, coercion and every other property are the built-in's, so
/// the planner and the optimizer treat it as that function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringExtreme {
    builtin: AggregateUDF,
    keep: Keep,
}

/// The string types this module's accumulator takes; the others go to the built-in.
fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    )
}

impl AggregateUDFImpl for StringExtreme {
    fn name(&self) -> &str {
        self.builtin.name()
    }

    fn aliases(&self) -> &[String] {
        self.builtin.aliases()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.inner().return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.builtin.inner().accumulator(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        is_string(args.return_field.data_type())
            || self.builtin.inner().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let data_type = args.return_field.data_type();
        if is_string(data_type) {
            Ok(Box::new(StringExtremes::new(self.keep, data_type.clone())))
        } else {
            self.builtin.inner().create_groups_accumulator(args)
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.builtin.inner().create_sliding_accumulator(args)
    }

    fn is_descending(&self) -> Option<bool> {
        self.builtin.inner().is_descending()
    }

    fn value_from_stats(&self, args: &StatisticsArgs) -> Option<ScalarValue> {
        self.builtin.inner().value_from_stats(args)
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.builtin.inner().order_sensitivity()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.builtin.inner().coerce_types(arg_types)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.builtin.inner().reverse_expr()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.inner().documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.builtin.inner().set_monotonicity(data_type)
    }
}

/// A group's value: where it lies in the arena, or [`Slot::EMPTY`] (no value yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    offset: u64,
    len: u32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        offset: 0,
        len: u32::MAX,
    };
}

/// The arena is rewritten when its overtaken bytes are more than its live bytes and more
/// than this.
const MIN_GARBAGE: usize = 1 << 20;

/// The grouped accumulator: each group's least or greatest string so far.
#[derive(Debug)]
struct StringExtremes {
    keep: Keep,
    data_type: DataType,
    slots: Vec<Slot>,
    /// The values, end to end; a slot's bytes are valid UTF-8 (they were copied from strings).
    arena: Vec<u8>,
    /// Bytes of the arena that slots point at.
    live: usize,
}

impl StringExtremes {
    fn new(keep: Keep, data_type: DataType) -> Self {
        Self {
            keep,
            data_type,
            slots: Vec::new(),
            arena: Vec::new(),
            live: 0,
        }
    }

    fn value(&self, slot: Slot) -> Option<&[u8]> {
        (slot != Slot::EMPTY).then(|| &self.arena[slot.offset as usize..][..slot.len as usize])
    }

    /// Folds `values` into their groups; rows whose `filter` is not true are skipped.
    fn fold(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if values.len() != group_indices.len() {
            return internal_err!(
                "{} values for {} group indices",
                values.len(),
                group_indices.len()
            );
        }
        self.slots.resize(total_num_groups, Slot::EMPTY);
        match values.data_type() {
            DataType::Utf8View => {
                self.fold_strings(values.as_string_view().iter(), group_indices, filter)
            }
            DataType::Utf8 => {
                self.fold_strings(values.as_string::<i32>().iter(), group_indices, filter)
            }
            DataType::LargeUtf8 => {
                self.fold_strings(values.as_string::<i64>().iter(), group_indices, filter)
            }
            other => return internal_err!("string min/max of {other}"),
        }
        let garbage = self.arena.len() - self.live;
        if garbage > self.live && garbage > MIN_GARBAGE {
            self.rewrite_arena();
        }
        Ok(())
    }

    fn fold_strings<'a>(
        &mut self,
        values: impl Iterator<Item = Option<&'a str>>,
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
    ) {
        for (row, (value, &group)) in values.zip(group_indices).enumerate() {
            let Some(value) = value else { continue };
            if filter.is_some_and(|f| !(f.is_valid(row) && f.value(row))) {
                continue;
            }
            let value = value.as_bytes();
            let slot = self.slots[group];
            let better = match self.value(slot) {
                None => true,
                Some(current) => self.keep.replaces(value, current),
            };
            if better {
                if slot != Slot::EMPTY {
                    self.live -= slot.len as usize;
                }
                self.slots[group] = Slot {
                    offset: self.arena.len() as u64,
                    len: value.len() as u32,
                };
                self.arena.extend_from_slice(value);
                self.live += value.len();
            }
        }
    }

    /// Copies the live values into a new arena, dropping the overtaken ones.
    fn rewrite_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.live);
        for slot in &mut self.slots {
            if *slot != Slot::EMPTY {
                let start = arena.len() as u64;
                arena.extend_from_slice(&self.arena[slot.offset as usize..][..slot.len as usize]);
                slot.offset = start;
            }
        }
        self.arena = arena;
    }

    /// The values of the groups that `emit_to` names, as an array of the aggregate's type;
    /// those groups are forgotten.
    fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = match emit_to {
            EmitTo::All => self.slots.len(),
            EmitTo::First(n) => n.min(self.slots.len()),
        };
        let strings = self.slots[..n].iter().map(|&slot| {
            self.value(slot).map(|bytes| {
                // SAFETY: a slot's bytes are a copy of a whole `&str` (`fold_strings`), and
                // rewriting the arena moves whole slots.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            })
        });
        let array: ArrayRef = match &self.data_type {
            DataType::Utf8View => {
                let mut builder = StringViewBuilder::with_capacity(n);
                strings.for_each(|s| builder.append_option(s));
                Arc::new(builder.finish())
            }
            DataType::Utf8 => {
                let mut builder = StringBuilder::with_capacity(n, self.live);
                strings.for_each(|s| builder.append_option(s));
                Arc::new(builder.finish())
            }
            DataType::LargeUtf8 => {
                let mut builder = LargeStringBuilder::with_capacity(n, self.live);
                strings.for_each(|s| builder.append_option(s));
                Arc::new(builder.finish())
            }
            other => return internal_err!("string min/max of {other}"),
        };
        match emit_to {
            EmitTo::All => {
                self.slots.clear();
                self.arena.clear();
                self.live = 0;
            }
            EmitTo::First(_) => {
                for slot in self.slots.drain(..n) {
                    if slot != Slot::EMPTY {
                        self.live -= slot.len as usize;
                    }
                }
            }
        }
        Ok(array)
    }
}

impl GroupsAccumulator for StringExtremes {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(&values[0], group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.emit(emit_to)
    }

    /// The state of a min or max is its value.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.fold(&values[0], group_indices, None, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = match opt_filter {
            None => Arc::clone(&values[0]),
            Some(filter) => {
                let skipped = datafusion::arrow::compute::not(&prep_null_mask_filter(filter))?;
                nullif(&values[0], &skipped)?
            }
        };
        Ok(vec![values])
    }

    fn size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>() + self.arena.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;
    use rand::{Rng as _, SeedableRng as _};

    /// Random strings in random groups, with nulls, equal values and values that share
    /// prefixes; long enough that Utf8View keeps some out of line.
    fn table(seed: u64, rows: usize) -> RecordBatch {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let words = [
            "",
            "a",
            "ab",
            "abc",
            "b",
            "zeta",
            "Zeta",
            "é",
            "support-triage",
        ];
        let mut groups = Vec::with_capacity(rows);
        let mut values = Vec::with_capacity(rows);
        for _ in 0..rows {
            groups.push(rng.random_range(0..500i64));
            values.push(match rng.random_range(0..4) {
                0 => None,
                1 => Some(words[rng.random_range(0..words.len())].to_string()),
                2 => Some(format!(
                    "{}-{}",
                    words[rng.random_range(0..words.len())],
                    rng.random_range(0..1000)
                )),
                _ => Some(format!(
                    "a-long-value-kept-out-of-line-{:08}",
                    rng.random_range(0..100_000)
                )),
            });
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(groups)),
                Arc::new(StringArray::from(values)),
            ],
        )
        .unwrap()
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        text.lines().map(str::to_string).collect()
    }

    /// The same grouped queries in a session with the built-in functions and one with these,
    /// over Utf8, Utf8View and LargeUtf8, with FILTER clauses (the null and the false rows of
    /// a filter are skipped) and in several partitions (partial and final stages).
    #[tokio::test]
    async fn grouped_min_and_max_of_strings_match_datafusions_own() {
        for seed in 0..4 {
            let batch = table(seed, 20_000);
            let ours = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new()
                    .with_target_partitions(3)
                    .with_batch_size(1000),
            );
            ours.register_udaf(max());
            ours.register_udaf(min());
            let theirs = SessionContext::new_with_config(
                datafusion::prelude::SessionConfig::new()
                    .with_target_partitions(3)
                    .with_batch_size(1000),
            );
            for ctx in [&ours, &theirs] {
                let parts: Vec<_> = (0..4).map(|i| vec![batch.slice(i * 5000, 5000)]).collect();
                let table =
                    datafusion::datasource::MemTable::try_new(batch.schema(), parts).unwrap();
                ctx.register_table("t", Arc::new(table)).unwrap();
            }
            for cast in [
                "s",
                "arrow_cast(s, 'Utf8View')",
                "arrow_cast(s, 'LargeUtf8')",
            ] {
                let sql = format!(
                    "SELECT g, max({cast}) AS hi, min({cast}) AS lo,
                        max({cast}) FILTER (WHERE g % 3 = 0 OR s IS NULL) AS hi_f,
                        min(CASE WHEN g % 2 = 0 THEN {cast} END) AS lo_even,
                        arrow_typeof(max({cast})) AS ty
                     FROM t GROUP BY g ORDER BY g"
                );
                let expected = answer(&theirs, &sql).await;
                assert_eq!(expected.len(), 500 + 4, "one line per group");
                assert_eq!(answer(&ours, &sql).await, expected, "seed {seed}, {cast}");
            }
        }
    }

    /// Emitting the first groups forgets exactly those, and the arena is rewritten without
    /// changing a value once overtaken values outweigh the live ones.
    #[test]
    fn emitting_the_first_groups_and_rewriting_the_arena_keep_the_rest() {
        let mut acc = StringExtremes::new(Keep::Greatest, DataType::Utf8);
        let groups = [0usize, 1, 2, 0, 1, 2];
        // Ever greater values in every batch, so that nearly all bytes become garbage.
        for round in 0..3000u32 {
            let values: ArrayRef = Arc::new(StringArray::from(
                (0..6)
                    .map(|i| Some(format!("{round:06}-{i}-{}", "x".repeat(400))))
                    .collect::<Vec<_>>(),
            ));
            acc.update_batch(&[values], &groups, None, 4).unwrap();
        }
        assert!(acc.arena.len() <= 2 * acc.live + MIN_GARBAGE + 6 * 420);
        let first = acc.evaluate(EmitTo::First(2)).unwrap();
        let first = first.as_string::<i32>();
        assert_eq!(&first.value(0)[..9], "002999-3-");
        assert_eq!(&first.value(1)[..9], "002999-4-");
        let rest = acc.evaluate(EmitTo::All).unwrap();
        let rest = rest.as_string::<i32>();
        assert_eq!(rest.len(), 2);
        assert_eq!(&rest.value(0)[..9], "002999-5-");
        assert!(rest.is_null(1), "group 3 never had a value");
        assert_eq!(acc.live, 0);
    }
}
