//! Where the testbed is (as scripts/testbed/lib.sh says), and the suite's settings from the
//! environment.

use std::env;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

/// The testbed's paths: the same as lib.sh's TB_* variables.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// The project; mounted at its own path in the root, so paths under it are the same there.
    pub project: PathBuf,
    /// scripts/testbed.
    pub scripts: PathBuf,
    pub root: PathBuf,
    pub guest: PathBuf,
    pub runs: PathBuf,
    /// Written last by root.sh.
    pub root_stamp: PathBuf,
}

impl Testbed {
    /// $VGPUD_PROJECT, else the project this runner was built from.
    pub fn from_env() -> Result<Testbed, Error> {
        let project = match env::var_os("VGPUD_PROJECT") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        };
        let project = project.canonicalize().map_err(|e| Error::io(&project, e))?;
        let scripts = project.join("scripts/testbed");
        if !scripts.join("lib.sh").is_file() {
            return Err(Error::msg(format!(
                "{} has no scripts/testbed/lib.sh: not the vgpud project (set VGPUD_PROJECT)",
                project.display()
            )));
        }
        let dir = match env::var_os("VGPUD_TESTBED") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => project.join("build/testbed"),
        };
        // $VGPUD_TESTBED: the root, the guest image and the runs.
        let root = dir.join("root");
        Ok(Testbed {
            scripts,
            guest: dir.join("guest"),
            runs: dir.join("runs"),
            root_stamp: root.join(".vgpud-testbed-complete"),
            root,
            project,
        })
    }

    pub fn script(&self, name: &str) -> PathBuf {
        self.scripts.join(name)
    }

    /// The host's path of `path` inside the root.
    pub fn in_root(&self, path: &str) -> PathBuf {
        let mut p = self.root.clone().into_os_string();
        p.push(path);
        PathBuf::from(p)
    }
}

/// The suite's settings (VGPUD_E2E_*).
#[derive(Debug, Clone)]
pub struct Settings {
    /// VGPUD_BIN: the vgpud to test (else built).
    pub vgpud_bin: Option<PathBuf>,
    /// VGPUD_E2E_VIRGL=1: run the cases that need the virgl renderer.
    pub virgl: bool,
    /// VGPUD_E2E_VENUS=1: run the cases that need the venus renderer.
    pub venus: bool,
    /// VGPUD_E2E_TIMEOUT: per-guest timeout (default 240 s).
    pub guest_timeout: u64,
    /// VGPUD_E2E_PROBE_STALL: no console output for this long before the device probe is a
    /// hung boot (default 60 s).
    pub probe_stall: Duration,
}

fn number(name: &str, default: u64) -> Result<u64, Error> {
    match env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| Error::msg(format!("{name}={v:?} is not a number of seconds"))),
        _ => Ok(default),
    }
}

impl Settings {
    pub fn from_env() -> Result<Settings, Error> {
        let flag = |name: &str| env::var(name).is_ok_and(|v| v == "1");
        Ok(Settings {
            vgpud_bin: env::var_os("VGPUD_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            virgl: flag("VGPUD_E2E_VIRGL"),
            venus: flag("VGPUD_E2E_VENUS"),
            guest_timeout: number("VGPUD_E2E_TIMEOUT", 240)?,
            probe_stall: Duration::from_secs(number("VGPUD_E2E_PROBE_STALL", 60)?),
        })
    }
}
