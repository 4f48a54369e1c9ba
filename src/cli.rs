//! The command line: every command, flag and its help text, as clap definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::term::ColorChoice;

/// A durable background job queue in one SQLite file, run by cron.
#[derive(Debug, Parser)]
#[command(
    name = "bgq",
    version,
    about,
    max_term_width = 100,
    after_help = "The callback protocol (stdin, BGQ_* variables, exit 0/75/76), exit status, files, environment, configuration and examples: `man bgq`, or `bgq man | man -l -` where the page is not installed."
)]
pub struct Cli {
    /// Config file [default: $BGQ_CONFIG, then ./bgq.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Say more on stderr (e.g. when another `process` holds the lock)
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Colour tables: auto (on a terminal, unless NO_COLOR is set), always, never
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a job; prints its id
    #[command(
        after_help = "Exit 0: stored, id printed. 1 or 2: nothing stored. 3: stored, but the id could not be printed (stdout full or closed): do not publish it again; --identifier with --unique makes retries safe."
    )]
    Publish(PublishArgs),
    /// Run every due job once, then exit (run it from cron every minute)
    Process(ProcessArgs),
    /// Show jobs, newest first
    List(ListArgs),
    /// Delete FINISHED jobs (or, with --state, failed or cancelled ones); prints how many
    Clear(ClearArgs),
    /// Show one job: every field, its parameters and the output of its last run
    Show(ShowArgs),
    /// Put jobs back to READY with their attempts reset
    Retry(RetryArgs),
    /// Stop jobs from running (and, with --kill, a running one)
    Cancel(CancelArgs),
    /// Start no more jobs of a queue or callback (all: every queue, every callback)
    Pause(PauseArgs),
    /// Lift `bgq pause`: the paused jobs run again
    Resume(PauseArgs),
    /// Counts per queue and state, recent outcomes and the last `process` run
    Stats(StatsArgs),
    /// Say in one line why a job is not running now
    Explain(ExplainArgs),
    /// Batches: jobs with a job to run when all of them have ended
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Health check for monitoring: exit 1 when `process` or the queue is stale
    Status(StatusArgs),
    /// Check the config against this machine and the queue
    Check,
    /// Copy this SQLite queue into an empty PostgreSQL schema, keeping ids, states and order
    #[command(
        after_help = "The SQLite file is only read. Stop `process` runs (and cron's) and publishers first: a queue a live run holds is refused, and jobs published during the copy stay behind. A schema that already holds jobs is refused and left unchanged (exit 1). Then point `database` at the URL."
    )]
    Migrate(MigrateArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Print the man page (roff)
    Man,
    /// Print the config's callback names, one per line (for the completion scripts)
    #[command(hide = true)]
    Callbacks,
}

/// `bgq publish`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("input").required(true).multiple(false))]
pub struct PublishArgs {
    /// Callback name, as configured under [callbacks.NAME]
    #[arg(value_parser = CallbackName, hide_possible_values = true)]
    pub callback: String,

    /// Parameters as JSON: the text itself, @FILE, or - for stdin
    #[arg(long, value_name = "TEXT|@FILE|-", group = "input")]
    pub json: Option<String>,

    /// Parameters as exact bytes from FILE, or - for stdin
    #[arg(long, value_name = "FILE|-", group = "input")]
    pub raw: Option<String>,

    /// One job per line of JSON from FILE or - for stdin, all in one transaction
    #[arg(long, value_name = "FILE|-", group = "input")]
    pub jsonl: Option<String>,

    /// Queue [default: `queue` from the config]
    #[arg(long, value_name = "Q", value_parser = non_empty)]
    pub queue: Option<String>,

    /// Jobs of one serial group run one at a time, in publish order
    #[arg(long, value_name = "G", value_parser = non_empty)]
    pub serial_group: Option<String>,

    /// A name for the job, for `list --identifier` and `--unique`
    #[arg(long, value_name = "I", value_parser = non_empty)]
    pub identifier: Option<String>,

    /// Not due before this long from now (e.g. 10m; at most 36500d, 100 years)
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, conflicts_with = "at")]
    pub delay: Option<Duration>,

    /// Not due before TIME: RFC 3339, or local `YYYY-MM-DD HH:MM` (within 100 years from now)
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,

    /// Higher runs first among due jobs of the queue (may be negative)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i64,

    /// Run only after job ID FINISHED (repeatable)
    #[arg(long = "after", value_name = "ID", value_parser = job_id)]
    pub after: Vec<i64>,

    /// Store nothing while a job with this --identifier is unfinished in the queue; print its id
    #[arg(long, requires = "identifier", conflicts_with = "jsonl")]
    pub unique: bool,

    /// Add the jobs to batch ID (`bgq batch new`); once it is sealed, only from a running job of it
    #[arg(long, value_name = "ID", value_parser = batch_id)]
    pub batch: Option<i64>,

    /// Start a detached `bgq process` for the queue right away [config: process_on_publish]
    #[arg(long)]
    pub process: bool,
}

/// `bgq batch`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Open a batch; prints its id (add jobs with `bgq publish --batch ID`)
    New(BatchNewArgs),
    /// No more jobs from outside: the batch completes once its jobs have all ended
    Seal(BatchIdArg),
    /// One batch: its jobs per state, progress, times and callbacks
    Show(BatchShowArgs),
    /// The batches, newest first
    List(BatchListArgs),
}

/// `bgq batch new`.
#[derive(Debug, Args)]
pub struct BatchNewArgs {
    /// Queue of its completion jobs [default: `queue` from the config]
    #[arg(long, value_name = "Q", value_parser = non_empty)]
    pub queue: Option<String>,

    /// Callback to publish when every job has ended (whatever the outcome)
    #[arg(long, value_name = "CALLBACK", value_parser = CallbackName, hide_possible_values = true)]
    pub on_complete: Option<String>,

    /// JSON given to the on-complete job as `params` (text, @FILE or -)
    #[arg(long, value_name = "JSON", requires = "on_complete")]
    pub on_complete_json: Option<String>,

    /// Callback to publish when every job FINISHED
    #[arg(long, value_name = "CALLBACK", value_parser = CallbackName, hide_possible_values = true)]
    pub on_success: Option<String>,

    /// JSON given to the on-success job as `params` (text, @FILE or -)
    #[arg(long, value_name = "JSON", requires = "on_success")]
    pub on_success_json: Option<String>,

    /// Free text, passed to the completion jobs
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

/// A batch id.
#[derive(Debug, Args)]
pub struct BatchIdArg {
    /// Batch id
    #[arg(value_name = "ID", value_parser = batch_id)]
    pub id: i64,
}

/// `bgq batch show`.
#[derive(Debug, Args)]
pub struct BatchShowArgs {
    /// Batch id
    #[arg(value_name = "ID", value_parser = batch_id)]
    pub id: i64,

    /// One JSON object
    #[arg(long)]
    pub json: bool,
}

/// `bgq batch list`.
#[derive(Debug, Args)]
pub struct BatchListArgs {
    /// Only batches not complete yet
    #[arg(long)]
    pub open: bool,

    /// Show at most N batches
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u64,

    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

/// Replacement parameters for `bgq retry`, read as `publish` reads them.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("parameters").multiple(false))]
pub struct NewParameters {
    /// New parameters as JSON: the text itself, @FILE, or - for stdin (one ID only)
    #[arg(long, value_name = "TEXT|@FILE|-", group = "parameters")]
    pub json: Option<String>,

    /// New parameters as exact bytes from FILE, or - for stdin (one ID only)
    #[arg(long, value_name = "FILE|-", group = "parameters")]
    pub raw: Option<String>,
}

/// `bgq show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Job id
    #[arg(value_name = "ID", value_parser = job_id)]
    pub id: i64,

    /// One JSON object
    #[arg(long)]
    pub json: bool,
}

/// `bgq retry`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(false))]
pub struct RetryArgs {
    /// Job ids
    #[arg(value_name = "ID", value_parser = job_id, group = "which")]
    pub ids: Vec<i64>,

    /// Every job in this state (repeatable), instead of ids
    #[arg(long, value_name = "S", group = "which", value_parser = state(), ignore_case = true)]
    pub state: Vec<String>,

    /// With --state: only jobs of this callback
    #[arg(long, value_name = "C", requires = "state", value_parser = CallbackName, hide_possible_values = true)]
    pub callback: Option<String>,

    /// With --state: only jobs of this queue
    #[arg(long, value_name = "Q", requires = "state")]
    pub queue: Option<String>,

    /// Every PERMANENTLY_FAILED or CANCELLED job of batch ID, instead of ids
    #[arg(long, value_name = "ID", group = "which", value_parser = batch_id)]
    pub batch: Option<i64>,

    /// Print what would change, change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Replacement parameters.
    #[command(flatten)]
    pub parameters: NewParameters,
}

/// `bgq cancel`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(false))]
pub struct CancelArgs {
    /// Job ids
    #[arg(value_name = "ID", value_parser = job_id, group = "which")]
    pub ids: Vec<i64>,

    /// Every job in this state (repeatable), instead of ids
    #[arg(long, value_name = "S", group = "which")]
    pub state: Vec<String>,

    /// With --state: only jobs of this callback
    #[arg(long, value_name = "C", requires = "state")]
    pub callback: Option<String>,

    /// With --state: only jobs of this queue
    #[arg(long, value_name = "Q", requires = "state")]
    pub queue: Option<String>,

    /// Every job of batch ID that has not started (with --kill, the running ones too)
    #[arg(long, value_name = "ID", group = "which", value_parser = batch_id)]
    pub batch: Option<i64>,

    /// Print what would change, change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Also cancel running jobs, stopping their callbacks
    #[arg(long)]
    pub kill: bool,
}

/// `bgq pause` and `bgq resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Only this queue [default: every queue]
    #[arg(long, value_name = "Q", value_parser = non_empty)]
    pub queue: Option<String>,

    /// Only this callback [default: every callback]
    #[arg(long, value_name = "C", value_parser = non_empty)]
    pub callback: Option<String>,
}

/// `bgq stats`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("format").multiple(false))]
pub struct StatsArgs {
    /// One JSON object
    #[arg(long, group = "format")]
    pub json: bool,

    /// The node_exporter textfile format
    #[arg(long, group = "format")]
    pub prometheus: bool,

    /// Write to PATH atomically instead of stdout
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `bgq explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Job id
    #[arg(value_name = "ID", value_parser = job_id)]
    pub id: i64,
}

/// `bgq status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Stale when `process` has not run, a run has held the lock, or a due job has waited this long
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::duration::parse)]
    pub stale_after: Duration,

    /// Queue to check (repeatable) [default: `queue` from the config]
    #[arg(long, value_name = "Q", value_parser = non_empty)]
    pub queue: Vec<String>,
}

/// `bgq migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL database: a postgres:// URL or a key=value connection string, as `database` takes
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// The schema to copy into; it must hold no jobs [default: bgq]
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
}

/// `bgq completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `bgq process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Queue [default: `queue` from the config]
    #[arg(long, value_name = "Q", value_parser = non_empty)]
    pub queue: Option<String>,

    /// Callbacks running at once [default: `concurrency` from the config]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,

    /// Start at most N jobs, then finish the running ones and exit
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs: Option<u64>,

    /// Start no new job after this long (e.g. 50s), then finish the running ones and exit
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub max_time: Option<Duration>,

    /// Keep running and start jobs as they come (for systemd or supervisord)
    #[arg(long)]
    pub watch: bool,

    /// With --watch: how often to look for jobs whose time has come
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::duration::parse, requires = "watch")]
    pub poll: Duration,

    /// With --watch: once bgq's own memory exceeds SIZE (e.g. 256M), finish and exit
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse, requires = "watch")]
    pub max_memory: Option<u64>,

    /// Write a line per job start and end to stderr: text (as -v does) or json (one JSON
    /// object per line, each with the job's id)
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Started by `publish --process`: wait briefly for a busy lock, leave stderr notices to
    /// the next run
    #[arg(long, hide = true, conflicts_with = "watch")]
    pub on_demand: bool,
}

/// How `process` writes its activity log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, as -v writes them
    Text,
    /// One JSON object per line
    Json,
}

/// `bgq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (repeatable)
    #[arg(long, value_name = "S", value_parser = state(), ignore_case = true)]
    pub state: Vec<String>,

    /// Only jobs of this queue
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,

    /// Only jobs of this callback
    #[arg(long, value_name = "C", value_parser = CallbackName, hide_possible_values = true)]
    pub callback: Option<String>,

    /// Only jobs with this identifier (repeatable)
    #[arg(long, value_name = "I")]
    pub identifier: Vec<String>,

    /// Only jobs of this batch
    #[arg(long, value_name = "ID", value_parser = batch_id)]
    pub batch: Option<i64>,

    /// Show at most N jobs; 0 shows them all
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u64,

    /// Show every job (as --limit 0)
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,

    /// One JSON object per line
    #[arg(long, conflicts_with = "unfinished")]
    pub json: bool,

    /// Print the identifiers that still have an unfinished job, one per line
    #[arg(long)]
    pub unfinished: bool,
}

/// `bgq clear`.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Delete only jobs that entered their state more than DAYS days ago (`14` or `14d`) [default: all]
    #[arg(value_name = "DAYS", value_parser = days)]
    pub days: Option<u32>,

    /// Delete jobs in this state (repeatable): FINISHED, PERMANENTLY_FAILED or CANCELLED [default: FINISHED]
    #[arg(long, value_name = "S")]
    pub state: Vec<String>,
}

/// A number of days: `14` or `14d`.
fn days(text: &str) -> Result<u32, String> {
    text.strip_suffix('d')
        .unwrap_or(text)
        .parse::<u32>()
        .map_err(|_| "DAYS is a whole number of days, such as 14 or 14d".to_owned())
}

/// `--state`: one of the job states, in any case; completions offer them.
fn state() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::job::JobState::ALL.map(|state| state.as_str()))
}

/// Stands, in the generated completion scripts, for the config's callback names: each shell's
/// script replaces it by a call to `bgq callbacks` (see `commands::generate`), since the names
/// are known only from the config at completion time.
pub const CALLBACKS_PLACEHOLDER: &str = "__bgq_callbacks__";

/// A callback name: any text (the command checks it against the config); its only "possible
/// value" is [`CALLBACKS_PLACEHOLDER`], for the completion scripts, hidden from the help.
#[derive(Debug, Clone, Copy)]
struct CallbackName;

impl clap::builder::TypedValueParser for CallbackName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(std::iter::once(
            clap::builder::PossibleValue::new(CALLBACKS_PLACEHOLDER),
        )))
    }
}

fn job_id(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err("a job id is a positive integer".to_owned()),
    }
}

fn batch_id(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err("a batch id is a positive integer".to_owned()),
    }
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn publish_needs_exactly_one_input() {
        assert!(Cli::try_parse_from(["bgq", "publish", "cb"]).is_err());
        assert!(
            Cli::try_parse_from(["bgq", "publish", "cb", "--json", "{}", "--raw", "-"]).is_err()
        );
        assert!(Cli::try_parse_from(["bgq", "publish", "cb", "--json", "{}"]).is_ok());
    }

    #[test]
    fn config_flag_is_accepted_after_the_command() {
        let cli = Cli::try_parse_from(["bgq", "list", "--config", "/x.toml"]).expect("parses");
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert!(Cli::try_parse_from(["bgq", "list", "--limit", "-1"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "list", "--state", "DONE"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "list", "--all", "--limit", "3"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "process", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "process", "--max-time", "abc"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "clear", "-3"]).is_err());
    }

    #[test]
    fn migrate_needs_to() {
        assert!(Cli::try_parse_from(["bgq", "migrate"]).is_err());
        let cli =
            Cli::try_parse_from(["bgq", "migrate", "--to", "postgres://db/app"]).expect("parses");
        let Command::Migrate(args) = cli.command else {
            panic!("not migrate");
        };
        assert_eq!((args.to.as_str(), args.schema), ("postgres://db/app", None));
    }

    #[test]
    fn watch_options_need_watch() {
        assert!(Cli::try_parse_from(["bgq", "process", "--poll", "2s"]).is_err());
        assert!(Cli::try_parse_from(["bgq", "process", "--max-memory", "1G"]).is_err());
        assert!(
            Cli::try_parse_from([
                "bgq",
                "process",
                "--watch",
                "--poll",
                "2s",
                "--max-memory",
                "1G"
            ])
            .is_ok()
        );
    }

    #[test]
    fn publish_shaping_flags_parse() {
        let cli = Cli::try_parse_from([
            "bgq",
            "publish",
            "cb",
            "--json",
            "{}",
            "--priority",
            "-5",
            "--after",
            "3",
            "--after",
            "4",
        ])
        .expect("parses");
        let Command::Publish(args) = cli.command else {
            panic!("not publish");
        };
        assert_eq!((args.priority, args.after), (-5, vec![3, 4]));
        assert!(Cli::try_parse_from(["bgq", "publish", "cb", "--json", "{}", "--unique"]).is_err());
        assert!(
            Cli::try_parse_from([
                "bgq",
                "publish",
                "cb",
                "--json",
                "{}",
                "--delay",
                "1m",
                "--at",
                "2026-01-01 10:00"
            ])
            .is_err()
        );
    }
}
