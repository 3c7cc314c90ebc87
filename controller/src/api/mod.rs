//! The gRPC services of the controller and the mapping of errors to gRPC statuses.

pub mod ipam;
pub mod nodes;
pub mod resources;
pub mod watch;

use tern::model::FieldError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::store::StoreError;

/// INVALID_ARGUMENT naming the field, with a `google.rpc.BadRequest` detail that
/// clients in any language can read.
pub fn invalid(errors: &[FieldError]) -> Status {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for e in errors {
        details.add_bad_request_violation(e.field.clone(), e.reason.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

pub fn invalid_field(field: &str, reason: impl Into<String>) -> Status {
    invalid(&[FieldError::new(field, reason)])
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let msg = e.to_string();
        match e {
            StoreError::NotFound { .. } => Status::not_found(msg),
            StoreError::AlreadyExists { .. } => Status::already_exists(msg),
            StoreError::Conflict { .. } => Status::aborted(msg),
            StoreError::Invalid(fe) => invalid(&[fe]),
            StoreError::Unavailable(_) => Status::unavailable(msg),
            StoreError::Compacted => Status::out_of_range(msg),
            StoreError::Contention(_) => Status::aborted(msg),
            StoreError::Corrupt { .. } | StoreError::Etcd(_) => Status::internal(msg),
        }
    }
}
