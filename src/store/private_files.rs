//! The log's files are readable by the service's user only: the folder is created 0700, the
//! database and SQLite's `-wal` / `-shm` files are 0600 (SQLite gives the side files the main
//! file's mode, so the main file is created 0600 before SQLite opens it, and all three are
//! tightened after, for a database created by an older version). The texts are sealed, but ids,
//! intents and times are not, and the WAL holds recent pages in clear.

use std::path::{Path, PathBuf};

use super::StoreError;

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// Creates the parent folder (0700) and an empty database file (0600) when missing.
pub fn prepare(db: &Path) -> Result<(), StoreError> {
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(parent)
            .map_err(|e| io("create", parent, e))?;
    }
    if !db.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(db) {
            Ok(_) => {}
            // Created meanwhile by another process: tighten() handles its mode.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", db, e)),
        }
    }
    Ok(())
}

/// The database and its side files, as SQLite names them.
pub fn files(db: &Path) -> [PathBuf; 3] {
    let side = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), side("-wal"), side("-shm")]
}

/// Sets mode 0600 on the database and the side files that exist.
pub fn tighten(db: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    for f in files(db) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("restrict the mode of", &f, e)),
        }
    }
    Ok(())
}
