// Fuzz check `wal_replay`: the log reader and the write-batch decoder over hostile bytes.
//
// Three properties, on every input:
// 1. Raw: the input as a whole WAL file. Reading it never panics, ends in Eof, TornTail or
//    Corrupt within a bounded number of steps, and every record either decodes as a batch
//    whose sequence numbers are consecutive or is rejected with an error naming the file.
// 2. Framed: the input cut into payloads and written by `LogWriter` (so the checksums are
//    right and the batch decoder sees arbitrary payloads) reads back exactly, then Eof.
// 3. Torn: that framed log cut at an input-chosen length yields exactly the records that
//    lie wholly before the cut, then an end no earlier than the torn record: never a
//    record that was not written, never one that was lost.

use std::borrow::Cow;
use std::path::Path;

use tidemark::lsm::batch::decode_batch;
use tidemark::lsm::wal::{LogKind, LogRead, LogReader, LogWriter};
use tidemark::lsm::FileNumber;

include!("support.rs");

const WAL_NAME: &str = "/fuzz/000007.wal";

/// Checks one fuzz input (see the file's first comment).
pub fn check(data: &[u8]) {
    check_raw(data);
    check_framed(data);
}

/// Records (offset, payload) and how the log ended.
type Replay = (Vec<(u64, Vec<u8>)>, LogRead<'static>);

/// Reads `data` as a WAL; returns the records read and how the log ended.
fn read_all(data: &[u8]) -> Option<Replay> {
    let path = Path::new(WAL_NAME);
    let mut reader = match LogReader::new(data, path, LogKind::Wal, None, true) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                e.to_string().contains(WAL_NAME),
                "error does not name the file: {e}"
            );
            return None;
        }
    };
    let mut records = Vec::new();
    // Every record takes at least a fragment header, so this bounds a healthy reader.
    for _ in 0..=data.len() / 7 + 1 {
        match reader.next() {
            LogRead::Record { offset, payload } => {
                assert!(
                    offset < data.len() as u64,
                    "record offset {offset} past the end"
                );
                records.push((offset, payload.into_owned()));
            }
            end => {
                if let LogRead::TornTail { offset, .. } | LogRead::Corrupt { offset, .. } = &end {
                    assert!(
                        *offset <= data.len() as u64,
                        "damage offset {offset} past the end"
                    );
                }
                // Once ended, a reader stays ended.
                assert_eq!(reader.next(), LogRead::Eof);
                return Some((records, end.into_owned()));
            }
        }
    }
    panic!(
        "the log reader did not end within {} steps",
        data.len() / 7 + 2
    );
}

trait IntoOwned {
    fn into_owned(self) -> LogRead<'static>;
}

impl IntoOwned for LogRead<'_> {
    fn into_owned(self) -> LogRead<'static> {
        match self {
            LogRead::Record { offset, payload } => LogRead::Record {
                offset,
                payload: Cow::Owned(payload.into_owned()),
            },
            LogRead::Eof => LogRead::Eof,
            LogRead::TornTail { offset, reason } => LogRead::TornTail { offset, reason },
            LogRead::Corrupt { offset, reason } => LogRead::Corrupt { offset, reason },
        }
    }
}

fn check_batch(offset: u64, payload: &[u8]) {
    let path = Path::new(WAL_NAME);
    match decode_batch(payload, path, offset) {
        Ok(batch) => {
            for (i, op) in batch.ops.iter().enumerate() {
                assert_eq!(
                    op.seq.0,
                    batch.first_seq.0 + i as u64,
                    "sequence numbers skip"
                );
            }
        }
        Err(e) => {
            let s = e.to_string();
            assert!(s.contains(WAL_NAME), "error does not name the file: {s}");
        }
    }
}

fn check_raw(data: &[u8]) {
    if let Some((records, _end)) = read_all(data) {
        for (offset, payload) in &records {
            check_batch(*offset, payload);
        }
    }
}

fn check_framed(data: &[u8]) {
    let mut input = Input::new(data);
    let cut_choice = input.u16();
    let mut payloads: Vec<&[u8]> = Vec::new();
    while !input.is_empty() && payloads.len() < 64 {
        // Mostly small records, sometimes one that spans blocks.
        let big = input.byte() % 16 == 0;
        payloads.push(input.bytes(if big { 80_000 } else { 300 }));
    }
    let (file, buf) = MemFile::open(WAL_NAME);
    let mut writer = LogWriter::new(file, LogKind::Wal, FileNumber(7)).expect("log header");
    let mut ends = Vec::new();
    for p in &payloads {
        writer.add_record(p).expect("append to memory");
        ends.push(writer.len());
    }
    let log = buf.lock().unwrap().clone();
    let (records, end) = read_all(&log).expect("a written log opens");
    let read: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(read, payloads, "records differ from those written");
    assert_eq!(end, LogRead::Eof);
    for (offset, payload) in &records {
        check_batch(*offset, payload);
    }

    // A crash cuts the log anywhere: only whole records come back, and nothing else.
    let cut = usize::from(cut_choice) * log.len() / usize::from(u16::MAX).max(1);
    let torn = &log[..cut.min(log.len())];
    let Some((records, end)) = read_all(torn) else {
        panic!("a cut log fails to open");
    };
    let whole = ends.iter().filter(|&&e| e <= torn.len() as u64).count();
    let read: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(
        read,
        payloads[..whole],
        "a cut log returns other records than those before the cut"
    );
    // A torn record whose payload itself holds a well-framed fragment (a value that embeds
    // log bytes) makes the tail look like damage followed by valid data: the reader reports
    // corruption rather than a torn tail. That loses nothing silently (the open fails, or
    // point-in-time recovery stops there), so it is accepted, but only at the torn record.
    let torn_start = if whole == 0 {
        tidemark::lsm::wal::HEADER_RECORD_LEN as u64
    } else {
        ends[whole - 1]
    };
    match end {
        LogRead::Eof | LogRead::TornTail { .. } => {}
        LogRead::Corrupt { offset, .. } if offset >= torn_start => {}
        other => panic!("a cut log ends in {other:?} before its torn record at {torn_start}"),
    }
}
