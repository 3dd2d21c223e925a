//! The outbox producer's contract with the broker: the settings the publisher
//! and its recovery rely on (forced over `--kafka`, a conflicting one refused at
//! startup), and what a failed delivery means (refused for good, or not yet).
//!
//! Builds configurations and classifies errors; sends nothing itself.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use crate::config::KafkaArgs;

/// A producer setting the publisher cannot work without.
struct Required {
    key: &'static str,
    /// Other names librdkafka accepts for the same setting.
    aliases: &'static [&'static str],
    value: &'static str,
    /// Spellings librdkafka reads as `value`.
    equivalent: &'static [&'static str],
}

const REQUIRED: [Required; 3] = [
    // Retries inside librdkafka never write a message twice and never reorder
    // a partition: without it, a retried batch lands again and the alert is
    // doubled on the topic.
    Required {
        key: "enable.idempotence",
        aliases: &[],
        value: "true",
        equivalent: &["true", "t", "1"],
    },
    // An acknowledgement means every in-sync replica has the message, so the
    // row deleted from the outbox cannot vanish with a failed-over leader.
    // (Idempotence needs it too.)
    Required {
        key: "acks",
        aliases: &["request.required.acks"],
        value: "all",
        equivalent: &["all", "-1"],
    },
    // A batch refused for good stops the producer instead of letting later
    // messages of the partition through around the hole: a publisher session
    // then ends at the first failure and recovery re-reads the partition. The
    // exception librdkafka documents, a message that timed out, is why
    // recovery confirms each row on the topic rather than trusting order.
    Required {
        key: "enable.gapless.guarantee",
        aliases: &[],
        value: "true",
        equivalent: &["true", "t", "1"],
    },
];

/// Our defaults underneath `--kafka`: a user's value wins.
const DEFAULTS: [(&str, &str); 2] = [
    // Small batches, low publish lag.
    ("linger.ms", "2"),
    // A delivery that cannot finish in 30 s ends the session instead of
    // stalling it: seen with a broker that answered retried batches with
    // DUPLICATE_SEQUENCE_NUMBER and left librdkafka retrying forever. The next
    // session starts a fresh producer and recovery confirms what landed.
    ("message.timeout.ms", "30000"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProducerSettingError {
    /// Names the setting, never its value: it may sit next to secrets and a
    /// user's spelling of it is in their own command line anyway.
    #[error(
        "--kafka {setting}: the outbox publisher needs {required}={value} (alerts and dead letters \
         are delivered exactly once only with an idempotent, acks=all, gap-less producer); \
         drop the setting"
    )]
    Conflict {
        setting: String,
        required: &'static str,
        value: &'static str,
    },
}

/// The outbox producer's configuration, checked: only `producer_config` makes one.
#[derive(Clone)]
pub struct ProducerSettings(ClientConfig);

impl ProducerSettings {
    pub fn config(&self) -> &ClientConfig {
        &self.0
    }
}

/// The producer configuration: brokers and `--kafka` over our defaults, with
/// the required settings forced. A `--kafka` setting that contradicts one of
/// them is an error.
pub fn producer_config(kafka: &KafkaArgs) -> Result<ProducerSettings, ProducerSettingError> {
    let mut config = kafka.client_config_with(&DEFAULTS);
    for (key, value) in config.config_map() {
        let key = key.to_ascii_lowercase();
        for required in &REQUIRED {
            let same_setting = key == required.key || required.aliases.contains(&key.as_str());
            if same_setting
                && !required
                    .equivalent
                    .contains(&value.trim().to_ascii_lowercase().as_str())
            {
                return Err(ProducerSettingError::Conflict {
                    setting: key,
                    required: required.key,
                    value: required.value,
                });
            }
        }
    }
    for required in &REQUIRED {
        config.set(required.key, required.value);
    }
    Ok(ProducerSettings(config))
}

/// Why a message did not reach its partition.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The broker (or librdkafka's own size check) will refuse this message
    /// whatever we do: retrying only blocks the rows behind it.
    #[error("refused for good: {0}")]
    Refused(RDKafkaErrorCode),
    /// Might succeed later (broker away, timeout, a producer stopped by an
    /// error elsewhere); the message may even have landed.
    #[error("not delivered: {0}")]
    NotYet(KafkaError),
}

impl DeliveryError {
    pub fn classify(error: KafkaError) -> DeliveryError {
        match error {
            KafkaError::MessageProduction(code) if is_permanent(code) => DeliveryError::Refused(code),
            other => DeliveryError::NotYet(other),
        }
    }
}

/// Produce errors that Kafka marks non-retriable and that depend on the message
/// or its topic, not on the broker's health or the producer's state.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::UnsupportedForMessageFormat
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(settings: &[&str]) -> KafkaArgs {
        KafkaArgs {
            brokers: "b:9092".into(),
            kafka: settings.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn required_settings_are_forced_and_defaults_yield_to_the_user() {
        let settings =
            producer_config(&args(&["linger.ms=50", "ACKS=-1", "enable.idempotence=True"])).unwrap();
        let config = settings.config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.gapless.guarantee"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("message.timeout.ms"), Some("30000"));
    }

    #[test]
    fn a_conflicting_setting_is_refused_by_name() {
        for (setting, name) in [
            ("acks=1", "acks"),
            ("request.required.acks=0", "request.required.acks"),
            ("enable.idempotence=false", "enable.idempotence"),
            ("enable.gapless.guarantee=false", "enable.gapless.guarantee"),
        ] {
            let error = producer_config(&args(&["sasl.password=hunter2", setting]))
                .err()
                .expect("refused");
            let text = error.to_string();
            assert!(text.starts_with(&format!("--kafka {name}:")), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn size_and_authorization_refusals_are_permanent_timeouts_are_not() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(matches!(
                DeliveryError::classify(KafkaError::MessageProduction(code)),
                DeliveryError::Refused(_)
            ));
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::GaplessGuarantee,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(matches!(
                DeliveryError::classify(KafkaError::MessageProduction(code)),
                DeliveryError::NotYet(_)
            ));
        }
    }
}
