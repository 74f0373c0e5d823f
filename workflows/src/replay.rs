//! Replays recorded histories from files, so a checked-in history is a regression test:
//!
//! ```no_run
//! # fn main() -> Result<(), orderflow_workflows::replay::ReplayDirError> {
//! let replayed = orderflow_workflows::replay::replay_dir(
//!     &orderflow_workflows::registry(),
//!     concat!(env!("CARGO_MANIFEST_DIR"), "/tests/histories"),
//! )?;
//! # Ok(()) }
//! ```
//!
//! A history is the JSON `orderflow history export ID` prints (an [`orderflow_core::History`]).
//! A failure names the file and carries the [`ReplayError`], which names the workflow, the event's
//! seq and the recorded and new commands.

use std::{
    error::Error,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use orderflow_core::{History, Registry, ReplayError, WorkflowState, replay};

/// Why a directory of histories did not replay.
#[derive(Debug)]
pub enum ReplayDirError {
    /// The directory or a file in it could not be read.
    Io { path: PathBuf, source: io::Error },
    /// A file is not a JSON history.
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A history does not replay against today's definitions.
    Replay { path: PathBuf, source: ReplayError },
    /// The directory holds no `*.json` file, so nothing would have been checked.
    Empty(PathBuf),
}

impl ReplayDirError {
    /// The file (or, for [`ReplayDirError::Empty`], the directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Parse { path, .. } | Self::Replay { path, .. } => path,
            Self::Empty(dir) => dir,
        }
    }
}

impl fmt::Display for ReplayDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            Self::Parse { path, source } => {
                write!(f, "{}: not a workflow history: {source}", path.display())
            }
            Self::Replay { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Empty(dir) => write!(f, "{}: no *.json histories to replay", dir.display()),
        }
    }
}

impl Error for ReplayDirError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
            Self::Replay { source, .. } => Some(source),
            Self::Empty(_) => None,
        }
    }
}

/// Replays every `*.json` history in `dir` (not its subdirectories), in file-name order, and
/// returns how many replayed. The first file that does not replay is the error; a directory with
/// no history is an error too, so a wrong path cannot pass silently.
pub fn replay_dir(registry: &Registry, dir: impl AsRef<Path>) -> Result<usize, ReplayDirError> {
    let dir = dir.as_ref();
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ReplayDirError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(ReplayDirError::Empty(dir.to_owned()));
    }
    files.sort();
    for file in &files {
        replay_file(registry, file)?;
    }
    Ok(files.len())
}

/// Replays one history file and returns the state it folds to.
pub fn replay_file(
    registry: &Registry,
    path: impl AsRef<Path>,
) -> Result<Box<dyn WorkflowState>, ReplayDirError> {
    let path = path.as_ref();
    let history = read_history(path)?;
    replay(registry, &history).map_err(|source| ReplayDirError::Replay {
        path: path.to_owned(),
        source,
    })
}

/// Reads one history file.
pub fn read_history(path: impl AsRef<Path>) -> Result<History, ReplayDirError> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(|source| ReplayDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ReplayDirError::Parse {
        path: path.to_owned(),
        source,
    })
}
