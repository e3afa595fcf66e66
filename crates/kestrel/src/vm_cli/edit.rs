//! `kestrel vm edit NAME` without `--file`: the definition as TOML in `$VISUAL`/`$EDITOR`, sent
//! back for the daemon to check. A definition that does not parse or that the daemon refuses is
//! kept in its file, and the error says where, so no edit is lost.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hyper::Method;
use model::manager::vm::VmInfo;

use super::definition::{self, DefinitionError};
use super::vm_path;
use crate::manager_client::{Client, ClientError};

/// Why an edit was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot write the definition to {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot run the editor '{editor}': {source}")]
    Editor { editor: String, source: std::io::Error },
    #[error("the editor '{editor}' failed ({status}); the edited definition is kept in {path}")]
    EditorFailed { editor: String, status: std::process::ExitStatus, path: String },
    #[error("{source}; the edited definition is kept in {path}")]
    Invalid { source: DefinitionError, path: String },
    #[error("{source}; the edited definition is kept in {path}")]
    Refused { source: ClientError, path: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
}

/// Edits VM `vm`'s definition; `None` when the file came back unchanged.
pub fn in_editor(client: &Client, vm: &str) -> Result<Option<VmInfo>, EditError> {
    let info: VmInfo = client.request(Method::GET, &vm_path(vm, ""), None::<&()>)?;
    let original = definition::to_toml(&info.definition)?;
    let path = scratch_file(&info.summary.name, &original)?;
    let shown = path.display().to_string();
    let editor = editor();
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|source| EditError::Editor { editor: editor.clone(), source })?;
    if !status.success() {
        return Err(EditError::EditorFailed { editor, status, path: shown });
    }
    let edited =
        std::fs::read_to_string(&path).map_err(|source| EditError::Write { path: shown.clone(), source })?;
    if edited == original {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let definition = definition::parse_toml(&edited, &shown)
        .map_err(|source| EditError::Invalid { source, path: shown.clone() })?;
    let info = client
        .request(Method::PUT, &vm_path(vm, ""), Some(&definition))
        .map_err(|source| EditError::Refused { source, path: shown.clone() })?;
    let _ = std::fs::remove_file(&path);
    Ok(Some(info))
}

/// `$VISUAL`, else `$EDITOR`, else `vi` (a shell word list: `code --wait` works).
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned())
}

/// A new owner-only file in the temporary directory holding `text`.
fn scratch_file(name: &str, text: &str) -> Result<PathBuf, EditError> {
    let dir = std::env::temp_dir();
    let mut attempt = 0u32;
    loop {
        let path = dir.join(format!("kestrel-edit-{name}-{}-{attempt}.toml", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut file) => {
                file.write_all(text.as_bytes()).map_err(|source| write_error(&path, source))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(source) => return Err(write_error(&path, source)),
        }
    }
}

fn write_error(path: &Path, source: std::io::Error) -> EditError {
    EditError::Write { path: path.display().to_string(), source }
}
