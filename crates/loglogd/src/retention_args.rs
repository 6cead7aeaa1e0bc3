//! `loglogd`'s retention settings (`loglogd::Retention`): flags, LOGLOG_*
//! variables and the config file's `[retention]` table.

use std::time::Duration;

use loglogd::{parse_byte_size, parse_duration, Retention};

use super::FileSize;

/// Each setting from its flag, its LOGLOG_* variable, the config file's
/// `[retention]` table, or the default (retention off).
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Retention (off unless a max is set; see README)")]
pub(crate) struct RetentionArgs {
    /// Trim whole segments while the committed log is larger (e.g. 10GiB).
    #[arg(long, env = "LOGLOG_RETENTION_MAX_BYTES", value_name = "SIZE", value_parser = parse_byte_size)]
    retention_max_bytes: Option<u64>,
    /// Trim whole segments last written longer ago (e.g. 168h, 30m).
    #[arg(long, env = "LOGLOG_RETENTION_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    retention_max_age: Option<Duration>,
    /// Always keep at least this many committed bytes (default 0).
    #[arg(long, env = "LOGLOG_RETENTION_MIN_BYTES", value_name = "SIZE", value_parser = parse_byte_size)]
    retention_min_bytes: Option<u64>,
    /// How often the policy is evaluated (default 10s).
    #[arg(long, env = "LOGLOG_RETENTION_CHECK_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    retention_check_interval: Option<Duration>,
}

/// The `[retention]` table of a config file.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRetention {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age: Option<String>,
    min_bytes: Option<FileSize>,
    check_interval: Option<String>,
}

impl RetentionArgs {
    /// Fills what no flag or variable gave from the config file's table.
    pub(crate) fn fill_from(&mut self, file: FileRetention) -> Result<(), String> {
        let size = |name: &str, value: Option<FileSize>| {
            value
                .map(|value| {
                    value
                        .bytes()
                        .map_err(|error| format!("retention.{name}: {error}"))
                })
                .transpose()
        };
        let duration = |name: &str, value: Option<String>| {
            value
                .map(|text| {
                    parse_duration(&text).map_err(|error| format!("retention.{name}: {error}"))
                })
                .transpose()
        };
        let max_bytes = size("max_bytes", file.max_bytes)?;
        let min_bytes = size("min_bytes", file.min_bytes)?;
        let max_age = duration("max_age", file.max_age)?;
        let check_interval = duration("check_interval", file.check_interval)?;
        self.retention_max_bytes = self.retention_max_bytes.or(max_bytes);
        self.retention_min_bytes = self.retention_min_bytes.or(min_bytes);
        self.retention_max_age = self.retention_max_age.or(max_age);
        self.retention_check_interval = self.retention_check_interval.or(check_interval);
        Ok(())
    }

    /// The defaults with what was given laid over them.
    pub(crate) fn retention(&self) -> Retention {
        let defaults = Retention::default();
        Retention {
            max_bytes: self.retention_max_bytes,
            max_age: self.retention_max_age,
            min_bytes: self.retention_min_bytes.unwrap_or(defaults.min_bytes),
            check_interval: self
                .retention_check_interval
                .unwrap_or(defaults.check_interval),
        }
    }
}

/// The effective policy as a `[retention]` table (an unset max is absent).
pub(crate) fn printed(retention: &Retention) -> FileRetention {
    FileRetention {
        max_bytes: retention.max_bytes.map(FileSize::Bytes),
        max_age: retention.max_age.map(loglogd::format_duration),
        min_bytes: Some(FileSize::Bytes(retention.min_bytes)),
        check_interval: Some(loglogd::format_duration(retention.check_interval)),
    }
}
