//! Reading query answers by column name, whatever numeric or string type the engine chose.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};

use crate::QueryError;

/// The columns of one batch, cast on first use to i64, f64 or string.
pub(crate) struct Columns<'a> {
    batch: &'a RecordBatch,
}

/// One column cast to a plain type.
pub(crate) struct Column(ArrayRef);

impl<'a> Columns<'a> {
    pub(crate) fn new(batch: &'a RecordBatch) -> Self {
        Self { batch }
    }

    fn get(&self, name: &str, to: &DataType) -> Result<Column, QueryError> {
        let column = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| QueryError::Shape(format!("no column `{name}`")))?;
        let column = if column.data_type() == to {
            Arc::clone(column)
        } else {
            cast(column, to).map_err(|e| QueryError::Shape(format!("column `{name}`: {e}")))?
        };
        Ok(Column(column))
    }

    pub(crate) fn int(&self, name: &str) -> Result<Column, QueryError> {
        self.get(name, &DataType::Int64)
    }

    pub(crate) fn float(&self, name: &str) -> Result<Column, QueryError> {
        self.get(name, &DataType::Float64)
    }

    pub(crate) fn string(&self, name: &str) -> Result<Column, QueryError> {
        self.get(name, &DataType::Utf8)
    }

    /// Microseconds since the epoch.
    pub(crate) fn micros(&self, name: &str) -> Result<Column, QueryError> {
        self.get(
            name,
            &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
        )
        .and_then(|c| {
            Ok(Column(
                cast(&c.0, &DataType::Int64).map_err(|e| QueryError::Shape(e.to_string()))?,
            ))
        })
    }
}

impl Column {
    pub(crate) fn i64(&self, row: usize) -> Option<i64> {
        let a = self.0.as_primitive::<Int64Type>();
        (!a.is_null(row)).then(|| a.value(row))
    }

    /// Zero when null: for counts and sums of counts.
    pub(crate) fn count(&self, row: usize) -> u64 {
        self.i64(row).unwrap_or(0).max(0) as u64
    }

    pub(crate) fn f64(&self, row: usize) -> Option<f64> {
        let a = self.0.as_primitive::<Float64Type>();
        (!a.is_null(row)).then(|| a.value(row))
    }

    pub(crate) fn str(&self, row: usize) -> Option<&str> {
        let a = self.0.as_string::<i32>();
        (!a.is_null(row)).then(|| a.value(row))
    }
}

/// `numerator / denominator`, or `None` when the denominator is zero.
pub(crate) fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator != 0.0).then(|| numerator / denominator)
}
