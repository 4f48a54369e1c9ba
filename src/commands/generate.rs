//! `bgq completions` and `bgq man`: generated from the clap definitions, so they never drift
//! from the commands themselves; the man page adds the sections a reader looks for (the
//! callback protocol, exit status, files, environment, configuration, examples), written here.
//!
//! Callback names are known only from the config, at completion time: the clap definitions
//! give a callback argument one placeholder value (`cli::CALLBACKS_PLACEHOLDER`), which each
//! shell's script gets replaced by a call to the hidden `bgq callbacks`.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{CALLBACKS_PLACEHOLDER, Cli};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bgq", &mut out);
    let script = with_callback_names(shell, &String::from_utf8_lossy(&out));
    std::io::stdout().lock().write_all(script.as_bytes())?;
    Ok(())
}

/// `script` with the placeholder for callback names replaced by what asks `bgq callbacks` for
/// them when the user presses Tab (the config found as bgq finds it: `BGQ_CONFIG`, then
/// `./bgq.toml`; errors are silenced, so that a missing config completes nothing).
fn with_callback_names(shell: clap_complete::Shell, script: &str) -> String {
    use clap_complete::Shell;
    let placeholder = CALLBACKS_PLACEHOLDER;
    match shell {
        // Inside double quotes of `compgen -W "..."` and of the `opts="..."` of publish.
        Shell::Bash => format!(
            "{}{BASH_CALLBACKS}",
            script.replace(placeholder, "$(_bgq_callbacks)")
        ),
        // An `_arguments` action in braces is evaluated; `$words[1]` is the binary.
        Shell::Zsh => script.replace(
            &format!("({placeholder})"),
            "{compadd -- ${(f)\"$(${words[1]} callbacks 2>/dev/null)\"}}",
        ),
        // fish evaluates a command substitution in `-a`; it completes no positional values, so
        // publish's CALLBACK gets a line of its own. The hidden subcommand is not offered.
        Shell::Fish => {
            let names = "(bgq callbacks 2>/dev/null)";
            let mut script: String = script
                .lines()
                .filter(|line| !line.contains("-a \"callbacks\""))
                .map(|line| format!("{}\n", line.replace(&format!("{placeholder}\\t''"), names)))
                .collect();
            script.push_str(&format!(
                "complete -c bgq -n \"__fish_bgq_using_subcommand publish\" -a \"{names}\"\n"
            ));
            script
        }
        _ => script.replace(placeholder, ""),
    }
}

/// Prints the man page: bgq(1) with a section for every command.
pub fn man() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    // `bgq batch` has commands of its own: each is listed as one command, `bgq batch new`.
    let commands = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .flat_map(|sub| {
            let name = sub.get_name().to_owned();
            let nested: Vec<(String, clap::Command)> = sub
                .get_subcommands()
                .filter(|nested| !nested.is_hide_set())
                .map(|nested| (format!("{name} {}", nested.get_name()), nested.clone()))
                .collect();
            if nested.is_empty() {
                vec![(name, sub.clone())]
            } else {
                nested
            }
        });
    for (name, sub) in commands {
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let mut usage = sub.clone().bin_name(format!("bgq {name}"));
        writeln!(out, ".TP\n\\fBbgq {name}\\fR\n{}", escape(&about))?;
        writeln!(
            out,
            ".br\nUsage: {}",
            escape(&usage.render_usage().to_string().replace("Usage: ", ""))
        )?;
        for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let flag = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("-{short}, --{long}"),
                (Some(long), None) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => arg.get_id().to_string().to_uppercase(),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            writeln!(out, ".RS\n.TP\n{}\n{}\n.RE", escape(&flag), escape(&help))?;
        }
    }
    out.extend_from_slice(SECTIONS.as_bytes());
    man.render_version_section(&mut out)?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("cannot write the man page")?;
    Ok(())
}

/// Text made safe for roff: backslashes doubled, and a leading `.` or `'` not taken for a
/// request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Prints the config's callback names, one per line: what the completion scripts offer where a
/// callback is expected (hidden `bgq callbacks`).
pub fn callbacks(config: &crate::config::Config) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for name in config.callbacks.keys() {
        writeln!(out, "{}", crate::escape::line(name))?;
    }
    out.flush()?;
    Ok(())
}

/// The bash function behind callback names: the binary being completed (`${COMP_WORDS[0]}`),
/// with the `--config` given on the line being completed, if any.
const BASH_CALLBACKS: &str = r#"
_bgq_callbacks() {
    local i config=()
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        case "${COMP_WORDS[i]}" in
            --config) config=(--config "${COMP_WORDS[i+1]}") ;;
            --config=*) config=("${COMP_WORDS[i]}") ;;
        esac
    done
    "${COMP_WORDS[0]}" "${config[@]}" callbacks 2>/dev/null
}
"#;

/// The sections after COMMANDS, in roff: what `--help` cannot hold. Kept in step with README.md
/// (the callback protocol, exit codes, files, configuration and running it).
const SECTIONS: &str = r#".SH THE CALLBACK PROTOCOL
For each job, \fBbgq process\fR starts the callback's \fBcommand\fR from the config as it is
written (an argv list, never through a shell), in its own process group and in its
\fBworking_dir\fR (default: the config file's folder).
.TP
.B stdin
The job's parameters as one line of compact JSON and a newline, keys in the order they were
published; for a job published with \fB\-\-raw\fR, the exact bytes. Job data never goes on the
command line.
.TP
.B environment
bgq's own environment, the callback's \fBenv\fR, and:
.RS
.TP
.B BGQ_JOB_ID
the job's id (key idempotent work on it)
.TP
.B BGQ_QUEUE
its queue
.TP
.B BGQ_CALLBACK
its callback name
.TP
.B BGQ_ATTEMPT
1 on the first run; a run that ended WAITING does not count
.TP
.BR BGQ_SERIAL_GROUP ", " BGQ_IDENTIFIER ", " BGQ_BATCH_ID
when the job has them (a job of a batch may publish into it with
\fB"$BGQ_BIN" publish ... \-\-batch "$BGQ_BATCH_ID"\fR, also after its seal)
.TP
.B BGQ_CONFIG
the config file, so that a callback can publish follow\-up jobs
.TP
.B BGQ_BIN
the absolute path of the running bgq, so that a callback publishes with the same binary
(\fB"$BGQ_BIN" publish ...\fR) whatever cron's PATH holds
.RE
.TP
.B exit status
.RS
.TP
.B 0
FINISHED.
.TP
.B 75
(EX_TEMPFAIL) TEMPORARILY_FAILED: retried after its backoff (\fB[retry]\fR), in a later run.
.TP
.B 76
WAITING: "not yet"; runs again at the next \fBprocess\fR run, the attempt not counted.
.TP
.B any other code, or a signal
PERMANENTLY_FAILED: kept for \fBbgq show\fR and \fBbgq retry\fR; a notice goes out.
.TP
.B still running at timeout
its process group gets SIGTERM, SIGKILL after \fBkill_grace\fR; TEMPORARILY_FAILED.
.RE
.IP
A command that cannot be started (missing, not executable, missing \fB#!\fR interpreter,
missing \fBworking_dir\fR) is a deployment problem: the job stays as it was, spends no attempt,
and the run starts no more jobs of that callback, says so on stderr and exits 1.
.TP
.B output
stdout and stderr together; the tail is kept with the job (\fBbgq show\fR) and sent in notices.
.SH EXIT STATUS
.TP
.B 0
Success. \fBprocess\fR exits 0 when the run itself worked, whatever its jobs' outcomes, and
when another \fBprocess\fR holds the queue's lock.
.TP
.B 1
bgq could not do its work (an unreadable or full database, a denied file, a lost server, a
callback that cannot start), or \fBstatus\fR/\fBcheck\fR found problems.
.TP
.B 2
Input you must fix: a bad flag or argument, config, callback name or JSON. Nothing was changed.
Every error is one line on stderr starting \fBbgq: error:\fR.
.TP
.B 3
\fBpublish\fR only: the jobs were stored but their ids could not be printed; do not publish
them again.
.SH FILES
.TP
.B ./bgq.toml
the config, when neither \fB\-\-config\fR nor \fBBGQ_CONFIG\fR names one
.TP
.B database
the SQLite file the config names (with its \fB\-wal\fR and \fB\-shm\fR files), mode 0600 (0660
with \fBgroup\fR), its folder 0700; relative paths are relative to the config file's folder
.TP
.B $TMPDIR/bgq\-UID/bgq\-HASH.lock
a queue's lock file (one per database and queue), in a private folder, or in \fBtemp_dir\fR
when the config names one; never removed
.SH ENVIRONMENT
.TP
.B BGQ_CONFIG
the config file, when \fB\-\-config\fR is not given
.TP
.B BGQ_HOST_ID
names this host among the runs sharing a PostgreSQL queue; overrides \fBhost_id\fR
.TP
.BR PGPASSWORD ", " PGPASSFILE ", " PGHOST ", " PGPORT ", " PGUSER ", " PGDATABASE ", " PGSSLMODE ", " PGSSLROOTCERT ", " PGCONNECT_TIMEOUT
read as libpq reads them, for what a PostgreSQL \fBdatabase\fR string leaves out
(the password file: \fBPGPASSFILE\fR, else \fB~/.pgpass\fR)
.TP
.B TMPDIR
where the private lock folder is made (default \fB/tmp\fR)
.TP
.B NO_COLOR
set and not empty: tables are not coloured (\fB\-\-color auto\fR)
.SH CONFIGURATION
A TOML file. Only \fBdatabase\fR and each callback's \fBcommand\fR are required; unknown keys
are refused with their line. Every setting, commented, with its default: \fBconfig.example.toml\fR
in the source. For example:
.PP
.nf
.RS
database = "/var/lib/bgq/bgq.sqlite"   # or a postgres:// URL
queue = "general"
concurrency = 4
notify_on_attempts = 5
notify = ["/usr/local/bin/bgq\-mail"]
[retry]
delay = "1m"
max_attempts = 25
[callbacks.sendEmail]
command = ["/usr/bin/php", "bin/console", "app:send\-email"]
timeout = "60s"
working_dir = "/srv/app"
env = { APP_ENV = "prod" }
.RE
.fi
.SH EXAMPLES
Install the binary where cron finds it (cron's PATH is \fB/usr/bin:/bin\fR), e.g.
\fBinstall \-m 755 ~/.cargo/bin/bgq /usr/local/bin/bgq\fR, and give absolute paths:
.PP
.nf
.RS
# crontab of the service user
* * * * *  /usr/local/bin/bgq \-\-config /etc/bgq.toml process
0 3 * * *  /usr/local/bin/bgq \-\-config /etc/bgq.toml clear 14 >/dev/null
*/5 * * * *  /usr/local/bin/bgq \-\-config /etc/bgq.toml status \-\-stale\-after 10m >/dev/null
.RE
.fi
.PP
A watching run under supervisord:
.PP
.nf
.RS
[program:bgq]
command=/usr/local/bin/bgq \-\-config /etc/bgq.toml process \-\-watch \-\-max\-memory 256M
user=app
autorestart=true
stopsignal=TERM
stopwaitsecs=70
.RE
.fi
.PP
Publish a job, look at the queue, and follow one job:
.PP
.nf
.RS
bgq publish sendEmail \-\-json '{"to":"a@example.com"}' \-\-identifier sendEmail\-7
bgq list \-\-state PERMANENTLY_FAILED
bgq show 42; bgq explain 42; bgq retry 42
.RE
.fi
.PP
A batch, with a job to run once all of its jobs have ended (its stdin: the batch id,
description, counts per final state and the ids of the jobs that did not finish):
.PP
.nf
.RS
batch=$(bgq batch new \-\-on\-complete importDone \-\-description "import 42")
bgq publish refreshProduct \-\-jsonl products.jsonl \-\-batch "$batch"
bgq batch seal "$batch"; bgq batch show "$batch"
.RE
.fi
.PP
Completions and this page, installed:
.PP
.nf
.RS
bgq completions bash > /etc/bash_completion.d/bgq
bgq man > /usr/local/share/man/man1/bgq.1
.RE
.fi
"#;
