// Helpers shared by the fuzz checks (included by each of them).

/// A writable file held in memory, for building logs and tables from fuzz input.
#[derive(Debug)]
#[allow(dead_code)]
struct MemFile {
    path: std::path::PathBuf,
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

#[allow(dead_code)]
impl MemFile {
    fn open(
        path: &str,
    ) -> (
        Box<dyn tidemark::fs::WritableFile>,
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let f = MemFile {
            path: std::path::PathBuf::from(path),
            buf: buf.clone(),
        };
        (Box::new(f), buf)
    }
}

impl tidemark::fs::WritableFile for MemFile {
    fn append(&mut self, data: &[u8]) -> tidemark::Result<()> {
        self.buf.lock().unwrap().extend_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> tidemark::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> tidemark::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.buf.lock().unwrap().len() as u64
    }
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Reads fuzz input as a stream of small decisions; yields zeros once exhausted.
#[allow(dead_code)]
struct Input<'a> {
    data: &'a [u8],
}

#[allow(dead_code)]
impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    /// Up to `max` bytes, the count chosen by the input.
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.u16() as usize % (max + 1)).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// A directory for files a check writes, made once per process.
#[allow(dead_code)]
fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("create a scratch directory"))
        .path()
}

/// A path for `name` in a per-thread subdirectory of the scratch directory (checks may run
/// on several threads at once in the stable test).
#[allow(dead_code)]
fn scratch_path(name: &str) -> std::path::PathBuf {
    let id = format!("{:?}", std::thread::current().id());
    let tag: String = id.chars().filter(char::is_ascii_digit).collect();
    let dir = scratch_dir().join(format!("thread-{tag}"));
    std::fs::create_dir_all(&dir).expect("create a scratch subdirectory");
    dir.join(name)
}
