//! Errors that name the file, the line and the key, say what is wrong and what to do.

use std::fmt;
use std::path::PathBuf;

/// One problem in a mesh file.
///
/// `Display` gives one line, e.g.
/// `mesh.toml:14: node[1].address: 198.18.0.1 is already the address of node "n1" (line 9); give every node its own address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigError {
    /// The mesh file.
    pub file: PathBuf,
    /// 1-based line in `file`, when the problem has one.
    pub line: Option<usize>,
    /// Where in the schema, e.g. `mesh.psk_file`, `node[1].address` (0-based index),
    /// `overlay.ovl0.vni`, `manual_sa[0].spi`; `syntax` for TOML syntax errors,
    /// `--node` for [`MeshConfig::local_node`](crate::MeshConfig::local_node).
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError { file: file.into(), line, key: key.into(), problem: problem.into(), fix: fix.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one pass over a mesh file, in line order. Never empty when returned
/// as an error. `Display` prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_line() {
        let e = ConfigError::new(
            "mesh.toml",
            Some(14),
            "node[1].address",
            "198.18.0.1 is already the address of node \"n1\" (line 9)",
            "give every node its own address",
        );
        assert_eq!(
            e.to_string(),
            "mesh.toml:14: node[1].address: 198.18.0.1 is already the address of node \"n1\" (line 9); give every node its own address"
        );
        let e2 = ConfigError::new("/etc/meshd/mesh.toml", None, "mesh", "missing [mesh] section", "add it");
        assert_eq!(e2.to_string(), "/etc/meshd/mesh.toml: mesh: missing [mesh] section; add it");
        let all = ConfigErrors(vec![e, e2]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
