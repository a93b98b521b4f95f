//! The lab's error type.

use std::{fmt, io};

/// Why building, changing or tearing down a lab failed.
#[derive(Debug)]
pub enum LabError {
    /// A command exited unsuccessfully.
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error.
        message: String,
    },
    /// A system call or a command start failed.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The lab description is invalid.
    Spec(String),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Command { command, message } => write!(f, "`{command}` failed: {message}"),
            LabError::Io { context, source } => write!(f, "{context}: {source}"),
            LabError::Spec(message) => write!(f, "invalid lab: {message}"),
        }
    }
}

impl std::error::Error for LabError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LabError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
