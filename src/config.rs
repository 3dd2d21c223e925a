//! Flags shared by several subcommands (SPEC §6): brokers, database, topics, and
//! librdkafka pass-through. Every flag also reads an environment variable.
//!
//! Touches nothing: builds configurations only. Secrets given with `--kafka`
//! (passwords, keys) are redacted whenever a configuration is printed.

use std::fmt;

use clap::Args;
use rdkafka::ClientConfig;

/// A `KEY=VALUE` pair handed to librdkafka as is (TLS, SASL, tuning).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSetting {
    pub key: String,
    pub value: String,
}

impl KafkaSetting {
    fn is_secret(&self) -> bool {
        let key = self.key.to_ascii_lowercase();
        ["password", "secret", "key", "token", "credential"]
            .iter()
            .any(|word| key.contains(word))
            && !key.ends_with(".location")
    }
}

impl fmt::Debug for KafkaSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_secret() {
            write!(f, "{}=<redacted>", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

impl std::str::FromStr for KafkaSetting {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(KafkaSetting {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("expected KEY=VALUE, got {text:?}")),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CONSCOPE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// librdkafka setting passed through as is (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(
        long = "kafka",
        env = "CONSCOPE_KAFKA",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub kafka: Vec<KafkaSetting>,
}

impl KafkaArgs {
    /// A client configuration with the brokers and every pass-through setting.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[])
    }

    /// Like `client_config`, with our `defaults` underneath: a setting the user
    /// passed with `--kafka` always wins.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for setting in &self.kafka {
            config.set(&setting.key, &setting.value);
        }
        config
    }
}

#[derive(Args, Clone)]
pub struct DbArgs {
    /// PostgreSQL connection string. One database (or schema) holds one job's state.
    /// Global, so `conscope rules add --database-url …` works as well as
    /// `conscope rules --database-url … add`.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/conscope"
    )]
    pub database_url: String,
}

impl fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbArgs {{ database_url: {} }}", redact_url(&self.database_url))
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user:<redacted>@host/db
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((credentials, host)) = rest.rsplit_once('@') {
            if let Some((user, _password)) = credentials.split_once(':') {
                return format!("{scheme}://{user}:<redacted>@{host}");
            }
        }
    }
    if url.contains("password") {
        return "<connection string with a password, redacted>".to_owned();
    }
    url.to_owned()
}

#[derive(Args, Clone, Debug)]
pub struct TopicArgs {
    /// Topic of raw price observations.
    #[arg(long, env = "CONSCOPE_INPUT_TOPIC", default_value = "raw_prices")]
    pub input_topic: String,
    /// Topic the job publishes alerts to.
    #[arg(long, env = "CONSCOPE_ALERTS_TOPIC", default_value = "price_alerts")]
    pub alerts_topic: String,
    /// Dead-letter topic for rejected messages.
    #[arg(long, env = "CONSCOPE_DLQ_TOPIC", default_value = "raw_prices.dlq")]
    pub dlq_topic: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let setting: KafkaSetting = "sasl.password=hunter2".parse().unwrap();
        assert_eq!(format!("{setting:?}"), "sasl.password=<redacted>");
        let setting: KafkaSetting = "ssl.key.location=/etc/k.pem".parse().unwrap();
        assert_eq!(format!("{setting:?}"), "ssl.key.location=/etc/k.pem");
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:<redacted>@db:5432/x"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
    }

    #[test]
    fn pass_through_settings_override_defaults() {
        let args = KafkaArgs {
            brokers: "b:9092".into(),
            kafka: vec!["linger.ms=50".parse().unwrap()],
        };
        let config = args.client_config_with(&[("linger.ms", "2"), ("acks", "all")]);
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn malformed_setting_is_an_error() {
        assert!("novalue".parse::<KafkaSetting>().is_err());
        assert!("=x".parse::<KafkaSetting>().is_err());
    }
}
