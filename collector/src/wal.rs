//! The write-ahead log: where an export becomes durable before it is acknowledged.
//!
//! ```text
//!  <data-dir>/wal/LOCK                     flock: one collector per data directory
//!  <data-dir>/wal/00000000000000000042.wal segment 42: header, then records
//!  record = u32 length (LE) | u32 CRC-32 of payload (LE) | payload (an Arrow IPC stream)
//!  padding = zeros to a 4 KiB boundary after the last record, until the next group or the seal
//!            (direct I/O only; a zero length ends the records)
//! ```
//!
//! One writer thread owns the open segment. Exports queue their records; the thread takes
//! everything queued, writes it in one `write`, and issues one `fdatasync` for all of it
//! (group commit), then acknowledges each. Segments are written with `O_DIRECT` where the file
//! system allows it: the log is read back only after a crash, so a copy in the page cache
//! would cost CPU for nothing. A segment is sealed when it reaches its size limit
//! or its age reaches the flush interval, and handed to the flusher, which deletes it only
//! after its commit to the lake. Recovery reads every segment left on disk, cuts a torn
//! tail (a record whose length or checksum does not hold: it was never acknowledged), and
//! hands them to the flusher again, in sequence order.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::budget::Reservation;
use crate::metrics::CollectorMetrics;

/// The first bytes of every segment: a magic and a format version.
const SEGMENT_HEADER: &[u8; 8] = b"RLWAL\0\0\x01";
/// Bytes of a record's length and checksum.
const RECORD_HEADER_BYTES: usize = 8;
/// Records larger than this are corruption, not data (the request limit is far below).
const MAX_RECORD_BYTES: usize = 1 << 30;
/// At most this many bytes are written in one group commit.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// With direct I/O, file offsets, write lengths and buffer addresses are multiples of this
/// (the page size, a multiple of every device's logical block size).
const DIRECT_BLOCK: usize = 4096;

/// What can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("{0} is locked by another runledger process")]
    Locked(PathBuf),
    /// A segment does not start with the WAL header.
    #[error("{0} is not a runledger WAL segment")]
    NotASegment(PathBuf),
    /// The writer thread is gone (the collector is shutting down).
    #[error("the write-ahead log is closed")]
    Closed,
    /// A group write failed; nothing in it was acknowledged.
    #[error("writing the write-ahead log failed: {0}")]
    WriteFailed(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WalError {
    let context = context.into();
    move |source| WalError::Io { context, source }
}

/// How the WAL behaves.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The WAL directory.
    pub dir: PathBuf,
    /// fsync before acknowledging.
    pub fsync: bool,
    /// Seal a segment at this size.
    pub segment_max_bytes: u64,
    /// Seal a segment this long after its first record.
    pub flush_interval: Duration,
    /// Write segments with direct I/O (`O_DIRECT`) where the file system allows it.
    pub direct_io: bool,
}

/// A segment that receives no more records, waiting for its commit to the lake.
#[derive(Debug)]
pub struct SealedSegment {
    /// Its sequence number: the version of its Delta application transaction.
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The memory-budget reservations of its records, released with the segment.
    pub reservations: Vec<Reservation>,
    /// The records as they were written, when this process wrote the segment: the flusher
    /// takes them from memory instead of reading back the file it has just written (they are
    /// what the reservations count). `None` for a segment recovered from disk.
    pub records: Option<Vec<bytes::Bytes>>,
}

enum Command {
    Append {
        payload: Vec<u8>,
        reservation: Reservation,
        done: oneshot::Sender<Result<(), WalError>>,
    },
    Shutdown,
}

/// The handle through which exports append to the WAL.
pub struct Wal {
    commands: mpsc::Sender<Command>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// The segments in `dir`, by sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((seq, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Reads the records of a segment. Returns them (slices of one buffer: no copy per record)
/// and the length of the valid prefix of the file: a torn or corrupt tail ends the segment.
pub fn read_segment(path: &Path) -> Result<(Vec<bytes::Bytes>, u64), WalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(format!("reading {}", path.display())))?;
    let data = bytes::Bytes::from(data);
    if data.len() < SEGMENT_HEADER.len() {
        // A crash right after creating the file: an empty segment.
        return Ok((Vec::new(), 0));
    }
    if &data[..SEGMENT_HEADER.len()] != SEGMENT_HEADER {
        return Err(WalError::NotASegment(path.to_path_buf()));
    }
    let mut records = Vec::new();
    let mut pos = SEGMENT_HEADER.len();
    while data.len() - pos >= RECORD_HEADER_BYTES {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let start = pos + RECORD_HEADER_BYTES;
        // A zero length is the padding after the last record of a segment written with
        // direct I/O (no record is empty: a payload is an Arrow IPC stream).
        if len == 0 || len > MAX_RECORD_BYTES || data.len() - start < len {
            break;
        }
        let payload = data.slice(start..start + len);
        if crc32fast::hash(&payload) != crc {
            break;
        }
        records.push(payload);
        pos = start + len;
    }
    Ok((records, pos as u64))
}

/// Recovers the segments left in `dir` by a previous process: cuts torn tails, deletes empty
/// segments, and returns the others by sequence number with their sizes.
pub fn recover(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, WalError> {
    let mut recovered = Vec::new();
    for (seq, path) in list_segments(dir)? {
        let (records, valid_len) = read_segment(&path)?;
        if records.is_empty() {
            std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            continue;
        }
        let file_len = std::fs::metadata(&path)
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        if valid_len < file_len {
            tracing::warn!(
                segment = %path.display(),
                kept = valid_len,
                cut = file_len - valid_len,
                "cutting the torn tail of a WAL segment (never acknowledged)"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(io(format!("truncating {}", path.display())))?;
        }
        recovered.push((seq, path, valid_len));
    }
    Ok(recovered)
}

fn lock_dir(dir: &Path) -> Result<File, WalError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(WalError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

/// `write_all` over several buffers in as few system calls as the kernel allows.
fn write_all_vectored(
    file: &mut File,
    mut slices: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates a segment file, with `O_DIRECT` when `direct` and the file system takes it
/// (tmpfs, for one, does not). Returns the file and whether it is direct.
fn create_segment_file(path: &Path, direct: bool) -> std::io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    if direct {
        match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Refused before the file was created, or created and then refused: either
                // way the file is created again without the flag.
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((options.open(path)?, false))
}

/// A reusable buffer whose usable part starts at a [`DIRECT_BLOCK`] boundary, as direct I/O
/// requires of the memory it writes from.
#[derive(Default)]
struct AlignedBuffer {
    bytes: Vec<u8>,
}

impl AlignedBuffer {
    /// `len` bytes (a multiple of [`DIRECT_BLOCK`]), aligned, holding whatever the last
    /// caller left in them.
    fn aligned(&mut self, len: usize) -> &mut [u8] {
        if self.bytes.len() < len + DIRECT_BLOCK {
            self.bytes = vec![0; (len + DIRECT_BLOCK).next_power_of_two()];
        }
        let start = self.bytes.as_ptr().align_offset(DIRECT_BLOCK);
        &mut self.bytes[start..start + len]
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the WAL in `options.dir`: locks the directory, recovers the segments a previous
    /// process left (see [`recover`]) and sends them to `sealed` in order, each holding a
    /// reservation of `budget`, then starts the writer thread at a sequence number above both
    /// the recovered segments and `min_next_seq` (one past what the lake has committed).
    /// Returns the WAL and how many segments were recovered.
    pub fn open(
        options: WalOptions,
        min_next_seq: u64,
        sealed: tokio::sync::mpsc::UnboundedSender<SealedSegment>,
        budget: &crate::MemoryBudget,
        metrics: Arc<CollectorMetrics>,
    ) -> Result<(Self, usize), WalError> {
        std::fs::create_dir_all(&options.dir)
            .map_err(io(format!("creating {}", options.dir.display())))?;
        let lock = lock_dir(&options.dir)?;
        let recovered = recover(&options.dir)?;
        let next_seq = recovered
            .last()
            .map(|(seq, _, _)| seq + 1)
            .unwrap_or(0)
            .max(min_next_seq);
        let recovered_count = recovered.len();
        for (seq, path, bytes) in recovered {
            let reservation = budget.force_reserve(bytes as usize);
            let _ = sealed.send(SealedSegment {
                seq,
                path,
                bytes,
                reservations: vec![reservation],
                records: None,
            });
        }
        let (commands, receiver) = mpsc::channel();
        let writer = Writer {
            options,
            direct_buffer: AlignedBuffer::default(),
            next_seq,
            current: None,
            sealed,
            metrics,
        };
        let writer = std::thread::Builder::new()
            .name("runledger-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(io("starting the WAL writer thread"))?;
        Ok((
            Self {
                commands,
                writer: std::sync::Mutex::new(Some(writer)),
                _lock: lock,
            },
            recovered_count,
        ))
    }

    /// Appends one record; resolves once it is durable (written, and fsynced if configured).
    /// The record stays in memory with its segment until the flush (see
    /// [`SealedSegment::records`]): `reservation` counts it.
    pub async fn append(&self, payload: Vec<u8>, reservation: Reservation) -> Result<(), WalError> {
        if payload.is_empty() {
            // Nothing to keep; and a zero length marks the end of a segment's records.
            return Ok(());
        }
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Append {
                payload,
                reservation,
                done,
            })
            .map_err(|_| WalError::Closed)?;
        result.await.map_err(|_| WalError::Closed)?
    }

    /// Seals the open segment, stops the writer and waits for it. Appends after this fail.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let writer = self.writer.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

struct OpenSegment {
    seq: u64,
    path: PathBuf,
    file: File,
    /// Opened with `O_DIRECT`: each group is written in whole blocks (see
    /// [`Writer::write_direct`]), the last one padded with zeros until the next group or the
    /// seal.
    direct: bool,
    /// With direct I/O, the bytes of the segment's last, partial block (`bytes` modulo
    /// [`DIRECT_BLOCK`]), written again in front of the next group.
    tail: Vec<u8>,
    /// The segment's length: header and records, without padding.
    bytes: u64,
    records: u64,
    opened_at: Instant,
    reservations: Vec<Reservation>,
    payloads: Vec<bytes::Bytes>,
}

impl OpenSegment {
    /// A segment just created: its header is all it holds (with direct I/O, the header is
    /// also its partial last block).
    fn new(seq: u64, path: PathBuf, file: File, direct: bool) -> Self {
        Self {
            seq,
            path,
            file,
            direct,
            tail: if direct {
                SEGMENT_HEADER.to_vec()
            } else {
                Vec::new()
            },
            bytes: SEGMENT_HEADER.len() as u64,
            records: 0,
            opened_at: Instant::now(),
            reservations: Vec::new(),
            payloads: Vec::new(),
        }
    }
}

struct Writer {
    options: WalOptions,
    /// The staging buffer of direct writes, reused from group to group.
    direct_buffer: AlignedBuffer,
    next_seq: u64,
    current: Option<OpenSegment>,
    sealed: tokio::sync::mpsc::UnboundedSender<SealedSegment>,
    metrics: Arc<CollectorMetrics>,
}

struct PendingAppend {
    payload: bytes::Bytes,
    reservation: Reservation,
    done: oneshot::Sender<Result<(), WalError>>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            let command = match &self.current {
                Some(segment) => {
                    let deadline = segment.opened_at + self.options.flush_interval;
                    let now = Instant::now();
                    if now >= deadline {
                        self.seal();
                        continue;
                    }
                    match commands.recv_timeout(deadline - now) {
                        Ok(command) => command,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.seal();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                },
            };
            let mut group = Vec::new();
            let mut group_bytes = 0;
            let mut shutdown = false;
            let mut next = Some(command);
            while let Some(command) = next.take() {
                match command {
                    Command::Append {
                        payload,
                        reservation,
                        done,
                    } => {
                        group_bytes += payload.len();
                        group.push(PendingAppend {
                            payload: payload.into(),
                            reservation,
                            done,
                        });
                        if group_bytes < MAX_GROUP_BYTES {
                            next = commands.try_recv().ok();
                        }
                    }
                    Command::Shutdown => shutdown = true,
                }
            }
            if !group.is_empty() {
                self.write_group(group);
            }
            if shutdown {
                break;
            }
        }
        self.seal();
    }

    /// Opens the next segment, header written and synced, unless one is open.
    fn open_segment(&mut self) -> Result<(), WalError> {
        if self.current.is_some() {
            return Ok(());
        }
        let seq = self.next_seq;
        let path = segment_path(&self.options.dir, seq);
        let (file, direct) = create_segment_file(&path, self.options.direct_io)
            .map_err(io(format!("creating {}", path.display())))?;
        let mut segment = OpenSegment::new(seq, path, file, direct);
        // With direct I/O the header is the partial block that the first group writes again;
        // written now, padded, so that an empty segment is still one.
        let written = if direct {
            Self::write_direct(&mut segment, &mut self.direct_buffer, &[], 0)
        } else {
            segment.file.write_all(SEGMENT_HEADER)
        };
        written
            .and_then(|()| segment.file.sync_all())
            .and_then(|()| sync_dir(&self.options.dir))
            .map_err(io(format!("initialising {}", segment.path.display())))?;
        self.next_seq += 1;
        self.current = Some(segment);
        Ok(())
    }

    fn write_group(&mut self, group: Vec<PendingAppend>) {
        let fsync = self.options.fsync;
        let total: usize = group
            .iter()
            .map(|a| a.payload.len() + RECORD_HEADER_BYTES)
            .sum();
        let headers: Vec<[u8; RECORD_HEADER_BYTES]> = group
            .iter()
            .map(|append| {
                let mut header = [0u8; RECORD_HEADER_BYTES];
                header[..4].copy_from_slice(&(append.payload.len() as u32).to_le_bytes());
                header[4..].copy_from_slice(&crc32fast::hash(&append.payload).to_le_bytes());
                header
            })
            .collect();
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(group.len() * 2);
        for (header, append) in headers.iter().zip(&group) {
            slices.push(std::io::IoSlice::new(header));
            slices.push(std::io::IoSlice::new(&append.payload));
        }
        let result = self.open_segment().and_then(|()| {
            let segment = self.current.as_mut().expect("opened above");
            let buffer = &mut self.direct_buffer;
            let before = segment.bytes;
            let written = if segment.direct {
                Self::write_direct(segment, buffer, &slices, total)
            } else {
                write_all_vectored(&mut segment.file, &mut slices)
            }
            .and_then(|()| {
                if fsync {
                    segment.file.sync_data()
                } else {
                    Ok(())
                }
            });
            match written {
                Ok(()) => {
                    segment.bytes += total as u64;
                    segment.records += group.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // Take back what may have been written, so that no later record follows
                    // garbage; the segment is sealed below either way.
                    let _ = segment.file.set_len(before);
                    Err(WalError::WriteFailed(format!(
                        "{}: {e}",
                        segment.path.display()
                    )))
                }
            }
        });
        match result {
            Ok(()) => {
                CollectorMetrics::add(&self.metrics.wal_records, group.len() as u64);
                CollectorMetrics::add(&self.metrics.wal_bytes, total as u64);
                if fsync {
                    CollectorMetrics::add(&self.metrics.wal_fsyncs, 1);
                }
                let segment = self.current.as_mut().expect("written above");
                for append in group {
                    segment.reservations.push(append.reservation);
                    segment.payloads.push(append.payload);
                    let _ = append.done.send(Ok(()));
                }
                if segment.bytes >= self.options.segment_max_bytes {
                    self.seal();
                }
            }
            Err(error) => {
                tracing::error!(%error, "WAL write failed; the exports are refused as retryable");
                let message = error.to_string();
                for append in group {
                    let _ = append
                        .done
                        .send(Err(WalError::WriteFailed(message.clone())));
                }
                self.seal();
            }
        }
    }

    /// Writes a group through direct I/O: the segment's partial last block, then the records
    /// (`slices`, `total` bytes), copied into an aligned buffer padded with zeros to a whole
    /// block, in one write at the partial block's offset. Rewriting that block's first bytes
    /// is safe even if the write tears: they are the same bytes. The kernel copies nothing
    /// into its page cache, which for the WAL (written once, read only after a crash) was
    /// the writer thread's main cost.
    fn write_direct(
        segment: &mut OpenSegment,
        buffer: &mut AlignedBuffer,
        slices: &[std::io::IoSlice<'_>],
        total: usize,
    ) -> std::io::Result<()> {
        let tail = segment.tail.len();
        let end = tail + total;
        let block = buffer.aligned(end.next_multiple_of(DIRECT_BLOCK));
        block[..tail].copy_from_slice(&segment.tail);
        let mut at = tail;
        for slice in slices {
            block[at..at + slice.len()].copy_from_slice(slice);
            at += slice.len();
        }
        block[end..].fill(0);
        let offset = segment.bytes - tail as u64;
        std::os::unix::fs::FileExt::write_all_at(&segment.file, block, offset)?;
        segment.tail.clear();
        segment
            .tail
            .extend_from_slice(&block[end / DIRECT_BLOCK * DIRECT_BLOCK..end]);
        Ok(())
    }

    fn seal(&mut self) {
        let Some(segment) = self.current.take() else {
            return;
        };
        if segment.records == 0 {
            let _ = std::fs::remove_file(&segment.path);
            return;
        }
        if segment.direct {
            // The last block's padding goes (a crash before this leaves it, which recovery
            // reads as the end of the records).
            let _ = segment.file.set_len(segment.bytes);
        }
        if !self.options.fsync {
            // Without per-group fsyncs, a sealed segment is at least on disk before it is
            // committed and deleted.
            let _ = segment.file.sync_data();
        }
        let sealed = SealedSegment {
            seq: segment.seq,
            path: segment.path,
            bytes: segment.bytes,
            reservations: segment.reservations,
            records: Some(segment.payloads),
        };
        if self.sealed.send(sealed).is_err() {
            tracing::error!("the flusher is gone; the segment stays on disk for the next start");
        }
    }
}

#[cfg(test)]
mod tests;
