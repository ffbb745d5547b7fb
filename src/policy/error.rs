//! Errors raised while loading the operator files. Every problem names the file and line so an
//! operator can fix it without reading code.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `file:line: problem`.
    #[error("{file}:{line}: {msg}")]
    Config {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl PolicyError {
    pub fn config(file: &Path, line: usize, msg: impl Into<String>) -> Self {
        PolicyError::Config {
            file: file.display().to_string(),
            line,
            msg: msg.into(),
        }
    }

    /// The line this error points at (0 for I/O errors).
    pub fn line(&self) -> usize {
        match self {
            PolicyError::Config { line, .. } => *line,
            PolicyError::Io { .. } => 0,
        }
    }
}
