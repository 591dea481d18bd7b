use clap::{CommandFactory, Parser};

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    consume: ConsumeArgs,
}

#[test]
fn the_flags_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults_are_the_contracts_and_flags_map_to_options() {
    let cli = Cli::try_parse_from(["wq", "--", "cat", "-n"]).expect("parses");
    let opts = cli.consume.options();
    assert_eq!(opts.lease, workq_proto::defaults::LEASE);
    assert_eq!(opts.count, None);
    assert_eq!(opts.concurrency, 1);
    assert_eq!(opts.program, ["cat", "-n"]);

    let cli = Cli::try_parse_from([
        "wq",
        "-c",
        "3",
        "--concurrency",
        "4",
        "--lease",
        "1m",
        "--fatal-exit-codes",
        "7,9",
        "--until-empty",
        "--",
        "prog",
    ])
    .expect("parses");
    let opts = cli.consume.options();
    assert_eq!(opts.count, Some(3));
    assert_eq!(opts.concurrency, 4);
    assert_eq!(opts.lease, Duration::from_secs(60));
    assert!(opts.until_empty);
    assert_eq!(
        opts.fatal_exit_codes.into_iter().collect::<Vec<_>>(),
        [7, 9]
    );
    assert!(Cli::try_parse_from(["wq", "--concurrency", "0", "--", "p"]).is_err());
}
