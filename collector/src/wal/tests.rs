use super::*;
use crate::MemoryBudget;

fn options(dir: &Path, flush_interval: Duration) -> WalOptions {
    WalOptions {
        dir: dir.to_path_buf(),
        fsync: true,
        segment_max_bytes: 1 << 20,
        flush_interval,
        direct_io: true,
    }
}

fn open(
    dir: &Path,
    flush_interval: Duration,
    min_next_seq: u64,
) -> (
    Wal,
    usize,
    tokio::sync::mpsc::UnboundedReceiver<SealedSegment>,
    Arc<CollectorMetrics>,
    MemoryBudget,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(CollectorMetrics::default());
    let budget = MemoryBudget::new(1 << 30);
    let (wal, recovered) = Wal::open(
        options(dir, flush_interval),
        min_next_seq,
        tx,
        &budget,
        metrics.clone(),
    )
    .unwrap();
    (wal, recovered, rx, metrics, budget)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, mut sealed, metrics, budget) = open(dir.path(), Duration::from_secs(3600), 0);
    let wal = Arc::new(wal);
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let wal = wal.clone();
        let reservation = budget.try_reserve(4).unwrap();
        tasks.push(tokio::spawn(async move {
            wal.append(i.to_le_bytes().to_vec(), reservation).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let records = CollectorMetrics::get(&metrics.wal_records);
    let fsyncs = CollectorMetrics::get(&metrics.wal_fsyncs);
    assert_eq!(records, 200);
    assert!(fsyncs >= 1 && fsyncs <= records, "fsyncs {fsyncs}");
    let wal = Arc::into_inner(wal).unwrap();
    wal.close();
    let segment = sealed.recv().await.unwrap();
    assert_eq!(segment.seq, 0);
    assert_eq!(segment.reservations.len(), 200);
    let (payloads, _) = read_segment(&segment.path).unwrap();
    let mut values: Vec<u32> = payloads
        .iter()
        .map(|p| u32::from_le_bytes(p[..4].try_into().unwrap()))
        .collect();
    values.sort();
    assert_eq!(values, (0..200).collect::<Vec<_>>());
    drop(segment);
    assert_eq!(
        budget.used(),
        0,
        "reservations are released with the segment"
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_rest_recovered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _, mut sealed, _, budget) = open(dir.path(), Duration::from_secs(3600), 5);
        for i in 0..3u8 {
            wal.append(vec![i; 100], budget.force_reserve(100))
                .await
                .unwrap();
        }
        wal.close();
        let segment = sealed.recv().await.unwrap();
        assert_eq!(segment.seq, 5, "sequence starts at min_next_seq");
        // Simulate a crash in the middle of a fourth record: a length, half a payload.
        let mut file = OpenOptions::new().append(true).open(&segment.path).unwrap();
        file.write_all(&100u32.to_le_bytes()).unwrap();
        file.write_all(&[0u8; 4]).unwrap();
        file.write_all(&[9u8; 50]).unwrap();
        std::mem::forget(segment); // stays on disk, as after a crash
    }
    // An empty segment left by a crash right after creating it is dropped.
    std::fs::write(dir.path().join(format!("{:020}.wal", 6)), b"").unwrap();

    let (wal, recovered, mut sealed, _, _) = open(dir.path(), Duration::from_secs(3600), 0);
    assert_eq!(recovered, 1);
    let segment = sealed.recv().await.unwrap();
    assert_eq!(segment.seq, 5);
    let (payloads, valid) = read_segment(&segment.path).unwrap();
    assert_eq!(
        payloads,
        vec![vec![0u8; 100], vec![1u8; 100], vec![2u8; 100]]
    );
    assert_eq!(std::fs::metadata(&segment.path).unwrap().len(), valid);
    assert!(!dir.path().join(format!("{:020}.wal", 6)).exists());
    drop(wal);
}

#[tokio::test]
async fn a_segment_is_sealed_by_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, mut sealed, _, budget) = open(dir.path(), Duration::from_millis(50), 0);
    wal.append(b"x".to_vec(), budget.force_reserve(1))
        .await
        .unwrap();
    // The writer seals on its own: waiting for the channel is the synchronisation.
    let segment = tokio::time::timeout(Duration::from_secs(10), sealed.recv())
        .await
        .expect("sealed within the flush interval")
        .unwrap();
    assert_eq!(segment.seq, 0);
    wal.append(b"y".to_vec(), budget.force_reserve(1))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sealed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, 1);
}

#[tokio::test]
async fn one_process_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _, _rx, _, _) = open(dir.path(), Duration::from_secs(1), 0);
    let (tx, _rx2) = tokio::sync::mpsc::unbounded_channel();
    let err = Wal::open(
        options(dir.path(), Duration::from_secs(1)),
        0,
        tx,
        &MemoryBudget::new(10),
        Arc::new(CollectorMetrics::default()),
    )
    .unwrap_err();
    assert!(matches!(err, WalError::Locked(_)), "{err}");
}

#[test]
fn a_file_that_is_not_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000001.wal");
    std::fs::write(&path, b"something else entirely").unwrap();
    assert!(matches!(read_segment(&path), Err(WalError::NotASegment(_))));
}

/// Records whose sizes fall before, on and across block boundaries, written with direct I/O
/// where the file system allows it: every record reads back, and the sealed segment has no
/// padding.
#[tokio::test]
async fn direct_writes_read_back_across_block_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, mut sealed, _, budget) = open(dir.path(), Duration::from_secs(3600), 0);
    let sizes = [1usize, 4079, 4088, 4096, 1, 9000, 3, 8192, 4095];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8 | 1).collect())
        .collect();
    for payload in &payloads {
        wal.append(payload.clone(), budget.force_reserve(payload.len()))
            .await
            .unwrap();
        // An empty record is nothing to keep, and must not end the segment's records.
        wal.append(Vec::new(), budget.force_reserve(0))
            .await
            .unwrap();
    }
    wal.close();
    let segment = sealed.recv().await.unwrap();
    let (read, valid) = read_segment(&segment.path).unwrap();
    assert_eq!(read, payloads);
    let expected =
        SEGMENT_HEADER.len() + sizes.iter().map(|n| n + RECORD_HEADER_BYTES).sum::<usize>();
    assert_eq!(valid, expected as u64);
    assert_eq!(segment.bytes, valid);
    assert_eq!(std::fs::metadata(&segment.path).unwrap().len(), valid);
}

/// A crash after a direct write and before the seal leaves the last block's zero padding:
/// recovery reads it as the end of the records and cuts it.
#[tokio::test]
async fn the_padding_of_a_direct_write_ends_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{:020}.wal", 3));
    let (file, _direct) = create_segment_file(&path, true).unwrap();
    let mut segment = OpenSegment::new(3, path.clone(), file, true);
    let payload = vec![7u8; 5000];
    let header = {
        let mut h = [0u8; RECORD_HEADER_BYTES];
        h[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[4..].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        h
    };
    let slices = [
        std::io::IoSlice::new(&header),
        std::io::IoSlice::new(&payload),
    ];
    let total = RECORD_HEADER_BYTES + payload.len();
    let mut buffer = AlignedBuffer::default();
    if segment.direct && Writer::write_direct(&mut segment, &mut buffer, &slices, total).is_err() {
        // The file system took O_DIRECT at open but not the write: nothing to test here.
        return;
    }
    segment.file.sync_data().unwrap();
    let logical = (SEGMENT_HEADER.len() + total) as u64;
    assert_eq!(segment.tail.len() as u64, logical % DIRECT_BLOCK as u64);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        logical.next_multiple_of(DIRECT_BLOCK as u64),
        "padded to a whole block"
    );
    std::mem::forget(segment); // a crash: never sealed
    let recovered = recover(dir.path()).unwrap();
    assert_eq!(recovered, vec![(3, path.clone(), logical)]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), logical);
    assert_eq!(read_segment(&path).unwrap().0, vec![payload]);
}
