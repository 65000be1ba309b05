//! `PDQ_API_KEY`: both sides are hashed before the constant-time comparison, so neither the
//! key's bytes nor its length can be learnt from response times.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, ApiState};

#[derive(Clone, Copy)]
pub(crate) struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub(crate) fn of(key: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

pub(crate) async fn require_key(State(state): State<ApiState>, req: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(key) = &state.key {
        let given =
            req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(token) if key.matches(&KeyDigest::of(token.trim())) => {}
            Some(_) => return Err(ApiError::Unauthorized("Incorrect API key provided.")),
            None => return Err(ApiError::Unauthorized("Missing bearer authentication in the `Authorization` header.")),
        }
    }
    Ok(next.run(req).await)
}
