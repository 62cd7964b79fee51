//! Opening the files an operator names (policy documents, keys, signatures, plots)
//! without hanging on a FIFO: a plain `open` of a FIFO waits for the other end, for
//! good if nobody comes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;

/// Opens `path` for reading. A FIFO or pipe is read as it is (`<(...)` works): one with
/// no writer reads as empty at once instead of waiting for one.
///
/// # Errors
/// What `open` and `fcntl` return.
pub fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    // Blocking again: a leased or FUSE file may answer a non-blocking read with EAGAIN.
    rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
    Ok(file)
}

/// Reads the whole of `path` (opened as [`open_read`] does) if it holds at most
/// `limit` bytes: `Ok(None)` when it holds more, so a huge file or an endless device
/// costs at most `limit + 1` bytes of memory.
///
/// # Errors
/// What opening and reading return.
pub fn read_limited(path: &Path, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(open_read(path)?, limit as u64 + 1),
        &mut bytes,
    )?;
    Ok((bytes.len() <= limit).then_some(bytes))
}

/// Creates or truncates `path` for writing. A FIFO with no reader is an error at once
/// instead of a wait for one.
///
/// # Errors
/// What `open` and `fcntl` return; `open`'s ENXIO (a FIFO with no reader) as an error
/// that says so.
pub fn create_write(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::NXIO.raw_os_error() && is_fifo(path) => {
                io::Error::other("a FIFO that nobody reads (writing to it would wait for a reader)")
            }
            _ => e,
        })?;
    rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
    Ok(file)
}

/// Whether `path` names a FIFO (following symlinks).
pub fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn fifo(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("qos-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        path
    }

    #[test]
    fn a_fifo_without_a_writer_reads_as_empty_at_once() {
        let path = fifo("read");
        let mut text = String::new();
        open_read(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "");
    }

    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let path = fifo("write");
        let e = create_write(&path).unwrap_err();
        assert!(e.to_string().contains("nobody reads"), "{e}");
    }

    #[test]
    fn a_fifo_with_a_reader_is_written() {
        let path = fifo("both");
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                // Blocks until the writer below opens, then reads to its close.
                File::open(&path)
                    .unwrap()
                    .read_to_string(&mut text)
                    .unwrap();
                text
            })
        };
        let mut writer = loop {
            match create_write(&path) {
                Ok(f) => break f,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        };
        writer.write_all(b"signed\n").unwrap();
        drop(writer);
        assert_eq!(reader.join().unwrap(), "signed\n");
    }

    #[test]
    fn read_limited_reads_up_to_the_limit_and_no_more() {
        let dir = std::env::temp_dir().join(format!("qos-files-{}-limit", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(
            read_limited(&path, 5).unwrap().as_deref(),
            Some(&b"12345"[..])
        );
        assert_eq!(read_limited(&path, 4).unwrap(), None);
        // A device without end costs at most the limit + 1.
        assert_eq!(read_limited(Path::new("/dev/zero"), 1 << 10).unwrap(), None);
    }

    #[test]
    fn regular_files_read_and_write_as_usual() {
        let dir = std::env::temp_dir().join(format!("qos-files-{}-plain", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        create_write(&path).unwrap().write_all(b"abc").unwrap();
        create_write(&path).unwrap().write_all(b"de").unwrap();
        let mut text = String::new();
        open_read(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "de", "truncated on create");
    }
}
