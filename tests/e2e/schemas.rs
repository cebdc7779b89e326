//! `sluice schemas …` against the real registry: deploy-time registration with per-subject
//! modes, offline and online compatibility checks, and inspection.

use crate::support::{registry, require_stack, sluice_async, temp_file};
use sluice_schemas::RegistryClient;

const PAYMENT: &str = "dev.sluice.events.payments.PaymentSucceeded";

fn topology(prefix: &str) -> String {
    format!(
        r#"prefix: {prefix}
topics:
  - {{name: {prefix}.events.payments, partitions: 1}}
  - {{name: {prefix}.events.commerce, partitions: 1}}
routes:
  - {{event_type: {PAYMENT}, topic: {prefix}.events.payments}}
  - {{event_type: dev.sluice.events.commerce.OrderPlaced, topic: {prefix}.events.commerce}}
subjects:
  compatibility: {{{PAYMENT}: FULL_TRANSITIVE}}
"#
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn register_sets_modes_registers_history_and_registry_enforces_it() {
    require_stack().await;
    let prefix = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let file = temp_file("topology.yaml", &topology(&prefix));
    let file = file.display().to_string();
    let (ok, out, err) = sluice_async(args(&["schemas", "register", "--topology", &file])).await;
    assert!(ok, "{out}{err}");
    let subject = format!("{prefix}.events.payments-{PAYMENT}");
    assert!(
        out.contains(&subject) && out.contains("FULL_TRANSITIVE"),
        "{out}"
    );
    assert_eq!(
        out.matches(&subject).count(),
        2,
        "v1 and v2 registered:\n{out}"
    );

    let client = RegistryClient::new(&registry()).unwrap();
    assert_eq!(client.versions(&subject).await.unwrap().len(), 2);
    assert_eq!(
        client.compatibility(Some(&subject)).await.unwrap(),
        "FULL_TRANSITIVE"
    );
    let orders = format!("{prefix}.events.commerce-dev.sluice.events.commerce.OrderPlaced");
    assert_eq!(
        client.compatibility(Some(&orders)).await.unwrap(),
        "BACKWARD_TRANSITIVE"
    );

    // Registering again is idempotent.
    let (ok, again, _) = sluice_async(args(&["schemas", "register", "--topology", &file])).await;
    assert!(ok);
    assert_eq!(again, out);

    // The registry itself now refuses an incompatible version under that subject.
    let breaking = r#"{"type":"record","name":"PaymentSucceeded","namespace":"dev.sluice.events.payments",
        "fields":[{"name":"event_id","type":"string"},{"name":"must_have","type":"string"}]}"#;
    let err = client
        .register(&subject, breaking)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("409"), "{err}");

    let (ok, out, _) =
        sluice_async(args(&["schemas", "check", "--online", "--topology", &file])).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "ok   {subject} accepts payments/PaymentSucceeded.v2.avsc"
        )),
        "{out}"
    );

    let (ok, out, _) = sluice_async(args(&["schemas", "show", &subject, "--version", "1"])).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("version  1") && out.contains("\"name\": \"PaymentSucceeded\""),
        "{out}"
    );
    assert!(
        !out.contains("statement_descriptor"),
        "v1 predates statement_descriptor:\n{out}"
    );

    let (ok, _, err) = sluice_async(args(&["schemas", "show", &format!("{prefix}-nope")])).await;
    assert!(
        !ok && err.contains(&format!("subject {prefix}-nope")),
        "{err}"
    );
}

#[tokio::test]
async fn online_check_reports_the_registry_verdict_with_field_and_rule() {
    require_stack().await;
    let prefix = format!("s{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let subject = format!("{prefix}.events.payments-{PAYMENT}");
    let client = RegistryClient::new(&registry()).unwrap();
    client
        .set_compatibility(Some(&subject), "BACKWARD")
        .await
        .unwrap();
    // An older, different shape is already registered: the catalog's version cannot read it.
    let older = r#"{"type":"record","name":"PaymentSucceeded","namespace":"dev.sluice.events.payments",
        "fields":[{"name":"event_id","type":"string"}]}"#;
    client.register(&subject, older).await.unwrap();
    let file = temp_file("topology.yaml", &topology(&prefix));
    let (ok, out, _) = sluice_async(args(&[
        "schemas",
        "check",
        "--online",
        "--topology",
        &file.display().to_string(),
    ]))
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL {subject} rejects payments/PaymentSucceeded.v2.avsc"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "vs registered version 1 (backward): payment_id: READER_FIELD_MISSING_DEFAULT_VALUE"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn offline_check_fails_on_a_breaking_version_naming_subject_version_field_and_rule() {
    let dir =
        std::env::temp_dir().join(format!("sluice-catalog-{}", uuid::Uuid::new_v4().simple()));
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/avro");
    copy_dir(std::path::Path::new(src), &dir);
    let (ok, out, _) = sluice_async(args(&[
        "schemas",
        "check",
        "--catalog",
        &dir.display().to_string(),
    ]))
    .await;
    assert!(ok, "the shipped catalog passes:\n{out}");

    // v3 turns statement_descriptor into a required string: breaks v1 (missing) and v2 (null).
    let mut v3: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("payments/PaymentSucceeded.v2.avsc")).unwrap(),
    )
    .unwrap();
    let field = v3["fields"].as_array_mut().unwrap().last_mut().unwrap();
    field.as_object_mut().unwrap().remove("default");
    field["type"] = "string".into();
    std::fs::write(
        dir.join("payments/PaymentSucceeded.v3.avsc"),
        v3.to_string(),
    )
    .unwrap();
    let (ok, out, _) = sluice_async(args(&[
        "schemas",
        "check",
        "--catalog",
        &dir.display().to_string(),
    ]))
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL sluice.events.payments-dev.sluice.events.payments.PaymentSucceeded [FULL_TRANSITIVE] v3 vs v1 (backward): statement_descriptor: READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{out}"
    );
    assert!(
        out.contains("v3 vs v2 (backward): statement_descriptor: TYPE_MISMATCH"),
        "{out}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn latest_finds_a_subject_directly_and_says_none_for_an_unknown_one() {
    require_stack().await;
    let client = RegistryClient::new(&registry()).unwrap();
    let subject = format!("e2e-latest-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(client.latest(&subject).await.unwrap(), None);
    let schema = r#"{"type":"record","name":"Probe","namespace":"dev.sluice.e2e","fields":[{"name":"a","type":"string"}]}"#;
    let id = client.register(&subject, schema).await.unwrap();
    let latest = client.latest(&subject).await.unwrap().expect("registered");
    assert_eq!((latest.id, latest.version), (id, 1));
    assert!(latest.schema.contains("Probe"));
}
