//! FCM HTTP v1 provider for mesh-notify (work in progress).
