//! The command line, parsed by clap, and the run's settings it resolves to.

use std::path::PathBuf;

use clap::Parser;
use mesh_e2e::workspace;

/// The command line (`cargo xtask bench` passes its arguments through). `--quick` changes the
/// defaults of `--duration`, `--repeats`, `--profile` and `--idle-connections`; a value given
/// explicitly wins over it. A flag given twice takes its last value.
#[derive(Parser, Debug)]
#[command(name = "mesh-bench", args_override_self = true)]
#[command(about = "The mesh against Envoy, nginx and haproxy on this machine: same backends, rules and load")]
pub(crate) struct Args {
    /// Harness check, not for conclusions: 1 s × 2 repeats, two cells, no profile, 1000 idle connections.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where report.md, rps.svg and results.json are written [default: target/bench in the workspace].
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Seconds per measured run [default: 5, 1 with --quick].
    #[arg(long, value_name = "SECS")]
    pub(crate) duration: Option<u32>,
    /// Measured runs per contender and cell [default: 3, 2 with --quick].
    #[arg(long, value_name = "N")]
    pub(crate) repeats: Option<usize>,
    /// Total request rate of the fixed-rate cell.
    #[arg(long, value_name = "RPS", default_value_t = 4000)]
    pub(crate) rate: u32,
    /// Profile the mesh proxy with perf (the default without --quick).
    #[arg(long, overrides_with = "no_profile")]
    pub(crate) profile: bool,
    /// Do not profile the mesh proxy.
    #[arg(long, overrides_with = "profile")]
    pub(crate) no_profile: bool,
    /// Skip the eBPF connect4 vs iptables REDIRECT comparison.
    #[arg(long)]
    pub(crate) no_redirect: bool,
    /// Contenders to start (direct,mesh,envoy,nginx,haproxy; all by default); the mesh is always there.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) contenders: Option<Vec<String>>,
    /// Idle keep-alive connections of the per-connection memory cell [default: 5000, 1000 with --quick].
    #[arg(long, value_name = "N")]
    pub(crate) idle_connections: Option<usize>,
    /// Run only the idle-connection cell (to iterate on per-connection memory).
    #[arg(long)]
    pub(crate) idle_only: bool,
}

/// The run's settings, the defaults `--quick` implies resolved.
#[derive(Debug, PartialEq)]
pub(crate) struct Opts {
    pub(crate) quick: bool,
    pub(crate) out: PathBuf,
    pub(crate) duration: u32,
    pub(crate) repeats: usize,
    pub(crate) rate: u32,
    pub(crate) profile: bool,
    /// Contenders to start (all by default); the mesh is always there.
    pub(crate) only: Option<Vec<String>>,
    pub(crate) redirect: bool,
    /// Idle keep-alive connections held open for the per-connection memory cell.
    pub(crate) idle_connections: usize,
    /// Run only the idle-connection cell (to iterate on per-connection memory).
    pub(crate) idle_only: bool,
}

impl From<Args> for Opts {
    fn from(a: Args) -> Opts {
        let q = a.quick;
        let profile = if a.no_profile { false } else { a.profile || !q };
        Opts {
            quick: q,
            out: a.out.unwrap_or_else(|| workspace().join("target/bench")),
            duration: a.duration.unwrap_or(if q { 1 } else { 5 }).max(1),
            repeats: a.repeats.unwrap_or(if q { 2 } else { 3 }).max(1),
            rate: a.rate,
            profile,
            only: a.contenders,
            redirect: !a.no_redirect,
            idle_connections: a.idle_connections.unwrap_or(if q { 1000 } else { 5000 }).max(1),
            idle_only: a.idle_only,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        Opts::from(Args::try_parse_from(std::iter::once("mesh-bench").chain(args.iter().copied())).expect("parses"))
    }

    #[test]
    fn defaults_and_quick_defaults() {
        let full = opts(&[]);
        assert_eq!((full.duration, full.repeats, full.rate, full.idle_connections), (5, 3, 4000, 5000));
        assert!(full.profile && full.redirect && !full.quick && !full.idle_only && full.only.is_none());
        assert!(full.out.ends_with("target/bench"));
        let quick = opts(&["--quick"]);
        assert_eq!((quick.duration, quick.repeats, quick.idle_connections), (1, 2, 1000));
        assert!(!quick.profile && quick.quick);
    }

    #[test]
    fn explicit_values_win_over_quick_and_are_at_least_one() {
        let o = opts(&["--duration", "7", "--quick", "--repeats", "4", "--idle-connections", "9", "--profile"]);
        assert_eq!((o.duration, o.repeats, o.idle_connections, o.profile), (7, 4, 9, true));
        let o = opts(&["--duration", "0", "--repeats", "0", "--idle-connections", "0"]);
        assert_eq!((o.duration, o.repeats, o.idle_connections), (1, 1, 1));
    }

    #[test]
    fn last_flag_wins_and_lists_split_on_commas() {
        assert!(!opts(&["--profile", "--no-profile"]).profile);
        assert!(opts(&["--quick", "--no-profile", "--profile"]).profile);
        assert_eq!(opts(&["--rate", "10", "--rate", "20"]).rate, 20);
        let o = opts(&["--contenders", "mesh,nginx", "--no-redirect", "--out", "/tmp/x", "--idle-only"]);
        assert_eq!(o.only, Some(vec!["mesh".to_string(), "nginx".to_string()]));
        assert!(!o.redirect && o.idle_only);
        assert_eq!(o.out, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_arguments_and_bad_numbers_are_refused() {
        for bad in [&["--nope"][..], &["--duration", "x"], &["--repeats"]] {
            assert!(Args::try_parse_from(std::iter::once("mesh-bench").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
    }
}
