//! The `sluice` binary as a user runs it.

use std::process::Command;

use crate::support::require_stack;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[tokio::test]
async fn doctor_reports_cluster_and_registry() {
    require_stack().await;
    let out = sluice().arg("doctor").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cluster id "), "{stdout}");
    assert!(stdout.contains("metadata.version="), "{stdout}");
    assert!(
        stdout.contains("transactions (exactly-once) supported"),
        "{stdout}"
    );
    assert!(stdout.contains("global compatibility "), "{stdout}");
}

#[test]
fn doctor_names_the_unreachable_address_and_the_command_to_fix_it() {
    let out = sluice()
        .arg("doctor")
        .env("SLUICE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("SLUICE_REGISTRY__URL", "http://127.0.0.1:2/apis/ccompat/v7")
        .env("SLUICE_REGISTRY__TIMEOUT_MS", "2000")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("cannot reach Kafka at 127.0.0.1:1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("http://127.0.0.1:2/apis/ccompat/v7"),
        "{stdout}"
    );
    assert!(stdout.contains("make stack"), "{stdout}");
}

#[test]
fn a_misspelt_config_key_is_an_error_naming_it() {
    let out = sluice()
        .arg("doctor")
        .env("SLUICE_KAFKA__BOOTSTRAP_SERVER", "x:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("SLUICE_KAFKA__BOOTSTRAP_SERVER"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `bootstrap_server`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn demo_roundtrip_publishes_and_reads_back() {
    require_stack().await;
    let topic = crate::support::unique_topic("demo");
    let out = sluice()
        .args(["demo", "roundtrip", "--topic", &topic])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("magic 0x00"), "{stdout}");
    assert!(stdout.contains("roundtrip ok"), "{stdout}");
}

/// `sluice saga run` is the orchestrator; `sluice sagas`, its old name, is hidden from
/// `sluice --help` but still takes the same arguments, after a notice on stderr.
#[test]
fn the_orchestrator_is_saga_run_and_the_old_name_still_works_with_a_notice() {
    const NOTICE: &str = "`sluice sagas` is now `sluice saga run`";
    let new = sluice().args(["saga", "run", "--help"]).output().unwrap();
    let new_help = String::from_utf8_lossy(&new.stdout);
    assert!(new.status.success(), "{new_help}");
    assert!(new_help.contains("Usage: sluice saga run"), "{new_help}");
    assert!(new_help.contains("--keep-finished"), "{new_help}");
    assert!(!String::from_utf8_lossy(&new.stderr).contains(NOTICE));

    let old = sluice().args(["sagas", "--help"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(old.status.success(), "{stderr}");
    assert_eq!(stderr.matches(NOTICE).count(), 1, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&old.stdout), new_help);

    let top = sluice().arg("--help").output().unwrap();
    let top_help = String::from_utf8_lossy(&top.stdout);
    assert!(top.status.success(), "{top_help}");
    let commands: Vec<&str> = top_help
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"saga"), "{top_help}");
    assert!(!commands.contains(&"sagas"), "{top_help}");
}

/// mimalloc reads its options from the environment as a process starts: every `sluice`
/// process runs itself again with its purge delay set (same pid, same arguments), and
/// leaves an operator's own setting alone.
#[tokio::test]
async fn every_process_runs_with_its_allocator_purge_delay_unless_the_operator_set_one() {
    require_stack().await;
    let topic = crate::support::unique_topic("allocator");
    sluice_runtime::kafka::create_topic_if_missing(
        &crate::support::clients().admin().unwrap(),
        &topic,
        1,
    )
    .await
    .unwrap();
    for (given, expected) in [(None, "100"), (Some("7"), "7")] {
        let mut command = sluice();
        command
            .args(["tail", &topic, "--follow"])
            .env_remove("MIMALLOC_PURGE_DELAY")
            .stdout(std::process::Stdio::null());
        if let Some(value) = given {
            command.env("MIMALLOC_PURGE_DELAY", value);
        }
        let mut child = command.spawn().unwrap();
        let environ = format!("/proc/{}/environ", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let vars = std::fs::read(&environ).unwrap();
            let value = vars
                .split(|b| *b == 0)
                .find_map(|v| v.strip_prefix(b"MIMALLOC_PURGE_DELAY=".as_slice()));
            // The new image has the same arguments; before the restart the variable is
            // missing (or the operator's).
            if value.is_some() || std::time::Instant::now() > deadline {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).skip(1).collect();
                assert_eq!(
                    args[..3],
                    [b"tail".as_slice(), topic.as_bytes(), b"--follow"]
                );
                break value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process keeps running"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.as_deref(), Some(expected), "given {given:?}");
    }
}
