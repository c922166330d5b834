//! The crate's error type: one enum so that callers (the agent, the guest)
//! can report any manifest problem with the same `source:line:col` shape.

use crate::text::{ParseError, Position, SerializeError};

/// Anything that went wrong reading, checking or writing a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not a well-formed manifest.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The manifest cannot be written (a name or value the format cannot carry).
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    /// Well-formed text whose content is wrong for its kind: a missing
    /// required field, a bad status, a malformed MAC address, ...
    #[error("{source_name}:{line}:{column}: error: {message}")]
    Invalid {
        /// The input's name.
        source_name: String,
        /// 1-based line (0 when the manifest was built in memory).
        line: u64,
        /// 1-based column.
        column: u64,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl Error {
    /// An `Invalid` error at `at` in `source`.
    pub fn invalid(source: &str, at: Position, message: impl Into<String>) -> Self {
        Error::Invalid {
            source_name: source.to_string(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }

    /// The human message without the location prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::Parse(e) => &e.message,
            Error::Serialize(e) => &e.message,
            Error::Invalid { message, .. } => message,
        }
    }

    /// Line and column the error points at (0:0 when there is none).
    pub fn position(&self) -> Position {
        match self {
            Error::Parse(e) => Position {
                line: e.line,
                column: e.column,
            },
            Error::Serialize(_) => Position::default(),
            Error::Invalid { line, column, .. } => Position {
                line: *line,
                column: *column,
            },
        }
    }
}
