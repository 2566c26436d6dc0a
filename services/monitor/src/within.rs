//! Calls to other services with a deadline: the doctor and the diagnosis protocol never wait
//! on a service that hangs.

use std::time::Duration;

use p2pos_kernel::ServiceError;

/// `call`'s answer, or `UNAVAILABLE` once `wait` has passed.
pub(crate) async fn within<T>(
    wait: Duration,
    call: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    tokio::time::timeout(wait, call).await.unwrap_or_else(|_| {
        Err(ServiceError::unavailable(format!(
            "no answer within {wait:?}"
        )))
    })
}
