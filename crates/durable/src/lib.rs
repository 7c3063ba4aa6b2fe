//! Files published whole, for every crate that writes one: the content goes to a temporary
//! name in the destination's directory, is synced, and is moved into place (renamed, or linked
//! where an existing file must never be replaced); then the directory itself is synced, so
//! that after a crash the name points either to the old content or to the whole new one.
//!
//! A file that must not replace an existing one is, on Linux, written without any name
//! (`O_TMPFILE`) and linked under its name once whole: nothing partial is ever visible, and a
//! batch of many small files saves creating and removing a temporary name for each.
//!
//! The directory sync is the step that is easy to forget: without it the rename can be lost
//! at power failure although the file's data was synced (ext4, XFS: the rename lives in the
//! directory's metadata).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// How [`write_atomically_with`] publishes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Replace an existing file (rename); without it an existing destination is an error
    /// (`AlreadyExists`) and is left untouched (hard link).
    pub replace: bool,
    /// Sync the file and its directory before returning. Off only where a caller measured the
    /// cost and needs no crash durability (a batch's outputs can be redone from its inputs).
    pub durable: bool,
    /// Unix permission bits of the new file (0o600 for keys and secrets); `None` keeps the
    /// process's default.
    pub mode: Option<u32>,
}

impl Publish {
    /// Replace, durable, default mode: configuration, state and table files.
    pub const REPLACE: Publish = Publish {
        replace: true,
        durable: true,
        mode: None,
    };
    /// Replace, durable, readable by the owner only: keys, tokens, certificates' keys.
    pub const PRIVATE: Publish = Publish {
        replace: true,
        durable: true,
        mode: Some(0o600),
    };
}

/// Write `bytes` to `dest` as [`Publish`] says.
pub fn write_atomically(dest: &Path, bytes: &[u8], how: Publish) -> std::io::Result<()> {
    write_atomically_with(dest, how, |w| w.write_all(bytes))
}

/// [`write_atomically`] with the content streamed by `fill` into the temporary file. On any
/// error the temporary file is removed and `dest` is as it was.
pub fn write_atomically_with(
    dest: &Path,
    how: Publish,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", dest.display()),
        )
    })?;
    #[cfg(target_os = "linux")]
    if !how.replace
        && let Some(file) = unnamed::create(dir, how.mode)
    {
        // No temporary name to create and remove: the file has none until it is linked whole.
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        if how.durable {
            file.sync_all()?;
        }
        unnamed::link(&file, dest)?;
        if how.durable {
            sync_dir(dir)?;
        }
        return Ok(());
    }
    // Hidden, and unique per process and call, so two writers never share a temporary file.
    let tmp = dir.join(format!(
        ".{}.medfed-partial-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        next_serial()
    ));
    let result = (|| {
        let file = create(&tmp, how.mode)?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        if how.durable {
            file.sync_all()?;
        }
        drop(file);
        if how.replace {
            std::fs::rename(&tmp, dest)?;
        } else {
            std::fs::hard_link(&tmp, dest)?;
        }
        if how.durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    // After a rename the temporary name is gone already; after a link it is a second name.
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Asks the kernel to start writing `file`'s dirty pages now, without waiting for them. A batch
/// that syncs its whole output once at the end (one `syncfs`) then finds most of it on disk
/// already, and the writing overlaps the batch's own work instead of following it. Advisory: a
/// failure changes nothing that the final sync does not cover, so it is ignored.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        #[allow(unsafe_code)]
        // SAFETY: sync_file_range takes a file descriptor that `file` keeps open for the
        // duration of the call, and plain integers; no memory is passed.
        let _ =
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Sync a directory, so that names created, renamed or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows cannot open a directory as a file; NTFS journals renames itself.
        let _ = dir;
        Ok(())
    }
}

fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// Files without a name (Linux `O_TMPFILE`) for publishing without replacing: written, then
/// linked under their name, which fails if the name exists. A batch of many small files saves
/// the creation and removal of a temporary name per file; where the file system or a missing
/// `/proc` rules it out, the caller falls back to a named temporary file.
#[cfg(target_os = "linux")]
mod unnamed {
    use std::ffi::CString;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::OnceLock;

    /// Linking goes through `/proc/self/fd` (linkat with `AT_EMPTY_PATH` needs a capability).
    fn proc_fd_available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| Path::new("/proc/self/fd").is_dir())
    }

    /// An unnamed file in `dir`, or `None` where one cannot be made there.
    pub(super) fn create(dir: &Path, mode: Option<u32>) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if !proc_fd_available() {
            return None;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(mode.unwrap_or(0o666))
            .open(dir)
            .ok()
    }

    /// Gives `file` the name `dest`; `AlreadyExists` if that name is taken.
    pub(super) fn link(file: &File, dest: &Path) -> std::io::Result<()> {
        let nul = |_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path");
        let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(nul)?;
        let to = CString::new(dest.as_os_str().as_bytes()).map_err(nul)?;
        #[allow(unsafe_code)]
        // SAFETY: both paths are NUL-terminated C strings that live across the call, and
        // `file` keeps the descriptor named in `from` open.
        let done = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

fn create(path: &Path, mode: Option<u32>) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Set at creation, so a secret is never readable by others, not even for a moment.
        o.mode(mode.unwrap_or(0o666));
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_or_refuses_to_replace_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomically(&p, b"one", Publish::REPLACE).unwrap();
        write_atomically(&p, b"two", Publish::REPLACE).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let keep = Publish {
            replace: false,
            ..Publish::REPLACE
        };
        let e = write_atomically(&p, b"three", keep).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the published file remains");
    }

    #[test]
    fn a_failing_writer_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomically(&p, b"old", Publish::REPLACE).unwrap();
        let e = write_atomically_with(&p, Publish::REPLACE, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk gone"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk gone");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Publishing without replacing (unnamed files on Linux): a new name gets the whole
    /// content with the mode asked for, a failing writer leaves no name and no file behind.
    #[test]
    fn a_new_file_is_published_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Publish {
            replace: false,
            durable: false,
            mode: Some(0o600),
        };
        let p = dir.path().join("out.dcm");
        let e = write_atomically_with(&p, keep, |w| {
            w.write_all(&[7u8; 300_000])?;
            Err(std::io::Error::other("input vanished"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "input vanished");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomically_with(&p, keep, |w| w.write_all(&[7u8; 300_000])).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), vec![7u8; 300_000]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let e = write_atomically(&p, b"other", keep).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("site.key");
        write_atomically(&p, b"secret", Publish::PRIVATE).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
