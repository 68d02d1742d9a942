//! The client side of Tributary's gRPC API (`tributary.v1`), for the
//! contributor agent, the auditor and the coordinator's tests.
//!
//! No training stack: this crate depends on the ledger and the generated
//! protos only, so the auditor stays light.
//!
//! Modules:
//! - [`signing`]: the `SignedRequest` envelope (canonical bytes, signing,
//!   `verify_strict` verification shared with the coordinator).
//! - [`convert`]: wire messages ↔ ledger domain types.
//! - [`tls`]: rustls client configuration (CA file, optional mTLS identity).
//! - [`client`]: [`Client`], typed calls, streaming upload/download, receipts.
//! - [`files`]: checkpoint directories sent and received file by file.
//! - [`error`]: [`ClientError`] and reading reason codes from a status.
//! - [`connect`]: [`ConnectArgs`], the command-line flags that reach a coordinator.
//! - [`invite`]: [`Invite`], the file an operator hands a future contributor.

pub mod client;
pub mod connect;
pub mod convert;
pub mod error;
pub mod files;
pub mod invite;
pub mod signing;
pub mod tls;

pub use client::{Client, verify_receipt};
pub use connect::ConnectArgs;
pub use error::{ClientError, REASON_METADATA_KEY, reason_code};
pub use files::{DownloadedFile, safe_file_name};
pub use invite::{Invite, parse_public_key};
pub use signing::{AuthError, OPERATOR_KEY_ID, RequestSigner, SignedMessage, verify_request};
pub use tls::ClientTls;
