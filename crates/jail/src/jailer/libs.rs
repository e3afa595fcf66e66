//! A dynamically linked exec file needs its ELF interpreter and shared libraries inside the jail
//! (Firecracker's jailer has no such step: Firecracker is linked statically; a Kestrel built for
//! the GNU target is not). This reads the interpreter (`PT_INTERP`) and the `DT_NEEDED` libraries,
//! transitively, from the ELF headers, finds them in the system library directories, and copies
//! them into the jail at the same paths. A static exec file needs nothing.
//!
//! The reader is bounded: a hostile or odd file yields an error or nothing, never a panic or a
//! large allocation.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the loader looks without an ld.so.cache (the jail has none).
const LIBRARY_DIRS: &[&str] =
    &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
/// At most this many libraries (a VMM links a handful).
const MAX_LIBRARIES: usize = 64;
/// Program headers read at most.
const MAX_PHNUM: usize = 256;
/// Dynamic entries read at most.
const MAX_DYNAMIC: usize = 4096;
/// Longest path or library name read.
const MAX_NAME: usize = 4096;

/// What is wrong with an ELF file's headers.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a 64-bit little-endian ELF file ({what})")]
    Malformed { path: PathBuf, what: &'static str },
    #[error("{path} needs {name}, which is in none of the system library directories")]
    Missing { path: PathBuf, name: String },
    #[error("{0} needs more than {MAX_LIBRARIES} shared libraries")]
    TooMany(PathBuf),
}

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

struct Reader<'a> {
    file: &'a File,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if len > MAX_NAME.max(MAX_DYNAMIC * 16).max(MAX_PHNUM * 56)
            || offset.checked_add(len as u64)? > self.len
        {
            return None;
        }
        let mut buffer = vec![0u8; len];
        self.file.read_exact_at(&mut buffer, offset).ok()?;
        Some(buffer)
    }

    /// A NUL-terminated string at `offset` (bounded by MAX_NAME and the file's end).
    fn string(&self, offset: u64) -> Option<String> {
        let len = (self.len.checked_sub(offset)?).min(MAX_NAME as u64) as usize;
        let bytes = self.bytes(offset, len)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        String::from_utf8(bytes[..end].to_vec()).ok()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the interpreter and the needed libraries of an ELF file.
pub fn read_dynamic(path: &Path) -> Result<Dynamic, ElfError> {
    let io = |source| ElfError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    parse(&Reader { file: &file, len }).map_err(|what| ElfError::Malformed { path: path.to_owned(), what })
}

fn parse(r: &Reader<'_>) -> Result<Dynamic, &'static str> {
    let header = r.bytes(0, 64).ok_or("too short")?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err("bad magic or class");
    }
    let phoff = u64_at(&header, 32);
    let phentsize = usize::from(u16_at(&header, 54));
    let phnum = usize::from(u16_at(&header, 56));
    if phentsize < 56 || phnum > MAX_PHNUM {
        return Err("bad program headers");
    }
    let table = r.bytes(phoff, phentsize * phnum).ok_or("program headers out of the file")?;
    let mut loads = Vec::new();
    let (mut interp, mut dynamic) = (None, None);
    for ph in table.chunks_exact(phentsize) {
        let (kind, offset, vaddr, filesz) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 32));
        match kind {
            1 => loads.push((vaddr, offset, filesz)),
            2 => dynamic = Some((offset, filesz)),
            3 => interp = Some(offset),
            _ => {}
        }
    }
    let mut found = Dynamic::default();
    if let Some(offset) = interp {
        found.interpreter = Some(r.string(offset).ok_or("bad PT_INTERP")?);
    }
    let Some((offset, size)) = dynamic else { return Ok(found) };
    let count = (size / 16).min(MAX_DYNAMIC as u64) as usize;
    let entries = r.bytes(offset, count * 16).ok_or("PT_DYNAMIC out of the file")?;
    let mut strtab = None;
    let mut needed = Vec::new();
    for entry in entries.chunks_exact(16) {
        match (u64_at(entry, 0), u64_at(entry, 8)) {
            (0, _) => break,
            (1, name) => needed.push(name),
            (5, address) => strtab = Some(address),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(found);
    }
    // DT_STRTAB is an address: find the file offset through the PT_LOAD that maps it.
    let strtab = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    let base = loads
        .iter()
        .find(|(vaddr, _, filesz)| strtab >= *vaddr && strtab - vaddr < *filesz)
        .map(|(vaddr, offset, _)| strtab - vaddr + offset)
        .ok_or("DT_STRTAB outside the loaded segments")?;
    for name in needed {
        let name = r.string(base.checked_add(name).ok_or("bad DT_NEEDED")?).ok_or("bad DT_NEEDED")?;
        if name.is_empty() || name.contains('/') {
            return Err("bad DT_NEEDED name");
        }
        found.needed.push(name);
    }
    Ok(found)
}

/// Every file the loader needs to run `exec` (the interpreter and the libraries, transitively),
/// as host paths. Empty for a static executable.
pub fn loader_files(exec: &Path) -> Result<Vec<PathBuf>, ElfError> {
    let top = read_dynamic(exec)?;
    let mut files: Vec<PathBuf> = Vec::new();
    let Some(interpreter) = top.interpreter else { return Ok(files) };
    files.push(PathBuf::from(interpreter));
    let mut queue: Vec<(PathBuf, String)> = top.needed.into_iter().map(|n| (exec.to_owned(), n)).collect();
    let mut seen: Vec<String> = Vec::new();
    while let Some((by, name)) = queue.pop() {
        if seen.contains(&name) {
            continue;
        }
        if seen.len() >= MAX_LIBRARIES {
            return Err(ElfError::TooMany(exec.to_owned()));
        }
        seen.push(name.clone());
        let path = LIBRARY_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(&name))
            .find(|p| p.is_file())
            .ok_or_else(|| ElfError::Missing { path: by.clone(), name: name.clone() })?;
        let more = read_dynamic(&path)?;
        queue.extend(more.needed.into_iter().map(|n| (path.clone(), n)));
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn this_test_binary_needs_libc() {
        let exe = std::env::current_exe().unwrap();
        let files = loader_files(&exe).unwrap();
        assert!(
            files.iter().any(|f| f.file_name().unwrap().to_string_lossy().starts_with("libc.so")),
            "{files:?}"
        );
        assert!(files[0].to_string_lossy().contains("ld-linux"), "{files:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn hostile_headers_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), fix in any::<bool>()) {
            if fix && bytes.len() >= 64 {
                bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
                bytes[54] = 56;
                bytes[55] = 0;
            }
            let mut file = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut file, &bytes).unwrap();
            let _ = parse(&Reader { file: &file, len: bytes.len() as u64 });
        }
    }
}
