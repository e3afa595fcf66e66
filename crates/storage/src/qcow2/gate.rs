//! The gate through which imago opens an image's backing files: Kestrel decides here which files
//! an image header may make the host open, and how.

use super::header::{self, Header};
use super::Qcow2Error;
use crate::lock::{self, Access};
use imago::file::File as ImagoFile;
use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, StorageOpenOptions};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The deepest backing chain opened: deep enough for any real chain, shallow enough that a
/// hostile chain (each open recurses inside imago) cannot exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// What the gate learns while imago opens a chain; shared by the gate's copies (imago hands the
/// gate by value down each level).
#[derive(Default)]
struct State {
    allow_backing: bool,
    direct: bool,
    /// (device, inode) of every file in the chain so far, the top image included.
    seen: HashSet<(u64, u64)>,
    /// The backing files opened, top-most first.
    chain: Vec<PathBuf>,
    /// A second descriptor of each backing file opened, for the disk's fast path.
    files: Vec<(PathBuf, File)>,
    /// The format the last image's header names for its backing file (`None`: probe it).
    next_format: Option<String>,
    /// Whether imago probes that backing file's format (v2 images, or no format named).
    imago_probes: bool,
    /// The first refusal, kept typed (imago only carries an `io::Error` back).
    refusal: Option<Qcow2Error>,
}

/// Kestrel's [`ImplicitOpenGate`]: opens backing files read-only, non-blocking (a FIFO is
/// refused without waiting for a writer), only regular files and block devices, with a read
/// lock, never the same file twice in a chain, at most [`MAX_DEPTH`] deep; external data files
/// are refused.
#[derive(Clone)]
pub(super) struct BackingGate {
    state: Rc<RefCell<State>>,
}

impl BackingGate {
    /// A gate for the chain below the top image `top`.
    pub(super) fn new(
        top: &File,
        top_header: &Header,
        allow_backing: bool,
        direct: bool,
    ) -> Result<BackingGate, Qcow2Error> {
        let metadata = top.metadata().map_err(|e| Qcow2Error::io("reading the image's metadata", e))?;
        let mut seen = HashSet::new();
        seen.insert((metadata.dev(), metadata.ino()));
        Ok(BackingGate {
            state: Rc::new(RefCell::new(State {
                allow_backing,
                direct,
                seen,
                next_format: top_header.backing_format.clone(),
                imago_probes: top_header.imago_backing_format().is_none(),
                ..State::default()
            })),
        })
    }

    /// The backing files opened, top-most first.
    pub(super) fn chain(&self) -> Vec<PathBuf> {
        self.state.borrow().chain.clone()
    }

    /// The second descriptors of the backing files opened (see `State::files`).
    pub(super) fn take_files(&self) -> Vec<(PathBuf, File)> {
        std::mem::take(&mut self.state.borrow_mut().files)
    }

    /// The typed reason the gate refused something, if it did.
    pub(super) fn take_refusal(&self) -> Option<Qcow2Error> {
        self.state.borrow_mut().refusal.take()
    }

    fn refuse(&self, error: Qcow2Error) -> io::Error {
        let message = error.to_string();
        let mut state = self.state.borrow_mut();
        if state.refusal.is_none() {
            state.refusal = Some(error);
        }
        io::Error::new(io::ErrorKind::PermissionDenied, message)
    }

    fn open_backing(&self, path: &Path) -> Result<File, Qcow2Error> {
        let (allow, direct, depth) = {
            let state = self.state.borrow();
            (state.allow_backing, state.direct, state.chain.len())
        };
        if !allow {
            return Err(Qcow2Error::BackingDenied { path: path.to_owned() });
        }
        if depth >= MAX_DEPTH {
            return Err(Qcow2Error::BackingTooDeep { path: path.to_owned(), limit: MAX_DEPTH });
        }
        let flags = if direct { libc::O_DIRECT } else { 0 };
        let file = crate::raw::open_checked(path, true, flags).map_err(|error| match error {
            crate::raw::OpenError::NotADisk(kind) => {
                Qcow2Error::BackingNotFile { path: path.to_owned(), kind }
            }
            crate::raw::OpenError::Io(source) | crate::raw::OpenError::Size(source) => {
                Qcow2Error::Backing { path: path.to_owned(), source }
            }
        })?;
        let metadata =
            file.metadata().map_err(|source| Qcow2Error::Backing { path: path.to_owned(), source })?;
        if !self.state.borrow_mut().seen.insert((metadata.dev(), metadata.ino())) {
            return Err(Qcow2Error::BackingCycle { path: path.to_owned() });
        }
        self.check_qcow2_header(&file, path)?;
        lock::lock(&file, Access::Read)
            .map_err(|source| Qcow2Error::BackingLock { path: path.to_owned(), source })?;
        self.state.borrow_mut().chain.push(path.to_owned());
        Ok(file)
    }
}

impl BackingGate {
    /// A qcow2 backing file gets the same header checks as the top image before imago parses it
    /// (so a hostile backing file cannot make it allocate absurd tables either). Its format is
    /// the one its parent's header names, or (none named) probed from the magic, as imago and
    /// QEMU decide it.
    fn check_qcow2_header(&self, file: &File, path: &Path) -> Result<(), Qcow2Error> {
        let (format, probes) = {
            let mut state = self.state.borrow_mut();
            (state.next_format.take(), state.imago_probes)
        };
        let is_qcow2 = if probes {
            let magic = header::has_magic(file)
                .map_err(|source| Qcow2Error::Backing { path: path.to_owned(), source })?;
            // imago ignores a v2 image's backing format and probes: a raw backing file a guest
            // wrote a qcow2 header into must not become a qcow2 image (with a backing file of
            // the guest's choice).
            if magic && format.as_deref().is_some_and(|f| f != "qcow2") {
                return Err(Qcow2Error::BackingImage {
                    path: path.to_owned(),
                    source: Box::new(Qcow2Error::Invalid(format!(
                        "it has a qcow2 header but the image names its format {}",
                        format.unwrap_or_default()
                    ))),
                });
            }
            magic
        } else {
            format.as_deref() == Some("qcow2")
        };
        if !is_qcow2 {
            return Ok(());
        }
        let header = header::read(file)
            .map_err(|e| Qcow2Error::BackingImage { path: path.to_owned(), source: Box::new(e) })?;
        if header.dirty() || header.corrupt() {
            let e = if header.dirty() { Qcow2Error::Dirty } else { Qcow2Error::Corrupt };
            return Err(Qcow2Error::BackingImage { path: path.to_owned(), source: Box::new(e) });
        }
        let mut state = self.state.borrow_mut();
        state.imago_probes = header.imago_backing_format().is_none();
        state.next_format = header.backing_format;
        Ok(())
    }
}

impl ImplicitOpenGate<ImagoFile> for BackingGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        // The storage under `builder` came through `open_storage` (a file of ours), so opening
        // the format here only parses it; its own backing file comes back through this gate.
        let driver = builder.open(self.clone())?;
        Ok(FormatAccess::new(driver))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<ImagoFile> {
        let Some(path) = options.get_filename().map(Path::to_owned) else {
            return Err(io::Error::other("a backing file without a name"));
        };
        if options.get_writable() {
            // imago asks for writable storage only for external data files, which the header
            // check refused already.
            return Err(
                self.refuse(Qcow2Error::Unsupported(format!("external data file {}", path.display())))
            );
        }
        let file = self.open_backing(&path).map_err(|e| self.refuse(e))?;
        // Without a second descriptor the file is only read through imago, which is correct.
        if let Ok(copy) = file.try_clone() {
            self.state.borrow_mut().files.push((path.clone(), copy));
        }
        let direct = self.state.borrow().direct;
        ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(&path).write(false).direct(direct))
    }
}
