//! One error type for every operator or training-data file: it always names the file, and the
//! line when there is one, so a person can jump straight to the problem.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem is: a file, and the line (1-based) when the problem is on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.file.display(), line),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// A problem in a data or configuration file. Displays as ONE line:
/// `file:line: problem` (or `file: problem` when no line applies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct FileError {
    pub at: Location,
    pub message: String,
}

impl FileError {
    /// A problem on a given line of `file`.
    pub fn at_line(file: &Path, line: usize, message: impl Into<String>) -> Self {
        Self::new(file, Some(line), message)
    }

    /// A problem with the file (or folder) as a whole.
    pub fn in_file(file: &Path, message: impl Into<String>) -> Self {
        Self::new(file, None, message)
    }

    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        FileError {
            at: Location {
                file: file.to_path_buf(),
                line,
            },
            message: one_line(&message.into()),
        }
    }

    /// An I/O error reading `file`, worded like the shell does (`no such file or directory`).
    pub fn io(file: &Path, err: &std::io::Error) -> Self {
        let message = match err.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => format!("cannot read: {err}"),
        };
        Self::in_file(file, message)
    }

    pub fn file(&self) -> &Path {
        &self.at.file
    }

    pub fn line(&self) -> Option<usize> {
        self.at.line
    }
}

/// Error messages must stay on one line (they end up in logs and CLI output line by line).
fn one_line(message: &str) -> String {
    if !message.contains(['\n', '\r']) {
        return message.to_string();
    }
    message
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A compile error of `regex` in one line (the crate's own message spans several lines with a
/// caret diagram, which would break the one-line error rule).
pub fn regex_error_message(pattern: &str, err: &regex::Error) -> String {
    let detail = match err {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
            .unwrap_or_else(|| one_line(s)),
        regex::Error::CompiledTooBig(limit) => {
            format!("compiled pattern exceeds the size limit of {limit} bytes")
        }
        other => one_line(&other.to_string()),
    };
    format!("invalid regex '{pattern}': {detail}")
}

/// Reads a whole file as UTF-8; invalid UTF-8 is reported with the line it is on.
pub fn read_utf8(path: &Path) -> Result<String, FileError> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, &e))?;
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.drain(..'\u{feff}'.len_utf8());
            }
            Ok(text)
        }
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..good].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(FileError::at_line(
                path,
                line,
                "invalid UTF-8 (files must be UTF-8 encoded)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_and_line() {
        let e = FileError::at_line(Path::new("train.tsv"), 17, "bad");
        assert_eq!(e.to_string(), "train.tsv:17: bad");
        let e = FileError::in_file(Path::new("x.yml"), "gone");
        assert_eq!(e.to_string(), "x.yml: gone");
    }

    #[test]
    fn multi_line_messages_are_joined() {
        let e = FileError::at_line(Path::new("a"), 1, "one\n  two\r\nthree");
        assert_eq!(e.to_string(), "a:1: one two three");
    }

    #[test]
    fn not_found_is_worded_like_the_shell() {
        let err = std::fs::read("/definitely/not/here.yml").unwrap_err();
        let e = FileError::io(Path::new("here.yml"), &err);
        assert_eq!(e.to_string(), "here.yml: no such file or directory");
    }

    #[test]
    fn regex_errors_fit_on_one_line() {
        let pattern = String::from("a(b"); // built at run time: clippy rejects a literal bad regex
        let err = regex::Regex::new(&pattern).unwrap_err();
        let msg = regex_error_message(&pattern, &err);
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("invalid regex 'a(b': "), "{msg}");
        assert!(msg.contains("unclosed group"), "{msg}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.tsv");
        std::fs::write(&p, b"ok\tgreeting\nbad \xff\tgreeting\n").unwrap();
        let e = read_utf8(&p).unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.message.contains("UTF-8"));
    }

    #[test]
    fn bom_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bom.tsv");
        std::fs::write(&p, "\u{feff}你好\tgreeting\n").unwrap();
        assert_eq!(read_utf8(&p).unwrap(), "你好\tgreeting\n");
    }
}
