//! GitHub: the event name is the `X-GitHub-Event` header (the delivery's `event_type`),
//! the action is the body's `action`.
//!
//! | event / action | event | subject |
//! |---|---|---|
//! | `push` | `CodePushed` | the pushed ref (`refs/heads/main`) |
//! | `pull_request` `opened` | `PullRequestOpened` | the PR's `html_url` |
//! | `pull_request` `closed`, `merged: true` | `PullRequestMerged` | the PR's `html_url` |
//! | `pull_request` `closed`, otherwise | `PullRequestClosed` | the PR's `html_url` |
//! | `issues` `opened` / `closed` | `IssueOpened` / `IssueClosed` | the issue's `html_url` |
//!
//! Anything else is [`MapError::Unmapped`] with `event.action` (`pull_request.edited`) or
//! the bare event name (`ping`). The key is always `repository.full_name`, so one
//! repository's events stay in order.
//!
//! `occurred_at`: `pull_request.updated_at` / `issue.updated_at`; for a push,
//! `repository.pushed_at` (the push itself; epoch seconds in push payloads), else
//! `head_commit.timestamp` (the head commit's time, which can be much older than the push,
//! e.g. when an existing branch is pushed), else the delivery's `received_at`.

use serde_json::{json, Value as Json};

use super::generic::Fields;
use super::{parse_json, MapError, Mapped, RawDelivery};

pub const CODE_PUSHED: &str = "dev.sluice.events.scm.CodePushed";
pub const PULL_REQUEST_OPENED: &str = "dev.sluice.events.scm.PullRequestOpened";
pub const PULL_REQUEST_CLOSED: &str = "dev.sluice.events.scm.PullRequestClosed";
pub const PULL_REQUEST_MERGED: &str = "dev.sluice.events.scm.PullRequestMerged";
pub const ISSUE_OPENED: &str = "dev.sluice.events.scm.IssueOpened";
pub const ISSUE_CLOSED: &str = "dev.sluice.events.scm.IssueClosed";

/// Maps one GitHub delivery.
pub fn map(delivery: &RawDelivery<'_>) -> Result<Vec<Mapped>, MapError> {
    let body = parse_json(delivery)?;
    let Some(event) = delivery.event_type else {
        return Err(MapError::Invalid {
            provider: delivery.provider.to_string(),
            event_type: "unknown".into(),
            reason: "no event name (the X-GitHub-Event header) on the delivery".into(),
        });
    };
    // The event name is an unsigned header: the body must agree with it.
    super::claims::github(event, &body)?;
    let action = body.get("action").and_then(Json::as_str);
    let name = match action {
        Some(a) => format!("{event}.{a}"),
        None => event.to_string(),
    };
    let f = Fields::new(&body, delivery.provider, &name);
    let mapped = match (event, action) {
        ("push", _) => push(&f, delivery)?,
        ("pull_request", Some("opened")) => pull_request(&f, delivery, PULL_REQUEST_OPENED)?,
        ("pull_request", Some("closed")) => {
            if f.opt_bool("pull_request.merged")?.unwrap_or(false) {
                pull_request(&f, delivery, PULL_REQUEST_MERGED)?
            } else {
                pull_request(&f, delivery, PULL_REQUEST_CLOSED)?
            }
        }
        ("issues", Some("opened")) => issue(&f, delivery, ISSUE_OPENED)?,
        ("issues", Some("closed")) => issue(&f, delivery, ISSUE_CLOSED)?,
        _ => {
            return Err(MapError::Unmapped {
                provider: delivery.provider.to_string(),
                event_type: name,
            })
        }
    };
    Ok(vec![mapped])
}

fn push(f: &Fields<'_>, delivery: &RawDelivery<'_>) -> Result<Mapped, MapError> {
    let repository = f.str("repository.full_name")?;
    let git_ref = f.str("ref")?;
    let commits = (0..f.opt_array("commits")?.len())
        .map(|i| {
            let c = format!("commits[{i}]");
            Ok(json!({
                "id": f.str(&format!("{c}.id"))?,
                "message": f.str(&format!("{c}.message"))?,
                "author_name": f.opt_str(&format!("{c}.author.name"))?,
                "url": f.opt_str(&format!("{c}.url"))?,
            }))
        })
        .collect::<Result<Vec<Json>, MapError>>()?;
    let pushed_at = match f.get("repository.pushed_at") {
        Some(Json::String(_)) => f.opt_rfc3339_ms("repository.pushed_at")?,
        _ => f.opt_secs_as_ms("repository.pushed_at")?,
    };
    let occurred_at_ms = match pushed_at {
        Some(ms) => ms,
        None => f
            .opt_rfc3339_ms("head_commit.timestamp")?
            .unwrap_or(delivery.received_at_ms),
    };
    Ok(Mapped {
        event_type: CODE_PUSHED,
        key: repository.to_string(),
        subject: Some(git_ref.to_string()),
        occurred_at_ms,
        fields: json!({
            "repository": repository,
            "ref": git_ref,
            "before": f.str("before")?,
            "after": f.str("after")?,
            "pusher": f.str("pusher.name")?,
            "commits": commits,
            "forced": f.opt_bool("forced")?.unwrap_or(false),
            "created": f.opt_bool("created")?.unwrap_or(false),
        }),
    })
}

fn pull_request(
    f: &Fields<'_>,
    delivery: &RawDelivery<'_>,
    event_type: &'static str,
) -> Result<Mapped, MapError> {
    let repository = f.str("repository.full_name")?;
    let url = f.str("pull_request.html_url")?;
    let mut fields = json!({
        "repository": repository,
        "number": f.i32("pull_request.number")?,
        "title": f.str("pull_request.title")?,
        "author": f.str("pull_request.user.login")?,
        "url": url,
        "head_ref": f.str("pull_request.head.ref")?,
        "base_ref": f.str("pull_request.base.ref")?,
    });
    if event_type == PULL_REQUEST_MERGED {
        fields["merged_by"] = json!(f.opt_str("pull_request.merged_by.login")?);
        fields["merge_commit_sha"] = json!(f.opt_str("pull_request.merge_commit_sha")?);
    }
    Ok(Mapped {
        event_type,
        key: repository.to_string(),
        subject: Some(url.to_string()),
        occurred_at_ms: f
            .opt_rfc3339_ms("pull_request.updated_at")?
            .unwrap_or(delivery.received_at_ms),
        fields,
    })
}

fn issue(
    f: &Fields<'_>,
    delivery: &RawDelivery<'_>,
    event_type: &'static str,
) -> Result<Mapped, MapError> {
    let repository = f.str("repository.full_name")?;
    let url = f.str("issue.html_url")?;
    let labels = (0..f.opt_array("issue.labels")?.len())
        .map(|i| f.str(&format!("issue.labels[{i}].name")))
        .collect::<Result<Vec<&str>, MapError>>()?;
    Ok(Mapped {
        event_type,
        key: repository.to_string(),
        subject: Some(url.to_string()),
        occurred_at_ms: f
            .opt_rfc3339_ms("issue.updated_at")?
            .unwrap_or(delivery.received_at_ms),
        fields: json!({
            "repository": repository,
            "number": f.i32("issue.number")?,
            "title": f.str("issue.title")?,
            "author": f.str("issue.user.login")?,
            "url": url,
            "labels": labels,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::money::testing::{
        delivery, edited, invalid_reason, map_valid, RECEIVED_AT_MS,
    };

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/webhooks/github/",
                $name
            ))
        };
    }
    const PUSH_TAG_DELETED: &str = fixture!("push.json");
    const PUSH_NEW_BRANCH: &str = fixture!("push.with-new-branch.json");
    const PR_OPENED: &str = fixture!("pull_request.opened.json");
    const PR_CLOSED: &str = fixture!("pull_request.closed.json");
    const PR_MERGED: &str = fixture!("pull_request.closed.merged.json");
    const ISSUE_OPENED_JSON: &str = fixture!("issues.opened.json");
    const ISSUE_CLOSED_JSON: &str = fixture!("issues.closed.json");

    fn one(event: &str, body: &[u8]) -> Mapped {
        let mut mapped = map_valid(map, &delivery("github", Some(event), body));
        assert_eq!(mapped.len(), 1);
        mapped.remove(0)
    }

    const REPO: &str = "Codertocat/Hello-World";
    const PR_URL: &str = "https://github.com/Codertocat/Hello-World/pull/2";
    const ISSUE_URL: &str = "https://github.com/Codertocat/Hello-World/issues/1";

    #[test]
    fn push_creating_a_branch() {
        let m = one("push", PUSH_NEW_BRANCH.as_bytes());
        assert_eq!(m.event_type, CODE_PUSHED);
        assert_eq!(m.key, REPO);
        assert_eq!(m.subject.as_deref(), Some("refs/heads/master"));
        // repository.pushed_at = 1557933657 (2019-05-15T15:20:57Z), not the head
        // commit's 15:19:25Z.
        assert_eq!(m.occurred_at_ms, 1_557_933_657_000);
        assert_eq!(
            m.fields,
            json!({
                "repository": REPO,
                "ref": "refs/heads/master",
                "before": "0000000000000000000000000000000000000000",
                "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "pusher": "Codertocat",
                "commits": [{
                    "id": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                    "message": "Initial commit",
                    "author_name": "Codertocat",
                    "url": "https://github.com/Codertocat/Hello-World/commit/6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                }],
                "forced": false,
                "created": true,
            })
        );
    }

    #[test]
    fn push_deleting_a_tag_has_no_commits() {
        let m = one("push", PUSH_TAG_DELETED.as_bytes());
        assert_eq!(m.subject.as_deref(), Some("refs/tags/simple-tag"));
        assert_eq!(
            m.fields["after"],
            "0000000000000000000000000000000000000000"
        );
        assert_eq!(m.fields["commits"], json!([]));
        assert_eq!(m.fields["created"], false);
        assert_eq!(m.occurred_at_ms, 1_557_933_657_000);
    }

    #[test]
    fn push_time_falls_back_to_head_commit_then_received_at() {
        let body = edited(PUSH_NEW_BRANCH, |j| {
            j["repository"].as_object_mut().unwrap().remove("pushed_at");
            j["head_commit"]["timestamp"] = json!("2019-05-15T10:19:25-05:00");
        });
        assert_eq!(one("push", &body).occurred_at_ms, 1_557_933_565_000);
        let body = edited(PUSH_TAG_DELETED, |j| {
            j["repository"].as_object_mut().unwrap().remove("pushed_at");
        });
        assert_eq!(one("push", &body).occurred_at_ms, RECEIVED_AT_MS);
    }

    #[test]
    fn pull_request_opened() {
        let m = one("pull_request", PR_OPENED.as_bytes());
        assert_eq!(m.event_type, PULL_REQUEST_OPENED);
        assert_eq!(m.key, REPO);
        assert_eq!(m.subject.as_deref(), Some(PR_URL));
        assert_eq!(m.occurred_at_ms, 1_557_933_633_000); // 2019-05-15T15:20:33Z
        assert_eq!(
            m.fields,
            json!({
                "repository": REPO,
                "number": 2,
                "title": "Update the README with new information.",
                "author": "Codertocat",
                "url": PR_URL,
                "head_ref": "changes",
                "base_ref": "master",
            })
        );
    }

    #[test]
    fn pull_request_closed_without_merge() {
        let m = one("pull_request", PR_CLOSED.as_bytes());
        assert_eq!(m.event_type, PULL_REQUEST_CLOSED);
        assert_eq!(m.occurred_at_ms, 1_557_933_678_000); // 2019-05-15T15:21:18Z
        assert_eq!(m.fields["number"], 2);
        assert!(m.fields.get("merged_by").is_none());
    }

    #[test]
    fn pull_request_merged() {
        let m = one("pull_request", PR_MERGED.as_bytes());
        assert_eq!(m.event_type, PULL_REQUEST_MERGED);
        assert_eq!(m.subject.as_deref(), Some(PR_URL));
        assert_eq!(m.fields["merged_by"], "Codertocat");
        assert_eq!(
            m.fields["merge_commit_sha"],
            "c4295bd74fb0f4fda03689c3df3f2803b658fd85"
        );
        assert_eq!(m.fields["head_ref"], "changes");
    }

    #[test]
    fn issues_opened_and_closed() {
        let m = one("issues", ISSUE_OPENED_JSON.as_bytes());
        assert_eq!(m.event_type, ISSUE_OPENED);
        assert_eq!(m.key, REPO);
        assert_eq!(m.subject.as_deref(), Some(ISSUE_URL));
        assert_eq!(m.occurred_at_ms, 1_557_933_618_000); // 2019-05-15T15:20:18Z
        assert_eq!(
            m.fields,
            json!({
                "repository": REPO,
                "number": 1,
                "title": "Spelling error in the README file",
                "author": "Codertocat",
                "url": ISSUE_URL,
                "labels": ["bug"],
            })
        );
        let m = one("issues", ISSUE_CLOSED_JSON.as_bytes());
        assert_eq!(m.event_type, ISSUE_CLOSED);
        assert_eq!(m.occurred_at_ms, 1_557_933_761_000); // 2019-05-15T15:22:41Z
        assert_eq!(m.fields["labels"], json!(["bug"]));
    }

    #[test]
    fn other_events_and_actions_are_unmapped() {
        let edited_pr = edited(PR_OPENED, |j| j["action"] = json!("edited"));
        let reopened = edited(ISSUE_OPENED_JSON, |j| j["action"] = json!("reopened"));
        for (event, body, expected) in [
            ("pull_request", edited_pr.as_slice(), "pull_request.edited"),
            ("issues", reopened.as_slice(), "issues.reopened"),
            (
                "ping",
                br#"{"zen":"Keep it logically awesome.","hook_id":1}"#,
                "ping",
            ),
            ("star", br#"{"action":"created"}"#, "star.created"),
        ] {
            assert_eq!(
                map(&delivery("github", Some(event), body)),
                Err(MapError::Unmapped {
                    provider: "github".into(),
                    event_type: expected.into()
                })
            );
        }
    }

    #[test]
    fn non_json_is_invalid_json() {
        // GitHub's form-encoded content type is not supported: configure webhooks as JSON.
        let d = delivery("github", Some("push"), b"payload=%7B%7D");
        assert!(matches!(map(&d), Err(MapError::InvalidJson { .. })));
    }

    #[test]
    fn missing_fields_and_event_name_are_invalid() {
        let body = edited(PR_OPENED, |j| {
            j["pull_request"]["head"]
                .as_object_mut()
                .unwrap()
                .remove("ref");
        });
        let reason = invalid_reason(map(&delivery("github", Some("pull_request"), &body)));
        assert!(reason.contains("`pull_request.head.ref`"), "{reason}");

        let body = edited(PUSH_NEW_BRANCH, |j| j["commits"][0]["message"] = Json::Null);
        let reason = invalid_reason(map(&delivery("github", Some("push"), &body)));
        assert!(reason.contains("`commits[0].message`"), "{reason}");

        let body = edited(ISSUE_OPENED_JSON, |j| {
            j["issue"]["updated_at"] = json!("yesterday")
        });
        let reason = invalid_reason(map(&delivery("github", Some("issues"), &body)));
        assert!(reason.contains("`issue.updated_at`"), "{reason}");

        let reason = invalid_reason(map(&delivery("github", None, PR_OPENED.as_bytes())));
        assert!(reason.contains("X-GitHub-Event"), "{reason}");
    }
}
