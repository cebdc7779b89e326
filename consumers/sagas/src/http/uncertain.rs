//! Compensating an action whose outcome nobody knows.
//!
//! A step whose every attempt went unanswered may still have taken effect at the provider
//! (it charged, and the answer was lost), so the orchestrator compensates it too. Its
//! compensation, though, usually needs what the action's answer carried (a refund needs the
//! charge's id), and that answer never arrived. So before such a compensation the action is
//! asked again with its own `Idempotency-Key`:
//!
//! - a provider that performed it answers with the stored result and no second effect; the
//!   compensation runs with that result, as if the step had completed;
//! - a permanent failure means the action never took effect (the same judgement that, on
//!   the first attempt, would have failed the step without compensating it): nothing to undo;
//! - still no answer: the compensation gives none either, and the orchestrator's retries,
//!   then an operator (the saga parks), decide. A compensation is never skipped on a guess.
//!
//! A provider that never saw the first request performs the action now; the compensation
//! that follows undoes it at once.

use serde_json::{json, Value as Json};

use crate::instance::Kind;
use crate::messages::Command;
use crate::participant::Outcome;

/// The key of a compensation's result that says why nothing was undone.
pub const NOTHING_TO_UNDO: &str = "nothing_to_undo";

/// The action behind `command` to ask again, when `command` compensates an action that
/// left no result: same saga and step, the action's own command id (its `Idempotency-Key`).
pub fn unanswered_action(command: &Command) -> Option<Command> {
    if command.kind != Kind::Compensation {
        return None;
    }
    let action_id = command.compensates.clone()?;
    let results: Json = serde_json::from_str(&command.results).ok()?;
    if results.get(&command.step).is_some() {
        return None;
    }
    Some(Command {
        kind: Kind::Action,
        compensates: None,
        command_id: action_id,
        ..command.clone()
    })
}

/// What the action's answer, asked again, means for its compensation.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// The action took effect with this result: compensate it with the result in hand.
    Performed(Json),
    /// The compensation's outcome, without calling it.
    Settled(Outcome),
}

impl Recovery {
    /// Reads the outcome of asking the action again.
    pub fn from_replay(replay: Outcome) -> Self {
        match replay {
            Outcome::Succeeded { result } => Recovery::Performed(result.unwrap_or(json!({}))),
            Outcome::Failed { reason, .. } => Recovery::Settled(Outcome::Succeeded {
                result: Some(json!({
                    NOTHING_TO_UNDO: format!(
                        "the action, asked again with its own Idempotency-Key, was refused: {reason}"
                    )
                })),
            }),
            Outcome::NoReply { why } => Recovery::Settled(Outcome::NoReply {
                why: format!(
                    "the action's outcome is still unknown (asked again with its own Idempotency-Key): {why}"
                ),
            }),
        }
    }
}

/// `command` with `result` recorded as its step's result, for the compensation's templates.
pub fn with_result(command: &Command, result: Json) -> Command {
    let mut results: Json = serde_json::from_str(&command.results).unwrap_or_else(|_| json!({}));
    if let Some(map) = results.as_object_mut() {
        map.insert(command.step.clone(), result);
    }
    Command {
        results: results.to_string(),
        ..command.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund(results: &str) -> Command {
        Command {
            event_type: "RefundPayment".into(),
            saga_id: "o-1".into(),
            saga_name: "order-fulfillment".into(),
            step: "charge-payment".into(),
            kind: Kind::Compensation,
            compensates: Some("o-1:charge-payment:do:1".into()),
            attempt: 1,
            command_id: "o-1:charge-payment:undo:1".into(),
            correlation_id: "o-1".into(),
            reply_topic: "replies".into(),
            data: r#"{"order_id":"o-1"}"#.into(),
            results: results.into(),
        }
    }

    #[test]
    fn only_a_compensation_of_an_action_without_result_asks_the_action_again() {
        let action = unanswered_action(&refund(r#"{"reserve-inventory":{}}"#)).unwrap();
        assert_eq!(action.kind, Kind::Action);
        assert_eq!(action.command_id, "o-1:charge-payment:do:1");
        assert_eq!(action.compensates, None);
        assert_eq!(action.data, r#"{"order_id":"o-1"}"#);

        let answered = refund(r#"{"charge-payment":{"payment_id":"ch_1"}}"#);
        assert_eq!(unanswered_action(&answered), None);
        let action_itself = Command {
            kind: Kind::Action,
            ..refund("{}")
        };
        assert_eq!(unanswered_action(&action_itself), None);
        let without_action = Command {
            compensates: None,
            ..refund("{}")
        };
        assert_eq!(unanswered_action(&without_action), None);
    }

    #[test]
    fn the_replay_decides_between_compensating_nothing_to_undo_and_no_reply() {
        let performed = Recovery::from_replay(Outcome::Succeeded {
            result: Some(json!({"payment_id": "ch_1"})),
        });
        assert_eq!(
            performed,
            Recovery::Performed(json!({"payment_id": "ch_1"}))
        );

        let Recovery::Settled(Outcome::Succeeded { result: Some(r) }) =
            Recovery::from_replay(Outcome::Failed {
                reason: "POST /v1/charges → 402".into(),
                retryable: false,
            })
        else {
            panic!("a refused action leaves nothing to undo");
        };
        assert!(r[NOTHING_TO_UNDO].as_str().unwrap().contains("402"), "{r}");

        let unknown = Recovery::from_replay(Outcome::NoReply {
            why: "timed out".into(),
        });
        assert!(
            matches!(unknown, Recovery::Settled(Outcome::NoReply { ref why }) if why.contains("timed out")),
            "{unknown:?}"
        );
    }

    #[test]
    fn the_recovered_result_is_there_for_the_compensation_s_templates() {
        let c = with_result(
            &refund(r#"{"reserve-inventory":{"n":1}}"#),
            json!({"payment_id": "ch_9"}),
        );
        let results: Json = serde_json::from_str(&c.results).unwrap();
        assert_eq!(results["charge-payment"]["payment_id"], "ch_9");
        assert_eq!(results["reserve-inventory"]["n"], 1);
        assert_eq!(c.command_id, "o-1:charge-payment:undo:1");
    }
}
