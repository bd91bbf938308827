use super::*;
use crate::HourPartition;
use std::time::SystemTime;

use arrow::array::{Array, AsArray};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parquet::file::reader::{FileReader, SerializedFileReader};
use runledger_processor::{Normalizer, ProcessorConfig};

/// `n` spans in `runs` runs, spread over two hours, in reverse order of run id.
fn batch(n: usize, runs: usize) -> RecordBatch {
    let hour_ns = 3_600_000_000_000u64;
    let base = 1_700_000_000_000_000_000u64 / hour_ns * hour_ns;
    let spans = (0..n)
        .map(|i| {
            let run = runs - 1 - (i % runs);
            Span {
                trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: format!("span {i}"),
                start_time_unix_nano: base + (i as u64 % 2) * hour_ns + (n - i) as u64,
                end_time_unix_nano: base + (i as u64 % 2) * hour_ns + n as u64 + 10,
                attributes: vec![KeyValue {
                    key: "runledger.run.id".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(format!("run-{run:04}"))),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Normalizer::new(&ProcessorConfig::default())
        .unwrap()
        .normalize(&request, SystemTime::now())
        .batch
        .unwrap()
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn appends_are_idempotent_per_application_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig::default();
    let mut table = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    let sorted = sort_for_lake(&[batch(100, 7)]).unwrap().unwrap();
    let first = table
        .append(std::slice::from_ref(&sorted), "collector-a", 1)
        .await
        .unwrap();
    assert!(
        matches!(first, AppendOutcome::Committed { rows: 100, .. }),
        "{first:?}"
    );
    // The same transaction again, as a replay after a crash would: nothing is written.
    let replay = table
        .append(std::slice::from_ref(&sorted), "collector-a", 1)
        .await
        .unwrap();
    assert_eq!(replay, AppendOutcome::AlreadyCommitted);
    // Another collector's transaction 1 is its own.
    let other = table
        .append(std::slice::from_ref(&sorted), "collector-b", 1)
        .await
        .unwrap();
    assert!(matches!(other, AppendOutcome::Committed { .. }));

    // A second process opening the table sees the transactions.
    let mut reopened = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    assert_eq!(
        reopened.committed_transaction("collector-a").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        reopened.committed_transaction("nobody").await.unwrap(),
        None
    );

    let files = parquet_files(&table_path(dir.path(), Tier::Raw));
    // Two hours, two commits: four files, under hive-style partition directories.
    assert_eq!(files.len(), 4, "{files:?}");
    let mut rows = 0;
    for file in &files {
        let rel = file
            .strip_prefix(table_path(dir.path(), Tier::Raw))
            .unwrap();
        let rel = rel.to_string_lossy();
        assert!(rel.starts_with("date=2023-11-14/hour=2"), "{rel}");
        let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
        let meta = reader.metadata();
        rows += meta.file_metadata().num_rows();
        let columns = meta.row_group(0).columns();
        let find = |name: &str| {
            columns
                .iter()
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        assert!(
            find("run_id").bloom_filter_offset().is_some(),
            "bloom filter on run_id"
        );
        assert!(
            find("trace_id").bloom_filter_offset().is_some(),
            "bloom filter on trace_id"
        );
        // Ingest's codec; compaction rewrites in ZSTD (see the compaction test below).
        assert_eq!(find("run_id").compression(), Compression::SNAPPY);
        assert!(find("run_id").statistics().is_some());
        assert!(find("start_time").statistics().is_some());
        // Nor do the strings whose range prunes nothing.
        assert!(find("workflow").statistics().is_none());
        assert!(find("span_id").statistics().is_none());
        // A map's keys carry no statistics: nothing reads them.
        assert!(find("attributes.key_value.key").statistics().is_none());
        assert!(find("attributes.key_value.key")
            .encodings()
            .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY));
    }
    assert_eq!(rows, 200);
}

#[test]
fn rows_are_sorted_by_partition_then_run_then_start() {
    let sorted = sort_for_lake(&[batch(50, 5), batch(30, 3)])
        .unwrap()
        .unwrap();
    assert_eq!(sorted.num_rows(), 80);
    let hour = sorted.column_by_name("hour").unwrap().as_string::<i32>();
    let run = sorted.column_by_name("run_id").unwrap().as_string::<i32>();
    let start = sorted
        .column_by_name("start_time")
        .unwrap()
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    for i in 1..sorted.num_rows() {
        let prev = (hour.value(i - 1), run.value(i - 1), start.value(i - 1));
        let cur = (hour.value(i), run.value(i), start.value(i));
        assert!(prev <= cur, "row {i}: {prev:?} > {cur:?}");
    }
    assert!(sort_for_lake(&[]).unwrap().is_none());
    assert!(run.is_valid(0));
}

#[tokio::test]
async fn the_table_schema_is_the_span_table_schema() {
    let dir = tempfile::tempdir().unwrap();
    let table = SpanTable::open_or_create(dir.path(), Tier::Redacted, &LakeConfig::default())
        .await
        .unwrap();
    let writer = RecordBatchWriter::for_table(&table.table).unwrap();
    let expected = span_table_schema();
    let actual = writer.arrow_schema();
    for field in expected.fields() {
        let got = actual.field_with_name(field.name()).unwrap();
        assert_eq!(
            got.data_type(),
            field.data_type(),
            "column {}",
            field.name()
        );
    }
}

#[tokio::test]
async fn checkpoints_are_written_at_the_configured_interval() {
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig {
        checkpoint_interval: 3,
        ..LakeConfig::default()
    };
    let mut table = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    let sorted = sort_for_lake(&[batch(10, 2)]).unwrap().unwrap();
    for seq in 1..=4 {
        table
            .append(std::slice::from_ref(&sorted), "c", seq)
            .await
            .unwrap();
    }
    let log = table_path(dir.path(), Tier::Raw).join("_delta_log");
    assert!(
        log.join("_last_checkpoint").exists(),
        "a checkpoint within 3 commits"
    );
    let names: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.contains(".checkpoint.")),
        "{names:?}"
    );
    // A reader opening the table starts from the checkpoint and still sees the transactions.
    let mut reopened = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    assert_eq!(reopened.committed_transaction("c").await.unwrap(), Some(4));
}

/// The values of a string column, in row order.
fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let column = batch.column_by_name(name).unwrap().as_string::<i32>();
    column.iter().map(|v| v.unwrap().to_string()).collect()
}

#[test]
fn grouping_by_partition_keeps_arrival_order_within_each_hour() {
    let inputs = [batch(50, 5), batch(30, 3)];
    let grouped = group_by_partition(&inputs).unwrap().unwrap();
    assert_eq!(grouped.num_rows(), 80);
    // Hours in time order, each one contiguous.
    let hours: Vec<(String, String)> = strings(&grouped, "date")
        .into_iter()
        .zip(strings(&grouped, "hour"))
        .collect();
    assert!(hours.windows(2).all(|w| w[0] <= w[1]), "{hours:?}");
    assert!(
        hours.first() < hours.last(),
        "the inputs straddle two hours"
    );
    // Within an hour: the first batch's rows in their order, then the second's.
    for hour in [hours.first().unwrap(), hours.last().unwrap()] {
        let expected: Vec<String> = inputs
            .iter()
            .flat_map(|b| {
                let in_hour = strings(b, "date")
                    .into_iter()
                    .zip(strings(b, "hour"))
                    .map(|h| &h == hour)
                    .collect::<Vec<_>>();
                strings(b, "name")
                    .into_iter()
                    .zip(in_hour)
                    .filter(|(_, keep)| *keep)
                    .map(|(name, _)| name)
            })
            .collect();
        let got: Vec<String> = strings(&grouped, "name")
            .into_iter()
            .zip(&hours)
            .filter(|(_, h)| *h == hour)
            .map(|(name, _)| name)
            .collect();
        assert_eq!(got, expected, "hour {hour:?}");
    }
    assert!(partitions_are_contiguous(
        &grouped,
        &partition_runs(&grouped)
    ));
    // The generated batch alternates hours row by row: not contiguous, so append sorts it.
    assert!(!partitions_are_contiguous(
        &inputs[0],
        &partition_runs(&inputs[0])
    ));
    assert!(group_by_partition(&[]).unwrap().is_none());
}

#[test]
fn one_hour_is_grouped_by_concatenation() {
    let one_hour = |b: RecordBatch| {
        let hour = b.column_by_name("hour").unwrap().as_string::<i32>();
        let first = hour.value(0).to_string();
        let keep: arrow::array::BooleanArray = hour
            .iter()
            .map(|h| Some(h == Some(first.as_str())))
            .collect();
        arrow::compute::filter_record_batch(&b, &keep).unwrap()
    };
    let inputs = [one_hour(batch(20, 4)), one_hour(batch(10, 2))];
    let grouped = group_by_partition(&inputs).unwrap().unwrap();
    let expected: Vec<String> = inputs.iter().flat_map(|b| strings(b, "name")).collect();
    assert_eq!(strings(&grouped, "name"), expected);
    assert_eq!(partition_runs(&grouped).len(), 1);
}

/// The codec of every column chunk of every file under `dir`, by file name.
fn codecs(dir: &Path) -> Vec<(String, Vec<Compression>)> {
    let mut out: Vec<(String, Vec<Compression>)> = parquet_files(dir)
        .into_iter()
        .map(|file| {
            let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
            let mut codecs: Vec<Compression> = reader
                .metadata()
                .row_groups()
                .iter()
                .flat_map(|g| g.columns().iter().map(|c| c.compression()))
                .collect();
            codecs.dedup();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            (name, codecs)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn ingest_files_stay_in_their_codec_until_compaction_rewrites_them_as_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig::default();
    let mut table = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    table
        .append(&[batch(100, 7)], "collector", 1)
        .await
        .unwrap();
    let path = table_path(dir.path(), Tier::Raw);
    let written = codecs(&path);
    assert_eq!(written.len(), 2, "one file per hour: {written:?}");
    for (name, codecs) in &written {
        assert!(name.ends_with(".snappy.parquet"), "{name}");
        assert_eq!(codecs, &[Compression::SNAPPY], "{name}");
        assert!(!is_archival_file(name));
    }
    // One file per hour, large or small: each hour is still to be rewritten.
    let partitions = table.partitions(1).await.unwrap();
    assert_eq!(partitions.len(), 2);
    for files in partitions.values() {
        assert_eq!(
            (files.files, files.small_files, files.unarchived_files),
            (1, 0, 1)
        );
    }
    let hours: Vec<HourPartition> = partitions.keys().cloned().collect();
    let outcome = table.compact(&hours, 1 << 20).await.unwrap();
    assert_eq!(outcome.partitions, 2);
    for files in table.partitions(1).await.unwrap().values() {
        assert_eq!((files.files, files.unarchived_files), (1, 0));
    }
    table.vacuum(std::time::Duration::ZERO).await.unwrap();
    let compacted = codecs(&path);
    assert_eq!(compacted.len(), 2, "{compacted:?}");
    for (name, codecs) in &compacted {
        assert!(is_archival_file(name), "{name}");
        assert!(
            codecs.iter().all(|c| matches!(c, Compression::ZSTD(_))),
            "{name}: {codecs:?}"
        );
    }

    // With `ingest_compression = "zstd"`, ingest writes archival files from the start.
    let dir = tempfile::tempdir().unwrap();
    let config = LakeConfig {
        ingest_compression: IngestCompression::Zstd,
        ..LakeConfig::default()
    };
    let mut table = SpanTable::open_or_create(dir.path(), Tier::Raw, &config)
        .await
        .unwrap();
    table.append(&[batch(10, 2)], "collector", 1).await.unwrap();
    for files in table.partitions(1).await.unwrap().values() {
        assert_eq!(files.unarchived_files, 0);
    }
    for (name, codecs) in codecs(&table_path(dir.path(), Tier::Raw)) {
        assert!(is_archival_file(&name), "{name}");
        assert!(codecs.iter().all(|c| matches!(c, Compression::ZSTD(_))));
    }
}
