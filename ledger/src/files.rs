//! Files only their owner may read (mode 0600), written whole or not at all: the bytes go to a
//! temporary file beside the target, which is synced, renamed over the target, and the directory
//! synced. A crash leaves the old file or the new one, never a mix, and never a file others can
//! read. Used for the keyring, the signing key, the token store and admin token, the auditor's
//! trusted state and proof files.
//!
//! Blocking (fsyncs): servers call these on blocking threads.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::LedgerError;

fn io_err(path: &Path, source: std::io::Error) -> LedgerError {
    LedgerError::Io { path: path.display().to_string(), source }
}

/// A private file being written; it replaces its target only at [`PrivateFile::commit`].
/// Dropped without a commit, it leaves the temporary file and the target untouched.
pub struct PrivateFile {
    file: fs::File,
    tmp: PathBuf,
    path: PathBuf,
}

impl PrivateFile {
    /// Starts writing `path` (its directory is created if missing) through `path` with the
    /// extension `tmp_extension`.
    #[allow(clippy::disallowed_methods)]
    pub fn create(path: &Path, tmp_extension: &str) -> Result<PrivateFile, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let tmp = path.with_extension(tmp_extension);
        let _ = fs::remove_file(&tmp);
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| io_err(&tmp, e))?;
        Ok(PrivateFile { file, tmp, path: path.to_owned() })
    }

    /// Syncs the file, renames it over the target and syncs the directory.
    #[allow(clippy::disallowed_methods)]
    pub fn commit(self) -> Result<(), LedgerError> {
        self.file.sync_all().map_err(|e| io_err(&self.tmp, e))?;
        fs::rename(&self.tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
    }
}

impl Write for PrivateFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Replaces `path` with `bytes`, readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let mut f = PrivateFile::create(path, "tmp")?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaces_whole_files_readable_by_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret.json");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Not committed: the target keeps its old bytes.
        let mut f = PrivateFile::create(&path, "partial").unwrap();
        f.write_all(b"three").unwrap();
        drop(f);
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(path.with_extension("partial")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
