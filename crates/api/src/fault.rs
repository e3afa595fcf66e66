//! The one place a refused request becomes HTTP: status 400 and `{"fault_message": ...}`, as
//! Firecracker answers every refusal but one: MMDS contents over the size limit get its 413.

use model::control::ControlError;
use model::mmds::MmdsError;

use crate::http::Response;

/// The response for `error`.
pub fn error_response(error: &ControlError) -> Response {
    // Firecracker answers every refusal with 400, even its internal errors (a VMM that is gone
    // included); its clients check for that, and the API description promises no 5xx.
    match error {
        ControlError::Mmds(MmdsError::TooLarge) => Response::error(413, &error.to_string()),
        _ => Response::bad_request(&error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use model::api::Operation;

    use super::*;

    #[test]
    fn refusals_are_400_with_firecrackers_texts() {
        let cases = [
            (ControlError::NotSupportedAfterStart, model::NOT_SUPPORTED_AFTER_START),
            (ControlError::NotSupportedBeforeStart, model::NOT_SUPPORTED_BEFORE_START),
            (ControlError::NotYet("pmem devices"), "pmem devices is not supported by Kestrel yet."),
            (ControlError::Mmds(MmdsError::NotInitialized), "The MMDS data store is not initialized."),
            (
                ControlError::Busy { operation: Operation::SnapshotCreate },
                "The microVM is busy: PUT /snapshot/create is in progress; try again once it has finished.",
            ),
        ];
        for (error, message) in cases {
            let response = error_response(&error);
            assert_eq!(response.status, 400);
            let body: serde_json::Value = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
            assert_eq!(body["fault_message"], message);
        }
        assert_eq!(error_response(&ControlError::VmmGone).status, 400);
        let too_large = error_response(&ControlError::Mmds(MmdsError::TooLarge));
        assert_eq!(too_large.status, 413, "Firecracker's status for MMDS contents over the limit");
        assert!(too_large.body.unwrap().contains("The MMDS patch request doesn't fit."));
    }
}
