//! One config shape for the three servers: a `run` command's settings are declared once
//! with [`run_args!`](crate::run_args) (each is a flag and a key of the `--config` YAML
//! file under the same name), merged once by [`load_layers`] (flags win over the file;
//! unknown keys are refused), then each binary's `Config::load` applies defaults and
//! checks. Errors name the file, flag or key.

use std::path::{Path, PathBuf};

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

/// Whether a server runs in Kubernetes mode (`--kubernetes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// On with `--kubeconfig`, or when running in a pod (the API server's address in the
    /// environment and a service-account token mounted), off otherwise.
    #[default]
    Auto,
    /// Always; start fails when no cluster can be reached from the configuration.
    On,
    /// Never.
    Off,
}

/// Where Kubernetes mounts a pod's service-account token.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl KubernetesMode {
    /// Whether Kubernetes mode is on, given `--kubeconfig`.
    pub fn enabled(self, kubeconfig: Option<&Path>) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => kubeconfig.is_some() || in_pod(),
        }
    }
}

/// Whether this process runs in a Kubernetes pod with API access.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && Path::new(IN_CLUSTER_TOKEN).exists()
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

/// How a setting given on the command line (or in the environment) sits over the same
/// setting in the config file: the command line wins when it says anything.
pub trait Layer {
    /// `self` (the command line) over `lower` (the file).
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl<T> Layer for Vec<T> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

/// A switch (`--accept-http10`): on when either layer turns it on.
impl Layer for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Declares a `run` command's settings once: the struct derives `clap::Args` (the flags)
/// and `serde::Deserialize` (the `--config` YAML file, kebab-case, unknown keys refused),
/// and implements [`Layer`] field by field, so a setting is written in one place and
/// [`load_layers`] merges the two the same way in every binary. Fields are `Option`,
/// `Vec` or `bool`: defaults belong to the effective config, after the merge, so a file
/// can set what a flag default would otherwise hide. The `config` field (the file's
/// own path) must carry `#[serde(skip)]`.
#[macro_export]
macro_rules! run_args {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        $vis struct $name {
            $(
                $(#[$fmeta])*
                $fvis $field: $ty,
            )*
        }

        impl $crate::config::Layer for $name {
            fn over(self, lower: Self) -> Self {
                Self {
                    $( $field: $crate::config::Layer::over(self.$field, lower.$field), )*
                }
            }
        }
    };
}

/// The command line over the config file it names (if any): the one merge of every
/// binary's settings.
pub fn load_layers<T>(flags: T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Layer + DeserializeOwned + Default,
{
    match file {
        Some(path) => Ok(flags.over(read_yaml(path)?)),
        None => Ok(flags),
    }
}

/// `serde(deserialize_with)` helpers for settings read from the config file in the same
/// syntax as their flags.
pub mod de {
    use std::str::FromStr;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// A duration in Warden's one syntax (`500ms`, `10s`, `1h30m`, `90d`).
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        warden_proto::duration::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    /// Any value with the `FromStr` its flag uses (key types, modes).
    pub fn from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    crate::run_args! {
        /// A command's settings, declared once.
        struct Args {
            #[arg(long)]
            #[serde(skip)]
            config: Option<PathBuf>,
            #[arg(long)]
            name: Option<String>,
            #[arg(long, value_parser = warden_proto::duration::parse_flag)]
            #[serde(deserialize_with = "de::duration")]
            ttl: Option<Duration>,
            #[arg(long)]
            audience: Vec<String>,
            #[arg(long)]
            strict: bool,
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn flags_win_and_the_file_fills_in() {
        let (_d, path) = file("name: file\nttl: 1h30m\naudience: [a, b]\nstrict: true\n");
        let flags = Args {
            name: Some("flag".into()),
            ..Default::default()
        };
        let merged = load_layers(flags, Some(&path)).unwrap();
        assert_eq!(merged.name.as_deref(), Some("flag"));
        assert_eq!(merged.ttl, Some(Duration::from_secs(5400)));
        assert_eq!(merged.audience, ["a", "b"]);
        assert!(merged.strict);

        let flags = Args {
            audience: vec!["c".into()],
            ..Default::default()
        };
        let merged = load_layers(flags, Some(&path)).unwrap();
        assert_eq!(
            merged.audience,
            ["c"],
            "a list on the command line replaces the file's"
        );
        assert_eq!(load_layers(Args::default(), None).unwrap().name, None);
    }

    #[test]
    fn the_file_is_refused_with_its_path_and_key() {
        for (text, key) in [
            ("nmae: typo\n", "nmae"),
            ("ttl: 10\n", "ttl"),
            ("config: other.yaml\n", "config"),
        ] {
            let (_d, path) = file(text);
            let err = load_layers(Args::default(), Some(&path))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("run.yaml") && err.contains(key),
                "{text:?}: {err}"
            );
        }
        let err = load_layers(Args::default(), Some(Path::new("/nonexistent/run.yaml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/run.yaml"),
            "{err}"
        );
    }
}
