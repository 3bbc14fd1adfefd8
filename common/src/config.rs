//! Config files: every flag of a `run` command can also be set in a YAML file under the
//! same name; unknown keys are refused; errors name the file, flag or key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used, naming the flag or file key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A setting has a value that cannot be used.
    #[error("{setting}: {message}")]
    Invalid {
        /// Flag / key name.
        setting: &'static str,
        /// What was expected.
        message: String,
    },
}

/// A setting with a value that cannot be used.
pub fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// A duration written in a config file (`24h`, `90d`, `1h30m`), named on error.
pub fn file_duration(
    setting: &'static str,
    value: Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| warden_proto::duration::parse(&v).map_err(|e| invalid(setting, e.to_string())))
        .transpose()
}

/// Reads a YAML config file; an empty file is all defaults.
pub fn read_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
