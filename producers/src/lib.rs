//! sluice producers: the webhook gateway, provider signature verifiers and
//! the publish API.

pub mod verify;
