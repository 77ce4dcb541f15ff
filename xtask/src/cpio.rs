//! A writer of `newc` cpio archives (the initramfs format the kernel unpacks, see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`): directories, regular files
//! and symbolic links, owned by root, with their modes; hard links are stored as separate
//! files. Archives concatenate: the kernel unpacks each in turn over the same root.
//!
//! Side effects: reads the files it archives, writes to the given writer.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Writes one archive; [`Writer::finish`] writes its trailer.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl<W: Write> Writer<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.write(&[0u8; 3][..n as usize])
    }

    /// A directory `name` (mode 0755), e.g. `opt/sgpath`.
    pub fn dir(&mut self, name: &str) -> Result<()> {
        self.entry(name, S_IFDIR | 0o755, &[])
    }

    /// Every directory on the way to `name` (`a`, `a/b` for `a/b/c`), for files placed at
    /// paths the base archive may not have.
    pub fn parents(&mut self, name: &str) -> Result<()> {
        let name = name.trim_start_matches('/');
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            self.dir(&name[..at + i])?;
            at += i + 1;
        }
        Ok(())
    }

    /// A regular file `name` holding `data`, with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), data)
    }

    /// The host file `path` stored as `name`, with its permission bits.
    pub fn copy(&mut self, path: &Path, name: &str) -> Result<()> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        self.file(name, meta.mode(), &data)
    }

    /// The tree under `dir` stored under `prefix` (`""` for the archive's root): directories
    /// before their contents, symbolic links as links.
    pub fn tree(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                self.entry(&name, S_IFLNK | 0o777, target.to_string_lossy().as_bytes())?;
            } else if ft.is_dir() {
                self.entry(&name, S_IFDIR | (meta.mode() & 0o7777), &[])?;
                self.tree(&path, &name)?;
            } else if ft.is_file() {
                self.copy(&path, &name)?;
            }
        }
        Ok(())
    }

    /// Writes the trailer; the archive is complete.
    pub fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_and_four_byte_aligned() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        w.parents("a/b/c").unwrap();
        w.file("/a/b/c", 0o755, b"hello").unwrap();
        w.finish().unwrap();
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        // Two parents, the file, the trailer.
        assert_eq!(text.matches("070701").count(), 4);
        assert!(text.contains("a/b/c\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header: mode 0100755, size 5, name length 6.
        let at = text.find("a/b/c\0").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "000081ed");
        assert_eq!(&text[at + 54..at + 62], "00000005");
        assert_eq!(&text[at + 94..at + 102], "00000006");
    }
}
