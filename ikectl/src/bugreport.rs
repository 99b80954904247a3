//! `ikectl bugreport`: meshd's report files (see meshd's `diag::bugreport`) and ikectl's version,
//! packed by `tar` into one tar.gz with one top directory.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_config::control::{Command, Reply, ReportFile};

use crate::client::{self, ClientError};

pub fn run(socket: &Path, output: Option<PathBuf>) -> Result<(), ClientError> {
    let Reply::BugReport(mut files) = client::request(socket, Command::BugReport)? else {
        return Err(ClientError("meshd answered something else than a bug report".to_string()));
    };
    files.push(ReportFile {
        name: "ikectl-version.txt".to_string(),
        contents: format!("ikectl {}\n", env!("CARGO_PKG_VERSION")),
    });
    let node = node_name(&files);
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let top = format!("meshd-bugreport-{node}-{at}");
    let output = output.unwrap_or_else(|| PathBuf::from(format!("{top}.tar.gz")));
    let output = std::env::current_dir().map(|dir| dir.join(&output)).unwrap_or(output);
    let staging = std::env::temp_dir().join(format!("ikectl-bugreport-{}", std::process::id()));
    let packed = pack(&staging, &top, &files, &output);
    // The staging copy holds the same data as the archive: never leave it behind.
    let _ = std::fs::remove_dir_all(&staging);
    packed?;
    println!("bug report written to {} ({} files)", output.display(), files.len());
    Ok(())
}

/// The node's name from the report's status, for the archive's name.
fn node_name(files: &[ReportFile]) -> String {
    let status = files.iter().find(|file| file.name == "status.json");
    let value = status.and_then(|file| serde_json::from_str::<serde_json::Value>(&file.contents).ok());
    let name = value.as_ref().and_then(|v| v["ok"]["data"]["node"].as_str()).unwrap_or("node");
    safe_name(name)
}

/// Keeps a name from meshd inside the staging directory.
fn safe_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    cleaned.trim_start_matches('.').to_string()
}

fn pack(staging: &Path, top: &str, files: &[ReportFile], output: &Path) -> Result<(), ClientError> {
    let failed =
        |error: std::io::Error| ClientError(format!("cannot write the report to {}: {error}", staging.display()));
    let directory = staging.join(top);
    std::fs::create_dir_all(&directory).map_err(failed)?;
    for file in files {
        std::fs::write(directory.join(safe_name(&file.name)), &file.contents).map_err(failed)?;
    }
    let tar = Process::new("tar").arg("-czf").arg(output).arg("-C").arg(staging).arg(top).output();
    match tar {
        Ok(result) if result.status.success() => Ok(()),
        Ok(result) => Err(ClientError(format!(
            "tar could not write {}: {}",
            output.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        ))),
        Err(error) => Err(ClientError(format!("cannot run tar ({error}); install it (apt-get install tar)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_meshd_stay_in_the_directory() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("ping-n2.json"), "ping-n2.json");
    }
}
