use super::*;
use crate::push::parse_range;
use clap::CommandFactory;

#[test]
fn cli_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn ranges() {
    assert_eq!(parse_range("1..10"), Ok((1, 10)));
    assert_eq!(parse_range("1..=10"), Ok((1, 10)));
    assert_eq!(parse_range("-2..2"), Ok((-2, 2)));
    assert!(parse_range("5..1").is_err());
    assert!(parse_range("a..b").is_err());
    assert!(parse_range("10").is_err());
}
