//! The run index: which Parquet files of a tier hold a given run id or external ref.
//!
//! Run ids are random, so a file's min/max statistics on `run_id` span almost the whole key
//! space and prune nothing across files; without an index, a lookup opens every file's footer
//! and bloom filters. The index answers "which files" from memory instead, and the lookup
//! then reads only those files, where the sort order (run, start) and page statistics narrow
//! the read to a few pages.
//!
//! Delta data files are immutable, so the index is kept per file: a sorted list of 64-bit
//! hashes of the run ids it holds, and one of its external refs. It follows the table's log:
//! a file that a commit adds (a flush, a compaction, the rewrite of an erasure) is indexed
//! when the lake refreshes, a file that a commit removes is dropped. Nothing has to be told
//! to update it, and it cannot go stale. Each file's index is also saved next to the table
//! (`<data>/<tier>/run_index/`), so a restart or the CLI reads small sidecars rather than
//! re-reading every file; a missing or unreadable sidecar is rebuilt from the file.
//!
//! A hash collision only makes a lookup read one file too many: the read filters on the id.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use futures::StreamExt as _;
use runledger_schemas::col;

use crate::QueryError;

const MAGIC: &[u8; 8] = b"RLRIDX01";

/// A stable 64-bit hash (FNV-1a): the sidecars outlive processes, so the hash must not
/// depend on a random seed or the compiler version.
pub fn stable_hash(value: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The index of one data file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileIndex {
    /// Hashes of the run ids in the file, sorted, unique.
    pub runs: Vec<u64>,
    /// Hashes of the external refs in the file, sorted, unique.
    pub refs: Vec<u64>,
}

impl FileIndex {
    /// Reads the run id and external ref columns of a Parquet file.
    pub fn build(path: &Path) -> Result<Self, QueryError> {
        let fail = |e: &dyn std::fmt::Display| {
            QueryError::Index(format!("indexing {}: {e}", path.display()))
        };
        let file = File::open(path).map_err(|e| fail(&e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(&e))?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| {
                let name = schema.column(i).path().string();
                name == col::RUN_ID || name == col::EXTERNAL_REF
            })
            .collect();
        let mask = ProjectionMask::leaves(schema, wanted);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(65_536)
            .build()
            .map_err(|e| fail(&e))?;
        let mut runs = Vec::new();
        let mut refs = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| fail(&e))?;
            for (column, out) in [(col::RUN_ID, &mut runs), (col::EXTERNAL_REF, &mut refs)] {
                let Some(array) = batch.column_by_name(column) else {
                    continue;
                };
                let array = datafusion::arrow::compute::cast(array, &DataType::Utf8)
                    .map_err(|e| fail(&e))?;
                let strings = array.as_string::<i32>();
                // Rows are sorted by run: hash each distinct run id once.
                let mut last: Option<&str> = None;
                for i in 0..strings.len() {
                    if strings.is_null(i) {
                        continue;
                    }
                    let value = strings.value(i);
                    if last != Some(value) {
                        out.push(stable_hash(value));
                        last = Some(value);
                    }
                }
            }
        }
        for list in [&mut runs, &mut refs] {
            list.sort_unstable();
            list.dedup();
        }
        Ok(Self { runs, refs })
    }

    fn write(&self, key: &str, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut out = BufWriter::new(File::create(&tmp)?);
            out.write_all(MAGIC)?;
            out.write_all(&(key.len() as u64).to_le_bytes())?;
            out.write_all(key.as_bytes())?;
            for list in [&self.runs, &self.refs] {
                out.write_all(&(list.len() as u64).to_le_bytes())?;
                for hash in list {
                    out.write_all(&hash.to_le_bytes())?;
                }
            }
            out.into_inner()?.sync_all()?;
        }
        std::fs::rename(tmp, path)
    }

    fn read(key: &str, path: &Path) -> std::io::Result<Self> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut input = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a run index sidecar"));
        }
        let mut word = [0u8; 8];
        let mut next = |input: &mut BufReader<File>| -> std::io::Result<u64> {
            input.read_exact(&mut word)?;
            Ok(u64::from_le_bytes(word))
        };
        let key_len = next(&mut input)? as usize;
        if key_len != key.len() {
            return Err(bad("sidecar of another file"));
        }
        let mut stored = vec![0u8; key_len];
        input.read_exact(&mut stored)?;
        if stored != key.as_bytes() {
            return Err(bad("sidecar of another file"));
        }
        let file_len = std::fs::metadata(path)?.len();
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = next(&mut input)?;
            if n > file_len / 8 {
                return Err(bad("truncated sidecar"));
            }
            list.reserve(n as usize);
            for _ in 0..n {
                list.push(next(&mut input)?);
            }
        }
        let [runs, refs] = lists;
        Ok(Self { runs, refs })
    }

    /// Whether the file may hold the run.
    pub fn may_hold_run(&self, hash: u64) -> bool {
        self.runs.binary_search(&hash).is_ok()
    }

    /// Whether the file may hold the external ref.
    pub fn may_hold_ref(&self, hash: u64) -> bool {
        self.refs.binary_search(&hash).is_ok()
    }
}

/// The index of one tier's table: its live files, each with its [`FileIndex`].
#[derive(Debug)]
pub struct RunIndex {
    table_dir: PathBuf,
    sidecar_dir: PathBuf,
    /// Live file (its path relative to the table) -> its index.
    files: HashMap<String, Arc<FileIndex>>,
    /// The table version the index was last synced to.
    version: Option<u64>,
}

impl RunIndex {
    /// The index of the table at `table_dir`, its sidecars in `sidecar_dir`.
    pub fn new(table_dir: &Path, sidecar_dir: &Path) -> Self {
        Self {
            table_dir: table_dir.to_path_buf(),
            sidecar_dir: sidecar_dir.to_path_buf(),
            files: HashMap::new(),
            version: None,
        }
    }

    /// The table version the index reflects.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Number of files indexed.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        self.sidecar_dir
            .join(format!("{:016x}.idx", stable_hash(key)))
    }

    /// Brings the index to the table's live files at `version`: indexes the new ones
    /// (from their sidecar, else from the file, in parallel), forgets the removed ones and
    /// deletes their sidecars.
    pub async fn sync(&mut self, version: u64, live: Vec<String>) -> Result<(), QueryError> {
        if self.version == Some(version) {
            return Ok(());
        }
        let live_set: HashSet<&String> = live.iter().collect();
        self.files.retain(|key, _| live_set.contains(key));
        let missing: Vec<String> = live
            .iter()
            .filter(|key| !self.files.contains_key(*key))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let sidecars = self.sidecar_dir.clone();
            let _ = std::fs::create_dir_all(&sidecars);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let _ = std::fs::set_permissions(&sidecars, std::fs::Permissions::from_mode(0o700));
            }
            let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
            let work: Vec<(String, PathBuf, PathBuf)> = missing
                .into_iter()
                .map(|key| {
                    let data = self.table_dir.join(&key);
                    let sidecar = self.sidecar_path(&key);
                    (key, data, sidecar)
                })
                .collect();
            let jobs = work.into_iter().map(|(key, data, sidecar)| {
                tokio::task::spawn_blocking(move || {
                    if let Ok(index) = FileIndex::read(&key, &sidecar) {
                        return Ok((key, index));
                    }
                    let index = FileIndex::build(&data)?;
                    if let Err(e) = index.write(&key, &sidecar) {
                        // A read-only data directory still gets lookups, only slower to start.
                        tracing::debug!(error = %e, path = %sidecar.display(), "run index sidecar not saved");
                    }
                    Ok::<_, QueryError>((key, index))
                })
            });
            let mut built = futures::stream::iter(jobs).buffer_unordered(parallel);
            while let Some(joined) = built.next().await {
                let (key, index) =
                    joined.map_err(|e| QueryError::Index(format!("index task failed: {e}")))??;
                self.files.insert(key, Arc::new(index));
            }
        }
        self.remove_stale_sidecars();
        self.version = Some(version);
        Ok(())
    }

    /// Deletes the sidecars of files that are no longer live.
    fn remove_stale_sidecars(&self) {
        let Ok(entries) = std::fs::read_dir(&self.sidecar_dir) else {
            return;
        };
        let live: HashSet<PathBuf> = self.files.keys().map(|k| self.sidecar_path(k)).collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "idx") && !live.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The files that may hold the run, as absolute paths.
    pub fn files_with_run(&self, run_id: &str) -> Vec<PathBuf> {
        let hash = stable_hash(run_id);
        self.matching(|index| index.may_hold_run(hash))
    }

    /// The files that may hold a span with this external ref, as absolute paths.
    pub fn files_with_ref(&self, external_ref: &str) -> Vec<PathBuf> {
        let hash = stable_hash(external_ref);
        self.matching(|index| index.may_hold_ref(hash))
    }

    fn matching(&self, hit: impl Fn(&FileIndex) -> bool) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, index)| hit(index))
            .map(|(key, _)| self.table_dir.join(key))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn sidecar_round_trip_and_key_check() {
        let dir = tempfile::tempdir().unwrap();
        let index = FileIndex {
            runs: vec![1, 5, 9],
            refs: vec![7],
        };
        let path = dir.path().join("a.idx");
        index
            .write("date=2026-01-01/hour=00/part-1.parquet", &path)
            .unwrap();
        assert_eq!(
            FileIndex::read("date=2026-01-01/hour=00/part-1.parquet", &path).unwrap(),
            index
        );
        assert!(FileIndex::read("date=2026-01-01/hour=00/part-2.parquet", &path).is_err());
        std::fs::write(&path, b"RLRIDX01garbage").unwrap();
        assert!(FileIndex::read("x", &path).is_err());
        assert!(index.may_hold_run(5) && !index.may_hold_run(6));
        assert!(index.may_hold_ref(7) && !index.may_hold_ref(1));
    }
}
