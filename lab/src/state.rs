//! A manifest directory a test changes under a running dataplane.
//!
//! `<tmp>/state` is a symlink to a generation directory; a new state is written to a fresh generation and the
//! symlink replaced by rename(2), so the dataplane (which polls the files under the path, following the link)
//! sees either the whole old or the whole new state.

use std::path::PathBuf;

/// The directory; removed when dropped.
pub struct StateDir {
    root: tempfile::TempDir,
    generation: usize,
}

impl StateDir {
    /// A state of these `(file name, text)` manifests.
    pub fn new(files: &[(&str, String)]) -> StateDir {
        let mut s = StateDir { root: tempfile::tempdir().expect("tempdir"), generation: 0 };
        s.swap(files);
        s
    }

    /// The path the dataplane watches.
    pub fn path(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// The generation directory the state points to now (write into it to change the state in place).
    pub fn current(&self) -> PathBuf {
        self.root.path().join(format!("gen{}", self.generation))
    }

    /// Replaces the whole state atomically.
    pub fn swap(&mut self, files: &[(&str, String)]) {
        self.generation += 1;
        let dir = self.current();
        std::fs::create_dir_all(&dir).expect("generation dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write manifest");
        }
        let link = self.root.path().join("state.new");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        std::fs::rename(&link, self.path()).expect("rename state link");
    }
}
