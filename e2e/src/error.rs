//! The runner's one error type: a message that says what failed and where.

use std::fmt;
use std::io;
use std::path::Path;

#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn msg(text: impl Into<String>) -> Error {
        Error(text.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, e: io::Error) -> Error {
        Error(format!("{}: {e}", path.display()))
    }

    /// An I/O error while doing `what`.
    pub fn during(what: &str, e: io::Error) -> Error {
        Error(format!("{what}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}
