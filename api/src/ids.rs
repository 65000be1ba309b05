//! Object ids. An uploaded file is `file-<uuid>`; a batch's output and error files are not
//! stored but generated from its results, so their ids name the batch: `file-out-<uuid>`,
//! `file-err-<uuid>`. A batch's id is its job's UUID, as `pdq status` shows it.

use uuid::Uuid;

use crate::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileId {
    Upload(Uuid),
    Output(Uuid),
    Errors(Uuid),
}

impl FileId {
    pub(crate) fn parse(s: &str) -> Result<FileId, ApiError> {
        let not_found = || ApiError::NotFound { what: "file", id: s.to_string() };
        let rest = s.strip_prefix("file-").ok_or_else(not_found)?;
        let (make, hex): (fn(Uuid) -> FileId, &str) = if let Some(hex) = rest.strip_prefix("out-") {
            (FileId::Output, hex)
        } else if let Some(hex) = rest.strip_prefix("err-") {
            (FileId::Errors, hex)
        } else {
            (FileId::Upload, rest)
        };
        Uuid::try_parse(hex).map(make).map_err(|_| not_found())
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileId::Upload(id) => write!(f, "file-{}", id.simple()),
            FileId::Output(id) => write!(f, "file-out-{}", id.simple()),
            FileId::Errors(id) => write!(f, "file-err-{}", id.simple()),
        }
    }
}

pub(crate) fn parse_batch_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s).map_err(|_| ApiError::NotFound { what: "batch", id: s.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_others_are_not_found() {
        let id = Uuid::now_v7();
        for f in [FileId::Upload(id), FileId::Output(id), FileId::Errors(id)] {
            assert_eq!(FileId::parse(&f.to_string()).unwrap(), f);
        }
        for bad in ["file-xyz", "batch-1", "file-out-", ""] {
            assert!(matches!(FileId::parse(bad), Err(ApiError::NotFound { .. })), "{bad}");
        }
    }
}
