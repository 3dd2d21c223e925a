//! Flags shared by several subcommands (SPEC §6): brokers, database, topics, and
//! librdkafka pass-through. Every flag also reads an environment variable.
//!
//! Touches nothing: builds configurations only. Secrets given with `--kafka`
//! (passwords, keys) are redacted whenever a configuration is printed, never
//! appear in an error about a malformed setting, and `--help` never shows the
//! values of the environment variables.
//!
//! # `--kafka` and `CONSCOPE_KAFKA`
//! One `--kafka KEY=VALUE` is one setting, whatever its value holds (commas
//! included). `CONSCOPE_KAFKA` holds several, separated by commas, but a comma
//! starts a new setting only where it is followed by something that looks like a
//! librdkafka property name and `=` (see [`split_env`]): `debug=broker,topic` and
//! `sasl.password=a,b` are one setting each. Every setting is checked against
//! librdkafka when the command line is parsed, so a typo fails at once.

use std::ffi::OsString;
use std::fmt;

use clap::builder::ValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use rdkafka::ClientConfig;

/// The environment variable that holds several `--kafka` settings.
pub const KAFKA_ENV: &str = "CONSCOPE_KAFKA";

/// librdkafka properties whose name is one word and whose value can be a string;
/// every other property name is dotted.
const ONE_WORD_PROPERTIES: [&str; 6] = [
    "acks",
    "debug",
    "enabled_events",
    "log_level",
    "partitioner",
    "retries",
];

/// A `KEY=VALUE` pair handed to librdkafka as is (TLS, SASL, tuning).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSetting {
    pub key: String,
    pub value: String,
}

impl KafkaSetting {
    fn is_secret(&self) -> bool {
        is_secret_key(&self.key)
    }
}

/// Whether the value of property `key` must never be printed.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "token",
        "credential",
        "oauthbearer.config",
        "jaas",
    ]
    .iter()
    .any(|word| key.contains(word))
        && !key.ends_with(".location")
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

/// A `--kafka` setting that cannot be used. The messages name the setting by
/// where it came from and show a key only when it cannot be part of a secret,
/// and never a secret's value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("{origin}: expected KEY=VALUE, got text without '=' (not shown: it may be part of a secret)")]
    NoEquals { origin: String },
    #[error("{origin}: expected KEY=VALUE, got an empty KEY (the value is not shown)")]
    EmptyKey { origin: String },
    #[error("{origin}: not valid UTF-8 (not shown)")]
    NotUtf8 { origin: String },
    #[error("{origin}: {key:?} is not a librdkafka property")]
    Unknown { origin: String, key: String },
    #[error(
        "{origin}: names no librdkafka property and follows the secret {after}, so it may be part of \
         that value (its name is not shown); give a value that contains ',NAME=' with its own --kafka"
    )]
    UnknownAfterSecret { origin: String, after: String },
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

/// Parses one `KEY=VALUE` setting; `origin` says where it came from, for errors.
fn parse_setting(text: &str, origin: &str) -> Result<KafkaSetting, SettingError> {
    let origin = origin.to_owned();
    let Some((key, value)) = text.split_once('=') else {
        return Err(SettingError::NoEquals { origin });
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(SettingError::EmptyKey { origin });
    }
    Ok(KafkaSetting {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

impl std::str::FromStr for KafkaSetting {
    type Err = SettingError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_setting(text, "--kafka")
    }
}

/// Whether `name` looks like a librdkafka property: lower-case words of letters,
/// digits and `_`, joined by dots (`sasl.password`, `linger.ms`), or one of the
/// few one-word properties.
fn looks_like_property(name: &str) -> bool {
    let words = name.split('.').all(|word| {
        word.starts_with(|first: char| first.is_ascii_lowercase())
            && word
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    });
    words && (name.contains('.') || ONE_WORD_PROPERTIES.contains(&name))
}

/// Splits the value of `CONSCOPE_KAFKA` into settings: at each comma followed
/// by `NAME=` where NAME looks like a librdkafka property, and nowhere else, so
/// values keep their commas. A value that itself contains such `,NAME=` cannot
/// be told apart from two settings: it needs its own `--kafka`.
pub fn split_env(text: &str) -> Vec<&str> {
    let mut settings = Vec::new();
    let mut start = 0;
    for (comma, _) in text.match_indices(',') {
        let rest = &text[comma + 1..];
        if rest
            .split_once('=')
            .is_some_and(|(name, _)| looks_like_property(name))
        {
            settings.push(&text[start..comma]);
            start = comma + 1;
        }
    }
    settings.push(&text[start..]);
    settings
}

/// Asks librdkafka whether it accepts `setting` (no client is created, nothing
/// connects). Its messages may quote the value: for a secret, such a message is
/// replaced.
fn check_with_librdkafka(
    setting: &KafkaSetting,
    origin: &str,
    previous: Option<&KafkaSetting>,
) -> Result<(), SettingError> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaConfRes;
    let mut config = ClientConfig::new();
    config.set(&setting.key, &setting.value);
    let Err(error) = config.create_native_config() else {
        return Ok(());
    };
    let origin = origin.to_owned();
    Err(match error {
        KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..) => match previous {
            Some(previous) if previous.is_secret() => SettingError::UnknownAfterSecret {
                origin,
                after: previous.key.clone(),
            },
            _ => SettingError::Unknown {
                origin,
                key: setting.key.clone(),
            },
        },
        KafkaError::ClientConfig(_, description, ..)
            if !setting.is_secret() || !description.contains(setting.value.as_str()) =>
        {
            SettingError::Invalid {
                origin,
                reason: description,
            }
        }
        _ => SettingError::Invalid {
            origin,
            reason: format!("librdkafka refuses the value of {} (not shown)", setting.key),
        },
    })
}

/// The settings of the `--kafka` flags (one each) or of `CONSCOPE_KAFKA`
/// (split by [`split_env`]), each checked by librdkafka.
fn parse_settings(raw: &[OsString], from_env: bool) -> Result<Vec<KafkaSetting>, SettingError> {
    let mut settings: Vec<KafkaSetting> = Vec::new();
    for (flag, raw) in raw.iter().enumerate() {
        let flag_origin = if from_env {
            KAFKA_ENV.to_owned()
        } else {
            format!("--kafka #{}", flag + 1)
        };
        let text = raw.to_str().ok_or_else(|| SettingError::NotUtf8 {
            origin: flag_origin.clone(),
        })?;
        let pieces = if from_env { split_env(text) } else { vec![text] };
        for (index, piece) in pieces.into_iter().enumerate() {
            let origin = if from_env {
                format!("{KAFKA_ENV} setting #{}", index + 1)
            } else {
                flag_origin.clone()
            };
            let setting = parse_setting(piece, &origin)?;
            // Only a split can make a piece of a value look like a new setting.
            let previous = if from_env && index > 0 {
                settings.last()
            } else {
                None
            };
            check_with_librdkafka(&setting, &origin, previous)?;
            settings.push(setting);
        }
    }
    Ok(settings)
}

#[derive(Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// librdkafka settings, in the order given.
    pub kafka: Vec<KafkaSetting>,
}

/// The `--kafka` flag, reading `env` when absent.
fn kafka_arg(env: &'static str) -> Arg {
    Arg::new("kafka")
        .long("kafka")
        .value_name("KEY=VALUE")
        .action(ArgAction::Append)
        // Strings are checked by parse_settings, whose errors never quote a secret
        // (clap's own would quote the value).
        .value_parser(ValueParser::os_string())
        .env(env)
        .hide_env_values(true)
        .help("librdkafka setting passed through as is (repeatable), e.g. security.protocol=SASL_SSL")
        .long_help(
            "librdkafka setting passed through as is (repeatable): TLS, SASL, tuning, e.g. \
             security.protocol=SASL_SSL. One --kafka is one setting: its value may contain commas \
             (--kafka debug=broker,topic). CONSCOPE_KAFKA holds several, separated by commas; a comma \
             starts a new setting only where a librdkafka property name and '=' follow it (a dotted \
             lower-case name such as sasl.password=, or acks=, debug=, enabled_events=, log_level=, \
             partitioner=, retries=), so CONSCOPE_KAFKA='debug=broker,topic,sasl.password=a,b' is two \
             settings. A value that contains such ',NAME=' must be given with --kafka. Settings are \
             checked by librdkafka at start; the values of secrets (passwords, keys, tokens) are never \
             printed.",
        )
}

impl Args for KafkaArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new("brokers")
                .long("brokers")
                .env("CONSCOPE_BROKERS")
                .default_value("127.0.0.1:9092")
                .help("Kafka bootstrap servers"),
        )
        .arg(kafka_arg(KAFKA_ENV))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The `--kafka` settings in `matches` (taken out of them).
fn settings_from(matches: &mut ArgMatches) -> Result<Vec<KafkaSetting>, clap::Error> {
    let from_env = matches.value_source("kafka") == Some(ValueSource::EnvVariable);
    let raw: Vec<OsString> = matches
        .try_remove_many::<OsString>("kafka")
        .map_err(|error| clap::Error::raw(ErrorKind::ValueValidation, format!("--kafka: {error}")))?
        .map(Iterator::collect)
        .unwrap_or_default();
    parse_settings(&raw, from_env)
        .map_err(|error| clap::Error::raw(ErrorKind::ValueValidation, error.to_string()))
}

impl FromArgMatches for KafkaArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        let brokers = matches
            .try_remove_one::<String>("brokers")
            .map_err(|error| clap::Error::raw(ErrorKind::ValueValidation, format!("--brokers: {error}")))?
            .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
        let kafka = settings_from(matches)?;
        Ok(KafkaArgs { brokers, kafka })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.update_from_arg_matches_mut(&mut matches.clone())
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        if matches.contains_id("brokers") {
            if let Some(brokers) = matches.try_remove_one::<String>("brokers").map_err(|error| {
                clap::Error::raw(ErrorKind::ValueValidation, format!("--brokers: {error}"))
            })? {
                self.brokers = brokers;
            }
        }
        if matches.contains_id("kafka") {
            self.kafka = settings_from(matches)?;
        }
        Ok(())
    }
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
        // --help would show the password of the URL in the environment.
        hide_env_values = true,
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

    /// `KafkaArgs` as clap parses it from `args`, with the settings' environment
    /// variable named `env` (one per test: tests run in parallel).
    fn parse(env: &'static str, value: Option<&str>, args: &[&str]) -> Result<KafkaArgs, String> {
        match value {
            // Edition 2021: set_var is safe; no other test reads this variable.
            Some(value) => std::env::set_var(env, value),
            None => std::env::remove_var(env),
        }
        let command = Command::new("test")
            .arg(Arg::new("brokers").long("brokers").default_value("b:9092"))
            .arg(kafka_arg(env));
        let mut matches = command
            .try_get_matches_from(std::iter::once("test").chain(args.iter().copied()))
            .map_err(|error| error.to_string())?;
        KafkaArgs::from_arg_matches_mut(&mut matches).map_err(|error| error.to_string())
    }

    fn pairs(args: &KafkaArgs) -> Vec<(&str, &str)> {
        args.kafka
            .iter()
            .map(|setting| (setting.key.as_str(), setting.value.as_str()))
            .collect()
    }

    #[test]
    fn the_environment_splits_only_before_a_property_name() {
        assert_eq!(split_env("sasl.password=a,b"), ["sasl.password=a,b"]);
        assert_eq!(split_env("debug=broker,topic"), ["debug=broker,topic"]);
        assert_eq!(
            split_env("debug=broker,topic,security.protocol=SASL_SSL,sasl.password=x,y=z,acks=all"),
            [
                "debug=broker,topic",
                "security.protocol=SASL_SSL",
                "sasl.password=x,y=z",
                "acks=all"
            ]
        );
        // Not property names: upper case, a leading digit, an unknown single word.
        assert_eq!(
            split_env("sasl.password=p,A.b=1,9.x=2,pwd=3"),
            ["sasl.password=p,A.b=1,9.x=2,pwd=3"]
        );
        assert_eq!(split_env(""), [""]);
    }

    #[test]
    fn environment_values_keep_their_commas() {
        let args = parse("CONSCOPE_KAFKA_TEST_1", Some("sasl.password=a,b"), &[]).unwrap();
        assert_eq!(pairs(&args), [("sasl.password", "a,b")]);
        let args = parse("CONSCOPE_KAFKA_TEST_2", Some("debug=broker,topic"), &[]).unwrap();
        assert_eq!(pairs(&args), [("debug", "broker,topic")]);
        let args = parse(
            "CONSCOPE_KAFKA_TEST_3",
            Some("debug=broker,topic,client.id=c,sasl.password=x,y"),
            &[],
        )
        .unwrap();
        assert_eq!(
            pairs(&args),
            [
                ("debug", "broker,topic"),
                ("client.id", "c"),
                ("sasl.password", "x,y")
            ]
        );
    }

    #[test]
    fn a_flag_is_one_setting_and_wins_over_the_environment() {
        let args = parse(
            "CONSCOPE_KAFKA_TEST_4",
            Some("client.id=from-env"),
            &[
                "--kafka",
                "debug=broker,topic",
                "--kafka",
                "sasl.password=p,acks=1",
            ],
        )
        .unwrap();
        assert_eq!(
            pairs(&args),
            [("debug", "broker,topic"), ("sasl.password", "p,acks=1")]
        );
        let args = parse("CONSCOPE_KAFKA_TEST_5", None, &[]).unwrap();
        assert!(args.kafka.is_empty());
        assert_eq!(args.brokers, "b:9092");
    }

    #[test]
    fn errors_never_show_a_secret() {
        let cases: [(Option<&str>, &[&str], &[&str]); 8] = [
            (Some("hunter2"), &[], &["hunter2"]),
            (Some("sasl.password=a,hunter2"), &[], &[]), // one setting: valid
            (
                Some("sasl.password=hunter2,no.such.thing=s3cr3t"),
                &[],
                &["hunter2", "no.such.thing", "s3cr3t"],
            ),
            (Some("client.id=c,no.such.thing=s3cr3t"), &[], &["s3cr3t"]),
            (None, &["--kafka", "=hunter2"], &["hunter2"]),
            (None, &["--kafka", "hunter2"], &["hunter2"]),
            (None, &["--kafka", "no.such.password=hunter2"], &["hunter2"]),
            (
                None,
                &["--kafka", "sasl.password=hunter2", "--kafka", "oops"],
                &["hunter2", "oops"],
            ),
        ];
        for (index, (env, args, secrets)) in cases.into_iter().enumerate() {
            let env_name = [
                "CONSCOPE_KAFKA_SECRET_0",
                "CONSCOPE_KAFKA_SECRET_1",
                "CONSCOPE_KAFKA_SECRET_2",
                "CONSCOPE_KAFKA_SECRET_3",
                "CONSCOPE_KAFKA_SECRET_4",
                "CONSCOPE_KAFKA_SECRET_5",
                "CONSCOPE_KAFKA_SECRET_6",
                "CONSCOPE_KAFKA_SECRET_7",
            ][index];
            match parse(env_name, env, args) {
                Ok(_) => assert!(secrets.is_empty(), "{env:?} {args:?} must be refused"),
                Err(error) => {
                    assert!(!secrets.is_empty(), "{env:?} {args:?}: {error}");
                    assert!(
                        error.contains("--kafka #") || error.contains("CONSCOPE_KAFKA setting #"),
                        "{error}"
                    );
                    for secret in secrets {
                        assert!(
                            !error.contains(secret),
                            "{env:?} {args:?} shows {secret:?}: {error}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn librdkafka_checks_names_and_values() {
        let unknown = parse("CONSCOPE_KAFKA_TEST_6", None, &["--kafka", "linger.msec=5"]).unwrap_err();
        assert!(
            unknown.contains("\"linger.msec\" is not a librdkafka property"),
            "{unknown}"
        );
        let invalid = parse("CONSCOPE_KAFKA_TEST_7", None, &["--kafka", "acks=banana"]).unwrap_err();
        assert!(
            invalid.contains("--kafka #1") && invalid.contains("acks"),
            "{invalid}"
        );
    }

    /// Managed clusters (MSK, Confluent Cloud) need TLS and SASL: the build links
    /// OpenSSL, so librdkafka accepts their settings.
    #[test]
    fn tls_and_sasl_settings_are_accepted() {
        let args = parse(
            "CONSCOPE_KAFKA_TEST_9",
            Some(
                "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=u,\
                 sasl.password=p,w,ssl.endpoint.identification.algorithm=https",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            pairs(&args),
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p,w"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]
        );
    }

    #[test]
    fn help_hides_environment_values() {
        std::env::set_var("CONSCOPE_KAFKA_TEST_8", "sasl.password=hunter2");
        let help = Command::new("test")
            .arg(kafka_arg("CONSCOPE_KAFKA_TEST_8"))
            .render_long_help();
        assert!(!help.to_string().contains("hunter2"), "{help}");
    }
}
