//! Why a record failed, as a closed vocabulary.
//!
//! The class goes into the `kafka_dlt-exception-fqcn` header of retry and dead-letter copies,
//! into the `error_class` label of `sluice_consumer_dead_letters_total`, and is what
//! operators filter on (`sluice dlq replay --filter error_class=InvalidJson`). The strings are
//! a contract: each variant keeps the name it has always been written with. A handler outside
//! sluice names its own classes with [`ErrorClass::custom`].

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    // The normalizer: what a delivery's body or headers make impossible.
    InvalidJson,
    UnmappedEventType,
    InvalidPayload,
    EventTypeMismatch,
    MissingRawHeader,
    UnroutedEventType,
    SchemaMismatch,
    EncodeFailed,
    // State and the registry, transient.
    DedupRestore,
    SagaStateRestore,
    EffectsLog,
    RegistryUnavailable,
    // Saga messages.
    Undecodable,
    InvalidCommand,
    InvalidSagaMessage,
    MissingCorrelationKey,
    MissingKey,
    UnknownTopic,
    // Kafka refused a record's output (see `super::refusals`).
    RecordTooLarge,
    InvalidRecord,
    /// A class named by a handler outside sluice.
    Custom(Cow<'static, str>),
}

impl ErrorClass {
    /// A handler's own class, e.g. `ErrorClass::custom("ValidationFailed")`.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        ErrorClass::Custom(name.into())
    }

    pub fn as_str(&self) -> &str {
        use ErrorClass as E;
        match self {
            E::InvalidJson => "InvalidJson",
            E::UnmappedEventType => "UnmappedEventType",
            E::InvalidPayload => "InvalidPayload",
            E::EventTypeMismatch => "EventTypeMismatch",
            E::MissingRawHeader => "MissingRawHeader",
            E::UnroutedEventType => "UnroutedEventType",
            E::SchemaMismatch => "SchemaMismatch",
            E::EncodeFailed => "EncodeFailed",
            E::DedupRestore => "DedupRestore",
            E::SagaStateRestore => "SagaStateRestore",
            E::EffectsLog => "EffectsLog",
            E::RegistryUnavailable => "RegistryUnavailable",
            E::Undecodable => "Undecodable",
            E::InvalidCommand => "InvalidCommand",
            E::InvalidSagaMessage => "InvalidSagaMessage",
            E::MissingCorrelationKey => "MissingCorrelationKey",
            E::MissingKey => "MissingKey",
            E::UnknownTopic => "UnknownTopic",
            E::RecordTooLarge => "RecordTooLarge",
            E::InvalidRecord => "InvalidRecord",
            E::Custom(name) => name,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_the_names_dead_letters_have_always_carried() {
        assert_eq!(ErrorClass::InvalidJson.to_string(), "InvalidJson");
        assert_eq!(ErrorClass::UnmappedEventType.as_str(), "UnmappedEventType");
        assert_eq!(
            ErrorClass::RegistryUnavailable.as_str(),
            "RegistryUnavailable"
        );
        assert_eq!(
            ErrorClass::custom("ValidationFailed").as_str(),
            "ValidationFailed"
        );
    }
}
