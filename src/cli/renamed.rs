//! Commands that were renamed, kept working under their old name.
//!
//! `sluice sagas` ran the orchestrator and `sluice saga` operated sagas: one letter apart.
//! The orchestrator is now `sluice saga run`. Scripts and manifests that still say
//! `sluice sagas` keep working: the old name is rewritten to the new one before clap parses
//! the arguments (so `--help`, errors and flags are exactly those of `saga run`), with a
//! notice on stderr. It is not listed in `sluice --help`.

use std::ffi::{OsStr, OsString};

/// What `sluice sagas` prints to stderr before it runs as `sluice saga run`.
pub const SAGAS_NOTICE: &str = "`sluice sagas` is now `sluice saga run`";

/// The command line with an old command name replaced by the new one; prints the notice
/// when it replaced one.
pub fn rewrite(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let (args, renamed) = rename_sagas(args.into_iter().collect());
    if renamed {
        eprintln!("{SAGAS_NOTICE}");
    }
    args
}

/// Replaces the subcommand `sagas` with `saga run`; true when it did. Only the first
/// positional argument is the subcommand: the value of `--config` (the one global option that
/// takes a value) and anything after the subcommand are left alone, so a config file or a
/// saga named `sagas` is not mistaken for it.
fn rename_sagas(mut args: Vec<OsString>) -> (Vec<OsString>, bool) {
    let mut i = 1; // args[0] is the program
    while i < args.len() {
        let arg = args[i].as_os_str();
        if arg == "--config" {
            i += 2;
        } else if arg == "--" || !is_option(arg) {
            break;
        } else {
            i += 1;
        }
    }
    if args.get(i).is_some_and(|a| a == "sagas") {
        args.splice(i..=i, [OsString::from("saga"), OsString::from("run")]);
        return (args, true);
    }
    (args, false)
}

fn is_option(arg: &OsStr) -> bool {
    arg.as_encoded_bytes().starts_with(b"-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(line: &str) -> (String, bool) {
        let args = line.split(' ').map(OsString::from).collect();
        let (args, renamed) = rename_sagas(args);
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        (args.join(" "), renamed)
    }

    #[test]
    fn sagas_becomes_saga_run_with_its_flags() {
        assert_eq!(
            renamed("sluice sagas --saga order-fulfillment --max-batch 10"),
            (
                "sluice saga run --saga order-fulfillment --max-batch 10".into(),
                true
            )
        );
        assert_eq!(
            renamed("sluice sagas --help"),
            ("sluice saga run --help".into(), true)
        );
    }

    #[test]
    fn sagas_after_global_config_is_still_the_subcommand() {
        assert_eq!(
            renamed("sluice --config sluice.yaml sagas"),
            ("sluice --config sluice.yaml saga run".into(), true)
        );
        assert_eq!(
            renamed("sluice --config=sluice.yaml sagas"),
            ("sluice --config=sluice.yaml saga run".into(), true)
        );
    }

    #[test]
    fn other_words_sagas_are_left_alone() {
        for line in [
            "sluice --config sagas saga list",
            "sluice saga list --saga sagas",
            "sluice run --role sagas",
            "sluice saga run",
            "sluice",
        ] {
            assert_eq!(renamed(line), (line.to_string(), false), "{line}");
        }
    }
}
