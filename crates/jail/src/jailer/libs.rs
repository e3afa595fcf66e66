//! A dynamically linked exec file needs its ELF interpreter and shared libraries inside the jail
//! (Firecracker's jailer has no such step: Firecracker is linked statically; a Kestrel built for
//! the GNU target is not). This reads the interpreter (`PT_INTERP`) and the `DT_NEEDED` libraries,
//! transitively, from the ELF headers, finds them in the system library directories, and copies
//! them into the jail at the same paths. A static exec file needs nothing.
//!
//! The reader is bounded: a hostile or odd file yields an error or nothing, never a panic or a
//! large allocation.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

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
    /// A loader or library path from an ELF file that the jailer refuses to copy: not absolute,
    /// with `.`/`..`, or outside the system library directories (say, `/etc/shadow`).
    #[error("{by} asks for {path:?}, which is not a plain absolute path in a system library directory")]
    UnsafePath { by: PathBuf, path: PathBuf },
    /// A loader or library that is a directory, a device or a FIFO (say, `/dev/zero`).
    #[error("{by} asks for {path}, which is not a regular file")]
    NotRegular { by: PathBuf, path: PathBuf },
}

/// A file the loader needs, opened once: the copy reads this descriptor (not the path again) and
/// at most `len` bytes, the size it had when it was checked to be a regular file.
#[derive(Debug)]
pub struct LoaderFile {
    /// The host path, which is also its path inside the jail.
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
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
    let opened = open_regular(path, path)?;
    read_opened(&opened)
}

fn read_opened(opened: &LoaderFile) -> Result<Dynamic, ElfError> {
    parse(&Reader { file: &opened.file, len: opened.len })
        .map_err(|what| ElfError::Malformed { path: opened.path.clone(), what })
}

/// Opens `path` (asked for by `by`) and checks, on the open descriptor, that it is a regular
/// file. O_NONBLOCK keeps a FIFO from hanging the open; it changes nothing for a regular file.
pub fn open_regular(path: &Path, by: &Path) -> Result<LoaderFile, ElfError> {
    let io = |source| ElfError::Io { path: path.to_owned(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.file_type().is_file() {
        return Err(ElfError::NotRegular { by: by.to_owned(), path: path.to_owned() });
    }
    Ok(LoaderFile { path: path.to_owned(), file, len: metadata.len() })
}

/// Whether `path` is absolute, made of normal components only (no `.`, `..` or `//`-tricks
/// survive `components()` as anything but these), and below one of `dirs`.
fn is_system_library_path(path: &Path, dirs: &[&Path]) -> bool {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) || !components.all(|c| matches!(c, Component::Normal(_)))
    {
        return false;
    }
    // A trailing `/.` is dropped by components(); refuse it through the raw bytes.
    let text = path.as_os_str().as_encoded_bytes();
    if text.ends_with(b"/.") || text.ends_with(b"/") {
        return false;
    }
    dirs.iter().any(|dir| path.starts_with(dir) && path != *dir)
}

/// Checks a path named by an ELF file and opens it as a regular file.
fn open_checked(path: PathBuf, by: &Path, dirs: &[&Path]) -> Result<LoaderFile, ElfError> {
    if !is_system_library_path(&path, dirs) {
        return Err(ElfError::UnsafePath { by: by.to_owned(), path });
    }
    open_regular(&path, by)
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

/// Every file the loader needs to run `exec` (the interpreter and the libraries, transitively,
/// including the interpreter's own), opened and checked: each path is absolute, plain and in a
/// system library directory, and a regular file. Empty for a static executable.
pub fn loader_files(exec: &Path) -> Result<Vec<LoaderFile>, ElfError> {
    let dirs: Vec<&Path> = LIBRARY_DIRS.iter().map(Path::new).collect();
    loader_files_in(exec, &dirs)
}

fn loader_files_in(exec: &Path, dirs: &[&Path]) -> Result<Vec<LoaderFile>, ElfError> {
    let top = read_dynamic(exec)?;
    let mut files: Vec<LoaderFile> = Vec::new();
    let Some(interpreter) = top.interpreter else { return Ok(files) };
    let interpreter = open_checked(PathBuf::from(interpreter), exec, dirs)?;
    let mut queue: Vec<(PathBuf, String)> = top.needed.into_iter().map(|n| (exec.to_owned(), n)).collect();
    // The loader may itself need libraries (a static-pie ld.so needs none; others might).
    let by_loader = read_opened(&interpreter)?;
    queue.extend(by_loader.needed.into_iter().map(|n| (interpreter.path.clone(), n)));
    files.push(interpreter);
    let mut seen: Vec<String> = Vec::new();
    while let Some((by, name)) = queue.pop() {
        if seen.contains(&name) {
            continue;
        }
        if seen.len() >= MAX_LIBRARIES {
            return Err(ElfError::TooMany(exec.to_owned()));
        }
        seen.push(name.clone());
        let path = dirs
            .iter()
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
            .ok_or_else(|| ElfError::Missing { path: by.clone(), name: name.clone() })?;
        let library = open_checked(path, &by, dirs)?;
        let more = read_opened(&library)?;
        queue.extend(more.needed.into_iter().map(|n| (library.path.clone(), n)));
        // Two names may resolve to one file (the loader is both PT_INTERP and DT_NEEDED).
        if !files.iter().any(|f| f.path == library.path) {
            files.push(library);
        }
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
            files.iter().any(|f| f.path.file_name().unwrap().to_string_lossy().starts_with("libc.so")),
            "{files:?}"
        );
        assert!(files[0].path.to_string_lossy().contains("ld-linux"), "{files:?}");
    }

    /// A minimal ELF file: one PT_LOAD mapping the whole file at address 0, an optional
    /// PT_INTERP, and a PT_DYNAMIC with the DT_NEEDED names and DT_STRTAB.
    fn elf(interp: Option<&str>, needed: &[&str]) -> Vec<u8> {
        let data = 64 + 3 * 56;
        let mut tail = Vec::new();
        let interp_at = data;
        if let Some(interp) = interp {
            tail.extend_from_slice(interp.as_bytes());
            tail.push(0);
        }
        let strtab = data + tail.len();
        tail.push(0);
        let mut names = Vec::new();
        for name in needed {
            names.push((data + tail.len() - strtab) as u64);
            tail.extend_from_slice(name.as_bytes());
            tail.push(0);
        }
        let dynamic = data + tail.len();
        for name in &names {
            tail.extend_from_slice(&1u64.to_le_bytes());
            tail.extend_from_slice(&name.to_le_bytes());
        }
        for (tag, value) in [(5u64, strtab as u64), (0, 0)] {
            tail.extend_from_slice(&tag.to_le_bytes());
            tail.extend_from_slice(&value.to_le_bytes());
        }
        let total = (data + tail.len()) as u64;
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&3u16.to_le_bytes());
        let interp_len = interp.map_or(0, |i| i.len() as u64 + 1);
        let headers = [
            (1u32, 0u64, total),
            (if interp.is_some() { 3 } else { 0 }, interp_at as u64, interp_len),
            (2, dynamic as u64, (names.len() as u64 + 2) * 16),
        ];
        for (kind, offset, size) in headers {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&offset.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&ph);
        }
        out.extend_from_slice(&tail);
        out
    }

    /// A library directory `<tmp>/lib` and an exec file `<tmp>/exec` asking for `interp`.
    fn setup(interp: &str, needed: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        let exec = tmp.path().join("exec");
        std::fs::write(&exec, elf(Some(interp), needed)).unwrap();
        (tmp, lib, exec)
    }

    #[test]
    fn crafted_elf_round_trips() {
        let (_tmp, _lib, exec) = setup("/lib/ld.so", &["liba.so", "libb.so"]);
        let found = read_dynamic(&exec).unwrap();
        assert_eq!(found.interpreter.as_deref(), Some("/lib/ld.so"));
        assert_eq!(found.needed, ["liba.so", "libb.so"]);
    }

    #[test]
    fn a_loader_outside_the_library_directories_is_refused() {
        let (tmp, lib, _) = setup("/x", &[]);
        std::fs::write(lib.join("ld.so"), elf(None, &[])).unwrap();
        let lib_text = lib.to_str().unwrap();
        for interp in [
            "/etc/shadow".to_owned(),
            "/../../etc/shadow".to_owned(),
            format!("{lib_text}/../exec"),
            format!("{lib_text}/../../../../etc/shadow"),
            "lib/ld.so".to_owned(),
            "ld.so".to_owned(),
            lib_text.to_owned(),
            format!("{lib_text}/."),
            String::new(),
        ] {
            let exec = tmp.path().join("exec");
            std::fs::write(&exec, elf(Some(&interp), &[])).unwrap();
            let result = loader_files_in(&exec, &[&lib]);
            assert!(matches!(result, Err(ElfError::UnsafePath { .. })), "{interp:?}: {result:?}");
            let message = result.unwrap_err().to_string();
            assert!(!message.contains('\n') && message.contains("not a plain absolute path"), "{message}");
        }
        // The same loader named plainly is accepted.
        std::fs::write(tmp.path().join("exec"), elf(Some(&format!("{lib_text}/ld.so")), &[])).unwrap();
        let files = loader_files_in(&tmp.path().join("exec"), &[&lib]).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, lib.join("ld.so"));
    }

    #[test]
    fn a_loader_or_library_that_is_not_a_regular_file_is_refused_without_reading_it() {
        let (tmp, lib, exec) = setup("/x", &[]);
        std::os::unix::fs::symlink("/dev/zero", lib.join("zero")).unwrap();
        std::fs::create_dir(lib.join("dir")).unwrap();
        let fifo = std::ffi::CString::new(lib.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path living across the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for name in ["zero", "dir", "fifo"] {
            let interp = lib.join(name);
            std::fs::write(&exec, elf(Some(interp.to_str().unwrap()), &[])).unwrap();
            let result = loader_files_in(&exec, &[&lib]);
            assert!(matches!(result, Err(ElfError::NotRegular { .. })), "{name}: {result:?}");
        }
        drop(tmp);
    }

    #[test]
    fn the_loaders_own_libraries_are_found_too() {
        let (_tmp, lib, exec) = setup("/x", &["liba.so"]);
        std::fs::write(&exec, elf(Some(lib.join("ld.so").to_str().unwrap()), &["liba.so"])).unwrap();
        std::fs::write(lib.join("ld.so"), elf(None, &["libloader.so"])).unwrap();
        std::fs::write(lib.join("liba.so"), elf(None, &[])).unwrap();
        std::fs::write(lib.join("libloader.so"), elf(None, &[])).unwrap();
        let files = loader_files_in(&exec, &[&lib]).unwrap();
        let mut names: Vec<_> = files.iter().map(|f| f.path.file_name().unwrap().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["ld.so", "liba.so", "libloader.so"]);
        assert!(files.iter().all(|f| f.len == std::fs::metadata(&f.path).unwrap().len()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn accepted_loader_paths_stay_in_a_library_directory(path in "(/|\\.\\.|\\.|lib|usr|x86_64-linux-gnu|ld\\.so|etc){0,12}") {
            let dirs = [Path::new("/lib"), Path::new("/usr/lib")];
            if is_system_library_path(Path::new(&path), &dirs) {
                prop_assert!(!path.split('/').any(|c| c == ".." || c == "."), "{path}");
                prop_assert!(path.starts_with("/lib/") || path.starts_with("/usr/lib/") || path.starts_with("//"), "{path}");
            }
        }

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
