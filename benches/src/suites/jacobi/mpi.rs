//! The hand-written MPI baseline, `benches/mpi/jacobi.c`: written into the target directory
//! and compiled there with `mpicc -O2` each time the suite runs (Debian's `libopenmpi-dev`),
//! then run with `mpirun`, over TCP on loopback or over Open MPI's shared-memory transport.
//! Nothing here panics or fails the suite: every failure becomes an error string that the
//! report carries beside `null` figures (and that is printed to stderr).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The C source, compiled at bench time (so the figures are always of this text).
const SOURCE: &str = include_str!("../../../mpi/jacobi.c");
/// How long one `mpirun` may take before it is killed.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Which byte transfer layer carries MPI's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Btl {
    /// `--mca btl tcp,self`, loopback only: the baseline issue #10 compares with.
    Tcp,
    /// Open MPI's shared-memory BTL (`vader` in Open MPI 4, `sm` in 5), for a later issue.
    SharedMemory,
}

/// A compiled baseline and the shared-memory BTL this Open MPI offers.
#[derive(Debug)]
pub(super) struct Mpi {
    binary: PathBuf,
    shared_memory_btl: Result<String, String>,
}

/// What one `mpirun` printed.
#[derive(Debug, Clone)]
pub(super) struct MpiRun {
    /// The slowest rank's time over the iterations.
    pub seconds: f64,
    /// Wrapping sum of every cell's bit pattern (see jacobi.c).
    pub checksum_bits: u64,
}

impl Mpi {
    /// Writes the source next to this executable and compiles it with `mpicc -O2`.
    pub(super) fn build() -> Result<Mpi, String> {
        compile().map_err(|e| format!("{e:#}")).map(|binary| Mpi {
            binary,
            shared_memory_btl: shared_memory_btl().map_err(|e| format!("{e:#}")),
        })
    }

    /// The shared-memory BTL's name, or why there is none.
    pub(super) fn shared_memory_btl(&self) -> Result<&str, &str> {
        self.shared_memory_btl.as_deref().map_err(String::as_str)
    }

    /// The `mpirun` arguments for `ranks` ranks over `btl` on a machine of `cpus` CPUs:
    /// ranks bound to cores while they do not outnumber them, unbound otherwise (what
    /// `mpirun` itself does), and the TCP BTL confined to loopback. `pml ob1` keeps the UCX
    /// PML (which ignores `--mca btl`) out.
    pub(super) fn arguments(
        &self,
        ranks: u32,
        btl: Btl,
        cpus: usize,
    ) -> Result<Vec<String>, String> {
        let btls = match btl {
            Btl::Tcp => "tcp,self".to_owned(),
            Btl::SharedMemory => format!("{},self", self.shared_memory_btl()?),
        };
        let bind = if ranks as usize <= cpus {
            "core"
        } else {
            "none"
        };
        let mut args: Vec<String> = [
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            &ranks.to_string(),
            "--bind-to",
            bind,
            "--mca",
            "pml",
            "ob1",
            "--mca",
            "btl",
            &btls,
        ]
        .map(str::to_owned)
        .into();
        if btl == Btl::Tcp {
            args.extend(["--mca", "btl_tcp_if_include", "lo"].map(str::to_owned));
        }
        Ok(args)
    }

    /// Runs the baseline: `ranks` ranks, an `n`×`n` grid, `iterations` iterations.
    pub(super) fn run(
        &self,
        ranks: u32,
        btl: Btl,
        cpus: usize,
        n: usize,
        iterations: usize,
    ) -> Result<MpiRun, String> {
        let mut args = self.arguments(ranks, btl, cpus)?;
        args.push(self.binary.display().to_string());
        args.extend([n.to_string(), iterations.to_string()]);
        run_mpirun(&args).map_err(|e| format!("mpirun {}: {e:#}", args.join(" ")))
    }
}

/// `mpicc -O2` of [`SOURCE`] into this executable's directory (the target directory).
fn compile() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable's directory")?;
    let source = dir.join("jacobi-mpi.c");
    let binary = dir.join("jacobi-mpi");
    std::fs::write(&source, SOURCE).with_context(|| format!("write {}", source.display()))?;
    let output = Command::new("mpicc")
        .arg("-O2")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mpicc not found: install Debian's libopenmpi-dev and openmpi-bin \
             (scripts/install-deps.sh)"
        ),
        other => other.context("run mpicc")?,
    };
    if !output.status.success() {
        bail!(
            "mpicc -O2 {} failed ({}; is libopenmpi-dev installed?): {}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(binary)
}

/// `vader` or `sm`, whichever `ompi_info` lists among its BTL components.
fn shared_memory_btl() -> anyhow::Result<String> {
    let output = Command::new("ompi_info")
        .stdin(Stdio::null())
        .output()
        .context("run ompi_info")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let btls: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("MCA btl:"))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    ["vader", "sm"]
        .into_iter()
        .find(|name| btls.contains(name))
        .map(str::to_owned)
        .with_context(|| format!("no shared-memory BTL (vader or sm) among {btls:?}"))
}

/// Runs `mpirun args`, killing it past [`RUN_DEADLINE`]; parses the JSON line rank 0 prints.
fn run_mpirun(args: &[String]) -> anyhow::Result<MpiRun> {
    let mut child = Command::new("mpirun")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start mpirun (openmpi-bin)")?;
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let readers = pipes.map(|pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {RUN_DEADLINE:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    if !status.success() {
        bail!("{status}: {}", stderr.trim());
    }
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON line in its output: {stdout:?}"))?;
    let report: Value = serde_json::from_str(line)?;
    let bits = report["checksum_bits"]
        .as_str()
        .context("checksum_bits missing")?;
    Ok(MpiRun {
        seconds: report["seconds"].as_f64().context("seconds missing")?,
        checksum_bits: u64::from_str_radix(bits, 16).context("checksum_bits in hex")?,
    })
}
