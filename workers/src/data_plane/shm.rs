//! The same-host data plane: a prefill worker keeps each KV in a file of a shared-memory
//! directory (`/dev/shm` by default, `--kv-shm-dir`), and a decoder on the same host reads it
//! from there instead of over TCP. The handle says only that the KV is in shared memory and on
//! which host (its boot id); the decoder builds the path itself from its own directory and the
//! KV id, so a handle can never make it read another file. TCP serves the same bytes to
//! decoders on other hosts, and to everyone when the directory is unusable.
//!
//! Ownership stays with the prefill worker's KV store: the file lives as long as its entry, and
//! a decoder that read it frees the entry (a `FREE` on the data plane, sent in the background),
//! which removes the file. Files are created exclusively, mode 0600: another user on the host
//! can neither read a KV nor plant one, and a decoder reads only files of its own user.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use uuid::Uuid;

/// A KV's bytes as the KV store holds them: on the heap, or in a shared-memory file (mapped, so
/// TCP serves it without a copy) that is removed with the entry.
pub enum KvBytes {
    Heap(Vec<u8>),
    Shm { map: memmap2::Mmap, path: PathBuf },
}

impl KvBytes {
    /// `pages` moved into `dir/pdq-kv-{id}`, or kept on the heap when the file cannot be made.
    pub fn store(dir: Option<&Path>, id: Uuid, pages: Vec<u8>) -> KvBytes {
        let Some(dir) = dir else { return KvBytes::Heap(pages) };
        let path = path_for(dir, id);
        match write_file(&path, &pages) {
            Ok(map) => KvBytes::Shm { map, path },
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(error = %e, path = %path.display(), "cannot keep a KV in shared memory; keeping it on the heap");
                KvBytes::Heap(pages)
            }
        }
    }

    pub fn in_shm(&self) -> bool {
        matches!(self, KvBytes::Shm { .. })
    }
}

impl From<Vec<u8>> for KvBytes {
    fn from(v: Vec<u8>) -> Self {
        KvBytes::Heap(v)
    }
}

impl std::ops::Deref for KvBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KvBytes::Heap(v) => v,
            KvBytes::Shm { map, .. } => map,
        }
    }
}

impl Drop for KvBytes {
    fn drop(&mut self) {
        if let KvBytes::Shm { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn path_for(dir: &Path, id: Uuid) -> PathBuf {
    dir.join(format!("pdq-kv-{}", id.simple()))
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let mut f = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    // SAFETY: the file is this process's own (created exclusively, mode 0600) and never written
    // again; it is removed, not truncated, when the entry goes.
    unsafe { memmap2::Mmap::map(&f) }
}

/// This host's identity for the handle: the kernel's boot id, so a decoder shares memory with
/// a prefill worker only when both run under the same kernel.
pub fn host_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string()))
        .as_deref()
}

/// Whether `dir` can hold KV files: it exists and a file can be made in it.
pub fn usable(dir: &Path) -> bool {
    let probe = path_for(dir, Uuid::new_v4());
    let ok = write_file(&probe, b"pdq").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The decoder's side: the KV `id` from `dir`, if it is there, is a regular file of this user,
/// and has exactly `kv_bytes` bytes. `None` means "use TCP".
pub fn read(dir: &Path, id: Uuid, kv_bytes: u64) -> Option<Vec<u8>> {
    let path = path_for(dir, id);
    // O_NOFOLLOW: a symlink planted under the name is refused, not followed.
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).ok()?;
    let meta = f.metadata().ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != uid || meta.len() != kv_bytes {
        return None;
    }
    let mut bytes = Vec::with_capacity(kv_bytes as usize);
    (&mut f as &mut File).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 == kv_bytes).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kv_in_shared_memory_is_read_once_it_is_written_and_gone_with_its_entry() {
        let dir = std::env::temp_dir().join(format!("pdq-shm-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        assert!(usable(&dir));
        let id = Uuid::new_v4();
        let bytes = KvBytes::store(Some(&dir), id, vec![7u8; 4096]);
        assert!(bytes.in_shm());
        assert_eq!(&bytes[..], &[7u8; 4096][..]);
        assert_eq!(read(&dir, id, 4096), Some(vec![7u8; 4096]));
        // A handle claiming another length, or another id, gets nothing.
        assert_eq!(read(&dir, id, 4095), None);
        assert_eq!(read(&dir, Uuid::new_v4(), 4096), None);
        drop(bytes);
        assert_eq!(read(&dir, id, 4096), None, "the file goes with the entry");
        // A symlink planted under a KV's name is not followed.
        let other = Uuid::new_v4();
        let target = dir.join("secret");
        std::fs::write(&target, [1u8; 16]).unwrap();
        std::os::unix::fs::symlink(&target, path_for(&dir, other)).unwrap();
        assert_eq!(read(&dir, other, 16), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_usable_directory_the_kv_stays_on_the_heap() {
        let missing = Path::new("/nonexistent-pdq-shm");
        assert!(!usable(missing));
        let bytes = KvBytes::store(Some(missing), Uuid::new_v4(), vec![1, 2, 3]);
        assert!(!bytes.in_shm());
        assert_eq!(&bytes[..], &[1, 2, 3]);
        assert!(!KvBytes::store(None, Uuid::new_v4(), vec![1]).in_shm());
    }
}
