//! SMTP (email) provider for mesh-notify (work in progress).
