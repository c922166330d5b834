//! Reading a manifest's pairs into typed fields: required/optional/repeated
//! lookups that report the exact spot of a problem, and the collection of
//! unknown pairs (kept, in order, for forward compatibility).

use crate::error::Error;
use crate::text::{Manifest, NameValue};
use std::str::FromStr;

/// Cursor over one manifest's pairs, remembering which were consumed so
/// the rest can be kept as unknown fields.
pub(crate) struct Fields<'a> {
    manifest: &'a Manifest,
    used: Vec<bool>,
    kind: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(manifest: &'a Manifest, kind: &'static str) -> Self {
        Fields {
            manifest,
            used: vec![false; manifest.values.len()],
            kind,
        }
    }

    /// An error pointing at a pair's value.
    pub(crate) fn error_at(&self, nv: &NameValue, message: impl Into<String>) -> Error {
        Error::invalid(&self.manifest.source, nv.value_pos, message)
    }

    /// An error pointing at the start of the manifest (for missing fields).
    pub(crate) fn error_here(&self, message: impl Into<String>) -> Error {
        Error::invalid(&self.manifest.source, self.manifest.start, message)
    }

    /// The single pair named `name`, if any; a second one is an error.
    ///
    /// Scans every pair: callers look up a fixed handful of field names
    /// per manifest, never one per pair, so reading a manifest stays
    /// linear in its size (a guest's result may hold a million pairs).
    /// Per-pair matching goes through [`Fields::take_where`] and a map.
    pub(crate) fn optional(&mut self, name: &str) -> Result<Option<&'a NameValue>, Error> {
        let mut found: Option<&'a NameValue> = None;
        for (i, nv) in self.manifest.values.iter().enumerate() {
            if nv.name == name {
                if found.is_some() {
                    return Err(Error::invalid(
                        &self.manifest.source,
                        nv.name_pos,
                        format!("duplicate field '{name}' in {} manifest", self.kind),
                    ));
                }
                self.used[i] = true;
                found = Some(nv);
            }
        }
        Ok(found)
    }

    /// Like [`Fields::optional`], accepting an older spelling of the name
    /// (bbot renamed `repository` to `repository-url`, `config` to
    /// `target-config`); having both is an error.
    pub(crate) fn optional_renamed(
        &mut self,
        name: &str,
        old_name: &str,
    ) -> Result<Option<&'a NameValue>, Error> {
        let new = self.optional(name)?;
        let old = self.optional(old_name)?;
        match (new, old) {
            (Some(_), Some(o)) => Err(Error::invalid(
                &self.manifest.source,
                o.name_pos,
                format!("both '{name}' and its old name '{old_name}' are given"),
            )),
            (n, o) => Ok(n.or(o)),
        }
    }

    /// The value of a required field (it may be empty).
    pub(crate) fn required_nv(&mut self, name: &str) -> Result<&'a NameValue, Error> {
        self.optional(name)?.ok_or_else(|| {
            self.error_here(format!(
                "missing required field '{name}' in {} manifest",
                self.kind
            ))
        })
    }

    /// The value of a required field that must not be empty.
    pub(crate) fn required(&mut self, name: &str) -> Result<String, Error> {
        let nv = self.required_nv(name)?;
        non_empty(self, nv)
    }

    /// The value of an optional field that must not be empty when present.
    pub(crate) fn optional_string(&mut self, name: &str) -> Result<Option<String>, Error> {
        match self.optional(name)? {
            Some(nv) => Ok(Some(non_empty(self, nv)?)),
            None => Ok(None),
        }
    }

    /// An optional field parsed with `FromStr`, its error message naming
    /// the field.
    pub(crate) fn optional_parsed<T>(&mut self, name: &str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name)? {
            Some(nv) => Ok(Some(self.parse_value(nv)?)),
            None => Ok(None),
        }
    }

    /// A required field parsed with `FromStr`.
    pub(crate) fn required_parsed<T>(&mut self, name: &str) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let nv = self.required_nv(name)?;
        self.parse_value(nv)
    }

    /// An optional positive integer (RAM sizes in KiB).
    pub(crate) fn optional_positive(&mut self, name: &str) -> Result<Option<u64>, Error> {
        match self.optional(name)? {
            None => Ok(None),
            Some(nv) => match nv.value.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.error_at(
                    nv,
                    format!(
                        "invalid '{}' value '{}': expected a positive integer",
                        nv.name, nv.value
                    ),
                )),
            },
        }
    }

    pub(crate) fn parse_value<T>(&self, nv: &NameValue) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        nv.value
            .parse::<T>()
            .map_err(|e| self.error_at(nv, format!("invalid '{}' value: {e}", nv.name)))
    }

    /// Every pair named `name`, in order (repeatable fields).
    pub(crate) fn repeated(&mut self, name: &str) -> Vec<&'a NameValue> {
        self.take_where(|n| n == name)
    }

    /// Every not yet consumed pair whose name satisfies `pred`, in order:
    /// one pass, for fields recognised by their name's shape
    /// (`<op>-status`, `<package>-version`, `auxiliary-machine-<env>`).
    pub(crate) fn take_where(&mut self, pred: impl Fn(&str) -> bool) -> Vec<&'a NameValue> {
        let mut out = Vec::new();
        for (i, nv) in self.manifest.values.iter().enumerate() {
            if !self.used[i] && pred(&nv.name) {
                self.used[i] = true;
                out.push(nv);
            }
        }
        out
    }

    /// The pairs nobody consumed: unknown fields, kept in order so that
    /// passing a manifest through never drops what a newer peer wrote.
    pub(crate) fn unknown(self) -> Vec<(String, String)> {
        self.manifest
            .values
            .iter()
            .zip(self.used)
            .filter(|(_, used)| !used)
            .map(|(nv, _)| (nv.name.clone(), nv.value.clone()))
            .collect()
    }
}

fn non_empty(fields: &Fields<'_>, nv: &NameValue) -> Result<String, Error> {
    if nv.value.is_empty() {
        return Err(fields.error_at(nv, format!("empty value for field '{}'", nv.name)));
    }
    Ok(nv.value.clone())
}

/// Writes unknown fields back after the known ones.
pub(crate) fn push_unknown(manifest: &mut Manifest, extra: &[(String, String)]) {
    for (name, value) in extra {
        manifest.push(name.clone(), value.clone());
    }
}
