//! OpenAI's file expiry policies: `expires_after` on an upload and `output_expires_after` on a
//! batch, both `{"anchor": "created_at", "seconds": N}` with N from one hour to 30 days.

use crate::ApiError;

const MIN_SECONDS: i64 = 3600;
const MAX_SECONDS: i64 = 30 * 24 * 3600;

/// The policy's seconds, checked as OpenAI checks them; `param` names the field in errors.
pub(crate) fn seconds(anchor: Option<&str>, seconds: Option<i64>, param: &'static str) -> Result<i64, ApiError> {
    match anchor {
        Some("created_at") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!("`{param}.anchor` must be 'created_at', got '{other}'"), param))
        }
        None => return Err(ApiError::invalid(format!("`{param}.anchor` is required"), param)),
    }
    match seconds {
        Some(s) if (MIN_SECONDS..=MAX_SECONDS).contains(&s) => Ok(s),
        Some(s) => Err(ApiError::invalid(
            format!("`{param}.seconds` must be between {MIN_SECONDS} (1 hour) and {MAX_SECONDS} (30 days), got {s}"),
            param,
        )),
        None => Err(ApiError::invalid(format!("`{param}.seconds` is required"), param)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_to_thirty_days_from_creation() {
        assert_eq!(seconds(Some("created_at"), Some(3600), "expires_after").unwrap(), 3600);
        assert_eq!(seconds(Some("created_at"), Some(2_592_000), "expires_after").unwrap(), 2_592_000);
        for (anchor, s) in [
            (Some("created_at"), Some(3599)),
            (Some("created_at"), Some(2_592_001)),
            (Some("last_active_at"), Some(3600)),
            (None, Some(3600)),
            (Some("created_at"), None),
        ] {
            assert!(seconds(anchor, s, "expires_after").is_err(), "{anchor:?} {s:?}");
        }
    }
}
